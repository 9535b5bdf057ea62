"""Face alignment: from 5 landmarks to the chip an extractor expects, and back.

Geometry follows dlib's ``get_face_chip_details`` / ``extract_image_chips`` exactly, because dlib's
ResNet was trained on chips made that way (the half-pixel and scale conventions alone are worth
0.05-0.12 descriptor L2):

* a least-squares similarity (Umeyama, no reflection) maps the template landmarks, given in chip pixels,
  onto the image landmarks; its rotation is the chip angle and its scale ``s`` sets the chip rectangle
  ``centered_drect(T(size/2, size/2), size*s, size*s)`` (dlib's width-1 convention);
* chip pixel (x, y) samples the rotated rectangle, corner to corner, i.e. the image point
  ``c + R(angle) * ((size*s - 1) / (size - 1)) * ((x, y) - (size - 1) / 2)``;
* faces wider than about two chips are first reduced with dlib's ``pyramid_down<2>`` (a [1 4 6 4 1]
  binomial filter, integer arithmetic) so that bilinear sampling does not alias.

Two samplers share that geometry:

* :func:`extract_chip` is a NumPy replica of dlib (integer pyramid, floor-based bilinear, truncation to
  uint8, black outside the image), used for descriptors;
* :func:`chip_from_region` is the same computation in float torch ops (conv pyramid + ``grid_sample``),
  differentiable with respect to the photo's own pixels in the face's :class:`Region`, used by the cloak.

The inverse direction (chip back into the photo) is :meth:`ChipTransform.image_to_chip`,
:func:`box_to_chip_coords` and :func:`chip_to_box`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# dlib's 5-point template (shape_predictor_5_face_landmarks order), unit face square.
DLIB_5POINT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

# MTCNN's 5 points (image-left eye centre, image-right eye centre, nose tip, mouth left, mouth right) in
# the same unit face square, refitted on the 477 faces of ../shared/data/faces that both dlib and MTCNN
# find (bench/fit_template.py: median position of MTCNN's points in the frame of dlib's own alignment).
MTCNN_TEMPLATE = np.array(
    [
        [0.2285, 0.2089],
        [0.7694, 0.2080],
        [0.4972, 0.5325],
        [0.2589, 0.7909],
        [0.7374, 0.7894],
    ]
)


def template_in_chip(template: np.ndarray, size: int, padding: float) -> np.ndarray:
    """Unit-square template -> chip pixel coordinates (dlib: (padding + p) / (1 + 2 padding) * size)."""
    return (padding + np.asarray(template, dtype=np.float64)) / (2 * padding + 1) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ M @ src + t`` without reflection (Umeyama 1991).

    Returns (M, t): M = scale * rotation (2x2), t (2,).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / var_s if var_s > 0 else 1.0
    m = scale * rot
    return m, mu_d - m @ mu_s


@dataclass(frozen=True)
class ChipTransform:
    """Where a square chip of ``size`` pixels lies in an image: dlib's chip_details (rect + angle).

    ``rect`` is dlib's drectangle (left, top, right, bottom) in image pixels, before rotation by ``angle``
    (radians) about its centre.
    """

    rect: tuple[float, float, float, float]
    angle: float
    size: int

    @classmethod
    def fit(cls, chip_points: np.ndarray, image_points: np.ndarray, size: int) -> "ChipTransform":
        """dlib's chip_details(chip_points, img_points, chip_dims(size, size))."""
        m, t = similarity_transform(chip_points, image_points)
        p = m @ np.array([1.0, 0.0])
        angle = math.atan2(p[1], p[0])
        scale = math.hypot(p[0], p[1])
        centre = m @ np.array([size / 2.0, size / 2.0]) + t
        half = (size * scale - 1) / 2  # centered_drect: width-- then +-width/2
        return cls((centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half), angle, size)

    @classmethod
    def around_box(cls, box: np.ndarray, size: int, margin: float) -> "ChipTransform":
        """An upright square chip about the centre of ``box`` (x1, y1, x2, y2), in which the box's mean side
        spans ``size - margin`` chip pixels (facenet-pytorch's margin, given in chip pixels)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        scale = (x2 - x1 + y2 - y1) / 2 / (size - margin)  # image pixels per chip pixel
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (size * scale - 1) / 2  # fit's width-1 convention
        return cls((cx - half, cy - half, cx + half, cy + half), 0.0, size)

    @property
    def centre(self) -> np.ndarray:
        l, t, r, b = self.rect
        return np.array([(l + r) / 2, (t + b) / 2])

    @property
    def scale(self) -> float:
        """Image pixels per chip pixel."""
        return (self.rect[2] - self.rect[0]) / (self.size - 1)

    def corners(self, rect: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """Rotated tl, tr, bl, br corners of ``rect`` (default: this chip's rect) about its own centre."""
        l, t, r, b = self.rect if rect is None else rect
        c = np.array([(l + r) / 2, (t + b) / 2])
        rot = _rotation(self.angle)
        pts = np.array([[l, t], [r, t], [l, b], [r, b]], dtype=np.float64)
        return (pts - c) @ rot.T + c

    def chip_to_image_affine(self, rect: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """2x3 affine taking chip pixel (x, y, 1) to the rotated ``rect`` (dlib: find_affine_transform)."""
        tl, tr, bl, _ = self.corners(rect)
        n = self.size - 1
        return np.column_stack([(tr - tl) / n, (bl - tl) / n, tl])

    def chip_to_image(self, points: np.ndarray) -> np.ndarray:
        a = self.chip_to_image_affine()
        pts = np.asarray(points, dtype=np.float64)
        return pts @ a[:, :2].T + a[:, 2]

    def image_to_chip(self, points: np.ndarray) -> np.ndarray:
        a = self.chip_to_image_affine()
        pts = np.asarray(points, dtype=np.float64) - a[:, 2]
        return pts @ np.linalg.inv(a[:, :2]).T

    def footprint(self) -> np.ndarray:
        """The chip's four corners in the image (tl, tr, br, bl), e.g. for drawing."""
        tl, tr, bl, br = self.corners()
        return np.array([tl, tr, br, bl])


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


# --- dlib's pyramid and sampling plan -----------------------------------------------------------------


def _rect_down(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """pyramid_down<2>::rect_down: each corner p -> p/2 - (1.25, 0.75)."""
    l, t, r, b = rect
    return (l / 2 - 1.25, t / 2 - 0.75, r / 2 - 1.25, b / 2 - 0.75)


def _area(rect: tuple[float, float, float, float]) -> float:
    l, t, r, b = rect
    if t > b or l > r:
        return 0.0
    return (r - l + 1) * (b - t + 1)


def _round(v: float) -> int:
    return int(math.floor(v + 0.5))  # dlib's drectangle -> rectangle conversion


@dataclass(frozen=True)
class Region:
    """The axis-aligned part of the photo a chip is computed from (dlib's crop bounding box).

    ``box`` = (left, top, right_exclusive, bottom_exclusive) in image pixels, inside the image.
    ``levels``: how many times dlib's pyramid_down<2> is applied to the region before sampling.
    ``affine``: 2x3 map from chip pixels to pixels of the region after those pyramid levels.
    """

    box: tuple[int, int, int, int]
    levels: int
    affine: np.ndarray
    transform: ChipTransform

    @property
    def slices(self) -> tuple[slice, slice]:
        l, t, r, b = self.box
        return slice(t, b), slice(l, r)

    @property
    def shape(self) -> tuple[int, int]:
        l, t, r, b = self.box
        return b - t, r - l


def plan_region(tf: ChipTransform, image_hw: tuple[int, int]) -> Region:
    """dlib's extract_image_chips plan for one chip: crop box, pyramid depth, sampling affine."""
    h, w = image_hw
    area = tf.size * tf.size
    depth, grow = 0, 2.0
    r = _rect_down(tf.rect)
    while _area(r) > area:
        r = _rect_down(r)
        depth += 1
        grow = grow * 2 + 2
    corners = tf.corners()
    lo, hi = corners.min(0) - grow, corners.max(0) + grow
    # intersect with the image rect (0, 0, w-1, h-1), then round to an integer rectangle
    left, top = _round(max(lo[0], 0)), _round(max(lo[1], 0))
    right, bottom = _round(min(hi[0], w - 1)), _round(min(hi[1], h - 1))
    if right < left or bottom < top:
        raise ValueError("the chip lies entirely outside the image")
    # rect in crop coordinates, then down the pyramid while the next level still has more than size^2 px
    l, t, rr, b = tf.rect
    rect = (l - left, t - top, rr - left, b - top)
    levels = 0
    while _area(_rect_down(rect)) > area:
        levels += 1
        rect = _rect_down(rect)
    return Region((left, top, right + 1, bottom + 1), levels, tf.chip_to_image_affine(rect), tf)


# --- exact sampler (NumPy replica of dlib) ------------------------------------------------------------

_BINOMIAL = np.array([1, 4, 6, 4, 1], dtype=np.int32)


def pyramid_down(img: np.ndarray) -> np.ndarray:
    """dlib pyramid_down<2> on an H x W x C uint8 image: separable [1 4 6 4 1], /256 floored, stride 2."""
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return img[:0, :0]
    x = img.astype(np.int32)
    nc, nr = (w - 3) // 2, (h - 3) // 2
    rows = sum(_BINOMIAL[k] * x[:, k : k + 2 * nc : 2] for k in range(5))
    cols = sum(_BINOMIAL[k] * rows[k : k + 2 * nr : 2] for k in range(5))
    return (cols // 256).astype(np.uint8)


def _bilinear_exact(img: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """dlib transform_image + interpolate_bilinear: floor-based, black outside, truncation to uint8."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    px = affine[0, 0] * xs + affine[0, 1] * ys + affine[0, 2]
    py = affine[1, 0] * xs + affine[1, 1] * ys + affine[1, 2]
    left, top = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    ok = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    lc, tc = np.where(ok, left, 0), np.where(ok, top, 0)
    fx, fy = (px - left)[..., None], (py - top)[..., None]
    f = img.astype(np.float64)
    tl, tr = f[tc, lc], f[tc, lc + 1]
    bl, br = f[tc + 1, lc], f[tc + 1, lc + 1]
    val = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    out = np.clip(val, 0, 255).astype(np.uint8)  # truncation, as dlib's assign_pixel
    out[~ok] = 0
    return out


def extract_chip(image: np.ndarray, tf: ChipTransform) -> np.ndarray:
    """The chip dlib's get_face_chip would produce (H x W x 3 uint8 in, size x size x 3 uint8 out)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    region = plan_region(tf, image.shape[:2])
    crop = image[region.slices]
    for _ in range(region.levels):
        crop = pyramid_down(crop)
    return _bilinear_exact(crop, region.affine, tf.size)


def extract_chips(image: np.ndarray, transforms: list[ChipTransform], size: int = 150) -> np.ndarray:
    """Stack of exact chips, N x size x size x 3 uint8 (each chip planned alone, as get_face_chip);
    ``size`` gives the shape of an empty stack."""
    if not transforms:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([extract_chip(image, tf) for tf in transforms])


# --- differentiable sampler (torch) -------------------------------------------------------------------

_BINOMIAL_T = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def pyramid_down_torch(x: torch.Tensor) -> torch.Tensor:
    """Float pyramid_down<2> on N x C x H x W: the same taps and grid as :func:`pyramid_down`.

    dlib floors each level (x // 256); the float version subtracts the mean 0.5 that flooring loses so
    that the two paths agree on average, while keeping the gradient exact.
    """
    n, c, h, w = x.shape
    if h <= 8 or w <= 8:
        return x[..., :0, :0]
    k = _BINOMIAL_T.to(x)
    x = F.conv2d(x.reshape(n * c, 1, h, w), k.view(1, 1, 1, 5), stride=(1, 2))
    x = F.conv2d(x, k.view(1, 1, 5, 1), stride=(2, 1))
    return x.reshape(n, c, x.shape[-2], x.shape[-1]) - 0.5


def _sampling_grid(affine: np.ndarray, size: int, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """grid_sample grid (1 x S x S x 2, align_corners=True) and dlib's validity mask (S x S)."""
    h, w = hw
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    px = affine[0, 0] * xs + affine[0, 1] * ys + affine[0, 2]
    py = affine[1, 0] * xs + affine[1, 1] * ys + affine[1, 2]
    ok = (np.floor(px) >= 0) & (np.floor(py) >= 0) & (np.floor(px) + 1 < w) & (np.floor(py) + 1 < h)
    gx = 2 * px / max(w - 1, 1) - 1
    gy = 2 * py / max(h - 1, 1) - 1
    grid = torch.from_numpy(np.stack([gx, gy], -1)[None]).float()
    return grid, torch.from_numpy(ok)


def chip_from_region(pixels: torch.Tensor, region: Region) -> torch.Tensor:
    """Differentiable chip (3 x S x S float, 0-255 scale) from the region's pixels (3 x h x w float).

    Same plan as :func:`extract_chip` (pyramid depth, affine, black outside the image) with float
    arithmetic, so gradients reach every pixel of the region that the chip depends on.
    """
    x = pixels.unsqueeze(0)
    for _ in range(region.levels):
        x = pyramid_down_torch(x)
    grid, ok = _sampling_grid(region.affine, region.transform.size, tuple(x.shape[-2:]))
    chip = F.grid_sample(x, grid.to(x), mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    return (chip - 0.5) * ok.to(chip)  # -0.5: the mean that dlib's final truncation to uint8 loses


def box_to_chip_coords(tf: ChipTransform, box: tuple[int, int, int, int]) -> np.ndarray:
    """For every pixel of ``box`` (l, t, r, b exclusive) of the image, its chip coordinates (h x w x 2)."""
    l, t, r, b = box
    ys, xs = np.mgrid[t:b, l:r].astype(np.float64)
    pts = np.stack([xs, ys], -1).reshape(-1, 2)
    return tf.image_to_chip(pts).reshape(b - t, r - l, 2)


def chip_to_box(chip_map: torch.Tensor, tf: ChipTransform, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Warp a chip-space map (C x S x S) onto the image pixels of ``box`` (C x h x w); zero outside the chip.

    This is the inverse of the chip samplers: e.g. a mask drawn in chip space, placed on the photo.
    """
    coords = torch.from_numpy(box_to_chip_coords(tf, box)).to(chip_map)
    grid = (2 * coords / (tf.size - 1) - 1).unsqueeze(0)
    return F.grid_sample(chip_map.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
