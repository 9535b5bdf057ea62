"""Alignment: the exact sampler is pixel-identical to dlib's get_face_chip, the differentiable sampler
agrees with it and spreads gradients over the photo's pixels, and the inverse mapping round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cloakd.core import align


def _dlib_faces(oracle, data_dir, upscale: int, count: int):
    """(image, dlib 5 points, dlib chip) for the first image of `count` identities, upscaled."""
    out = []
    for person in sorted(p for p in (data_dir / "faces").iterdir())[:count]:
        img = Image.open(sorted(person.glob("*.jpg"))[0]).convert("RGB")
        if upscale > 1:
            img = img.resize((img.width * upscale, img.height * upscale), Image.BILINEAR)
        arr = np.array(img)
        dets = oracle["detector"](arr, 1 if upscale == 1 else 0)
        if not dets:
            continue
        shape = oracle["predictor"](arr, dets[0])
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
        out.append((arr, pts, oracle["dlib"].get_face_chip(arr, shape, 150, 0.25)))
    return out


def _dlib_transform(pts):
    return align.ChipTransform.fit(align.template_in_chip(align.DLIB_5POINT_TEMPLATE, 150, 0.25), pts, 150)


@pytest.mark.parametrize("upscale", [1, 3, 6])
def test_exact_sampler_is_pixel_identical_to_dlib(dlib_oracle, data_dir, upscale):
    faces = _dlib_faces(dlib_oracle, data_dir, upscale, count=8)
    assert len(faces) >= 6
    levels = set()
    for img, pts, ref in faces:
        tf = _dlib_transform(pts)
        levels.add(align.plan_region(tf, img.shape[:2]).levels)
        np.testing.assert_array_equal(align.extract_chip(img, tf), ref)
    if upscale == 6:
        assert max(levels) >= 2  # the pyramid path was exercised


def test_differentiable_sampler_matches_exact_and_spreads_gradients(dlib_oracle, data_dir):
    img, pts, _ = _dlib_faces(dlib_oracle, data_dir, upscale=4, count=1)[0]
    tf = _dlib_transform(pts)
    region = align.plan_region(tf, img.shape[:2])
    assert region.levels >= 1
    pixels = torch.from_numpy(img[region.slices]).permute(2, 0, 1).float().requires_grad_(True)
    chip = align.chip_from_region(pixels, region)
    exact = torch.from_numpy(align.extract_chip(img, tf)).permute(2, 0, 1).float()
    assert (chip - exact).abs().mean() < 0.5
    assert (chip - exact).abs().max() <= 2.0
    chip.sum().backward()
    # every pixel inside the chip's footprint influences the chip (no sparse bilinear lattice)
    coords = align.box_to_chip_coords(tf, region.box)
    inside = ((coords > 5) & (coords < 144)).all(-1)
    touched = pixels.grad.abs().sum(0).numpy() > 0
    assert touched[inside].mean() > 0.99


def test_similarity_transform_recovers_a_known_map():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 150, (5, 2))
    angle, scale, shift = 0.3, 2.5, np.array([40.0, -12.0])
    m = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    got_m, got_t = align.similarity_transform(src, src @ m.T + shift)
    np.testing.assert_allclose(got_m, m, atol=1e-9)
    np.testing.assert_allclose(got_t, shift, atol=1e-7)


def test_inverse_mapping_round_trips(dlib_oracle, data_dir):
    img, pts, _ = _dlib_faces(dlib_oracle, data_dir, upscale=2, count=1)[0]
    tf = _dlib_transform(pts)
    chip_pts = np.array([[0.0, 0.0], [149.0, 0.0], [74.5, 74.5], [10.0, 130.0]])
    np.testing.assert_allclose(tf.image_to_chip(tf.chip_to_image(chip_pts)), chip_pts, atol=1e-9)
    # the chip's corners land on the rotated rectangle
    np.testing.assert_allclose(tf.chip_to_image(chip_pts[:2]), tf.footprint()[:2], atol=1e-9)
    # a chip-space map warped back onto the photo covers exactly the chip's footprint
    region = align.plan_region(tf, img.shape[:2])
    ones = align.chip_to_box(torch.ones(1, 150, 150, dtype=torch.float64), tf, region.box)[0].numpy()
    coords = align.box_to_chip_coords(tf, region.box)
    inside = ((coords >= 1) & (coords <= 148)).all(-1)
    outside = ((coords < -1) | (coords > 150)).any(-1)
    assert np.allclose(ones[inside], 1.0) and np.allclose(ones[outside], 0.0)
    # chip -> region -> chip reproduces a smooth chip-space pattern
    yy, xx = torch.meshgrid(torch.arange(150.0), torch.arange(150.0), indexing="ij")
    pattern = torch.sin(xx / 9.0) * torch.cos(yy / 13.0)
    on_photo = align.chip_to_box(pattern[None].double(), tf, region.box)
    back = align.chip_from_region(on_photo.float().expand(3, -1, -1) * 100 + 1000, region)[0]
    interior = (slice(10, 140), slice(10, 140))
    assert torch.allclose((back[interior] + 0.5 - 1000) / 100, pattern[interior], atol=0.05)
