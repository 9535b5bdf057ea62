"""The torch port of dlib's face-recognition ResNet: equal to dlib itself on real aligned faces,
differentiable with respect to its input, and strict about the .dat file it is built from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cloakd.core.assets import package_file
from cloakd.core.errors import ModelCorruptError, ModelMissingError
from cloakd.core.extractors import load_extractor
from cloakd.core.extractors.dlib_dat import parse_dat, read_dat
from cloakd.core.extractors.dlib_resnet import MODEL_FILE, MODEL_PACKAGE, DlibResNet, pad_add

IDENTITIES = 24


@pytest.fixture(scope="module")
def dlib_faces(dlib_oracle, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Chips (N x 150 x 150 x 3 uint8) made by dlib's own pipeline from the first photo of 24 identities,
    and dlib's descriptors of them (N x 128)."""
    dlib = dlib_oracle["dlib"]
    chips, descriptors = [], []
    for person in sorted((data_dir / "faces").iterdir())[:IDENTITIES]:
        image = np.asarray(Image.open(sorted(person.glob("*.jpg"))[0]).convert("RGB"))
        detections = dlib_oracle["detector"](image, 1)
        if not detections:
            continue
        face = max(detections, key=lambda rect: rect.area())
        chip = dlib.get_face_chip(image, dlib_oracle["predictor"](image, face), 150, 0.25)
        chips.append(chip)
        descriptors.append(np.array(dlib_oracle["resnet"].compute_face_descriptor(chip)))
    assert len(chips) >= 20, f"dlib found faces in only {len(chips)} of {IDENTITIES} photos"
    return np.stack(chips), np.stack(descriptors)


def _as_input(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chips).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return package_file(MODEL_PACKAGE, MODEL_FILE).read_bytes()


def test_descriptors_equal_dlibs_on_real_faces(resnet, dlib_faces):
    chips, expected = dlib_faces
    with torch.no_grad():
        batched = resnet(_as_input(chips)).numpy()
        single = np.concatenate([resnet(_as_input(chips[i : i + 1])).numpy() for i in range(4)])
    assert batched.shape == expected.shape == (len(chips), 128)
    assert np.abs(batched - expected).max() <= 1e-5
    assert np.abs(single - expected[:4]).max() <= 1e-5


def test_input_gradient_is_finite_nonzero_and_points_downhill(resnet, dlib_faces):
    chips, descriptors = dlib_faces
    target = torch.from_numpy(descriptors[1]).float()
    x = _as_input(chips[:1]).requires_grad_(True)
    distance = torch.linalg.vector_norm(resnet(x)[0] - target)
    distance.backward()
    grad = x.grad
    assert torch.isfinite(grad).all()
    assert (grad != 0).float().mean() > 0.5
    assert all(p.grad is None for p in resnet.parameters())
    with torch.no_grad():
        stepped = torch.linalg.vector_norm(resnet(x - 2.0 * grad.sign())[0] - target)
    assert stepped < distance


def test_model_metadata_matches_the_file(resnet, dat_bytes):
    network = parse_dat(dat_bytes)
    assert not resnet.training
    assert (resnet.name, resnet.dim) == ("dlib_resnet", 128)
    assert (resnet.geometry.size, resnet.geometry.padding) == (150, 0.25)
    assert resnet.match_threshold == pytest.approx(network.dist_thresh)
    # dlib's network: 29 convs, 29 affines and the fc hold 5,614,592 floats.
    assert sum(p.numel() for p in resnet.parameters()) == 5_614_592


def test_pad_add_pads_channels_end_and_bottom_right():
    a = torch.ones(1, 2, 1, 1)
    b = torch.full((1, 1, 2, 2), 10.0)
    expected = torch.tensor([[[[11.0, 10.0], [10.0, 10.0]], [[1.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(pad_add(a, b), expected)
    assert torch.equal(pad_add(b, a), expected)


def test_wrong_chip_size_is_rejected(resnet):
    with pytest.raises(ValueError, match="150 x 150"):
        resnet(torch.zeros(1, 3, 160, 160))


def test_truncated_file_gives_clear_error(tmp_path, dat_bytes):
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(dat_bytes[: len(dat_bytes) // 2])
    with pytest.raises(ModelCorruptError, match="truncated.dat.*ends early"):
        read_dat(truncated)
    with pytest.raises(ModelCorruptError, match="truncated.dat.*sha256"):
        load_extractor("dlib_resnet", path=truncated)


@pytest.mark.parametrize("end", [0, 1, 20, 300, 450, -1])
def test_any_truncation_point_gives_clear_error(dat_bytes, end):
    with pytest.raises(ModelCorruptError, match="ends early"):
        parse_dat(dat_bytes[:end])


def test_damaged_bytes_give_clear_errors(dat_bytes):
    with pytest.raises(ModelCorruptError, match="unexpected bytes after"):
        parse_dat(dat_bytes + b"\x00")
    with pytest.raises(ModelCorruptError, match="unsupported layer type 'con_9'"):
        parse_dat(dat_bytes.replace(b"con_4", b"con_9", 1))
    with pytest.raises(ModelCorruptError, match="unsupported loss layer"):
        parse_dat(dat_bytes.replace(b"loss_metric_2", b"loss_metric_9", 1))


def test_file_with_wrong_network_is_rejected(dat_bytes):
    network = parse_dat(dat_bytes)
    without_fc = dataclasses.replace(network, layers=network.layers[:-1])
    with pytest.raises(ModelCorruptError, match="ends where fc_no_bias"):
        DlibResNet(without_fc, "test")
    shuffled = dataclasses.replace(network, layers=network.layers[1:] + network.layers[:1])
    with pytest.raises(ModelCorruptError, match="layer 0: found Affine, expected con<32,7,7,2,2>"):
        DlibResNet(shuffled, "test")


def test_missing_file_gives_model_missing_error(tmp_path: Path):
    with pytest.raises(ModelMissingError, match="absent.dat"):
        load_extractor("dlib_resnet", path=tmp_path / "absent.dat")
