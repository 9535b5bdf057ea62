"""The cloak optimiser (Fawkes eq. 2, budget kept by projection): pure computation on arrays, no I/O.

For each face of a photo, a perturbation lives on the photo's own pixels around the face (the face's
region: the bounding box of its chip's footprint plus a margin for alignment jitter), feathered to zero at
the edge of the chip's footprint so no seam appears. Each face is optimised at its own working
resolution; all faces' chips go through the extractor as one batch per step. The loss per face is

    mean over views v of  || Phi(chip_v(x + delta)) - t ||^2

where the views are the tracker's exact alignment plus random upload processing (JPEG, downscale,
alignment jitter; see views.py). ``t`` is the target descriptor (towards a target class or, for a Sybil
image, towards the user) or, for an untargeted cloak, the face's own descriptor, which is pushed away.

Large photos and large faces are optimised at a working resolution (see :func:`working_scale`): at most
``work_side`` (2048 px, the largest size platforms keep) on the long side, and no finer than 1.5 pixels
per pixel of the extractor's chip. The perturbations are then resampled to full resolution, added (where
regions overlap, they add up), rounded to 8 bits, and the DSSIM budget is enforced there, at full
resolution, for every face's region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..align import ChipTransform, chip_to_box
from ..extractors import Extractor
from .presets import CloakPreset
from .ssim import dssim, dssim_large
from .views import IDENTITY, ViewDistribution, render_chips

TOWARDS = "towards"
AWAY = "away"


@dataclass
class FaceTask:
    """One face to cloak: where it is (full resolution) and where its features should go."""

    transform: ChipTransform
    target: np.ndarray  # descriptor to move towards, or (AWAY) the face's own descriptor
    direction: str = TOWARDS
    away_margin: float = 1.0  # push until this far from the original descriptor
    origin: np.ndarray | None = None  # TOWARDS: the face's own descriptor, also pushed away from


@dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # region at full resolution (l, t, r, b exclusive)
    dssim: float  # measured at full resolution on the 8-bit result
    scaled_back: float  # 1.0 unless the budget needed the perturbation scaled down
    loss: list[float] = field(default_factory=list)  # identity-view feature loss, first and last step


@dataclass
class CloakResult:
    image: np.ndarray
    faces: list[FaceResult]
    seconds: float = 0.0
    steps: int = 0  # optimisation steps run (fewer than the preset's when every face converged early)


def _region_box(tf: ChipTransform, hw: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    corners = tf.footprint()
    pad = margin * tf.size * tf.scale
    lo = np.floor(corners.min(0) - pad).astype(int)
    hi = np.ceil(corners.max(0) + pad).astype(int) + 1
    h, w = hw
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], w), min(hi[1], h)


def _scaled(tf: ChipTransform, s: float) -> ChipTransform:
    """The same chip in an image resampled by factor s (pixel centres map as (x + 0.5) s - 0.5)."""
    l, t, r, b = tf.rect
    cx, cy = ((l + r) / 2 + 0.5) * s - 0.5, ((t + b) / 2 + 0.5) * s - 0.5
    half = (r - l) / 2 * s
    return ChipTransform((cx - half, cy - half, cx + half, cy + half), tf.angle, tf.size)


def _translated(tf: ChipTransform, dx: float, dy: float) -> ChipTransform:
    l, t, r, b = tf.rect
    return ChipTransform((l + dx, t + dy, r + dx, b + dy), tf.angle, tf.size)


def _feather(size: int, ramp: float = 0.08) -> torch.Tensor:
    """Chip-space window: 1 inside, a raised-cosine ramp to 0 over the outer ``ramp`` of the chip."""
    u = torch.linspace(0, 1, size, dtype=torch.float64)
    edge = torch.minimum(u, 1 - u) / ramp
    w = 0.5 - 0.5 * torch.cos(math.pi * edge.clamp(0, 1))
    return (w[:, None] * w[None, :]).unsqueeze(0)


def working_scale(h: int, w: int, tf: ChipTransform, work_side: int) -> float:
    """The resolution one face (chip transform ``tf``) is optimised at, as a factor of the photo's.

    At most ``work_side`` on the long side (detail finer than platforms keep is wasted), and no finer than
    1.5 pixels per chip pixel: the extractor sees a face through a 150 px chip, and
    finer working detail is wasted time (measured on a 12 MP portrait: 3, 2 and 1.5 pixels per chip pixel
    all verified with similar feature shifts; the loop took 30 s, 17.5 s and, after the other speed-ups,
    3.2 s). Never finer than full resolution.
    """
    return min(1.0, work_side / max(h, w), 1.5 / tf.scale)  # tf.scale: full-resolution pixels per chip pixel


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX): then the extractor's forward and
    backward in the loop take ~2/3 of the float32 time (measured on an AMD EPYC, batch 4: 45 vs 68 ms),
    descriptors differ by ~0.008 (the same-person threshold is 0.6) and gradients keep a cosine of 0.98."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _resize_uint8(image: np.ndarray, s: float) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)


class _Face:
    """Per-face optimisation state at the face's own working resolution.

    Each face's region (with a little context) is cut from the photo and resampled on its own, so a large
    face next to a small one costs what each costs alone (one shared canvas at the small face's resolution
    made a 12 MP selfie with a background face take 157 s and 3 GB instead of 5 s).
    """

    def __init__(self, task: FaceTask, image: np.ndarray, work_side: int, margin: float):
        h, w = image.shape[:2]
        self.task = task
        self.s = working_scale(h, w, task.transform, work_side)
        self.box_full = _region_box(task.transform, (h, w), margin)
        L, T, R, B = self.box_full
        pad = int(math.ceil(2 / self.s)) + 1  # context for the resampling filter at the region's edge
        cl, ct = max(L - pad, 0), max(T - pad, 0)
        crop = image[ct : min(B + pad, h), cl : min(R + pad, w)]
        self.origin_full = (cl, ct)
        local = _translated(task.transform, -cl, -ct)
        if self.s != 1.0:
            crop, local = _resize_uint8(crop, self.s), _scaled(local, self.s)
        self.tf = local
        self.box = _region_box(self.tf, crop.shape[:2], margin)
        l, t, r, b = self.box
        self.base = _to_tensor(crop[t:b, l:r])
        self.long_side = max(h, w) * self.s  # the photo's long side at this face's working resolution
        self.mask = chip_to_box(_feather(self.tf.size), self.tf, self.box).float()
        self.delta = torch.zeros(3, b - t, r - l, requires_grad=True)
        self.target = torch.as_tensor(np.asarray(task.target, np.float32))
        self.origin = None if task.origin is None else torch.as_tensor(np.asarray(task.origin, np.float32))

    def pixels(self) -> torch.Tensor:
        return (self.base + self.mask * self.delta).clamp(0, 255)

    def full_resolution_delta(self) -> torch.Tensor:
        """The perturbation on the full-resolution pixels of ``box_full``."""
        d = self.mask * self.delta.detach()
        if self.s == 1.0:
            return d
        cl, ct = self.origin_full
        L, T, R, B = self.box_full
        return _resample_box(d, self.box, (L - cl, T - ct, R - cl, B - ct), self.s)

    def _away(self, emb: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        d = (emb - origin).pow(2).sum(-1).clamp_min(1e-12).sqrt()
        return F.relu(self.task.away_margin - d).pow(2)

    def converged(self, emb: torch.Tensor, preset: CloakPreset) -> bool:
        """Whether this step's views (``emb``, before the step) all show the goal reached: a targeted face
        on average within ``preset.stop_at`` of its target, an untargeted one at least ``away_margin``
        from its own features in every view."""
        if self.task.direction == AWAY:
            return bool((emb - self.target).norm(dim=1).min() >= self.task.away_margin)
        return preset.stop_at is not None and float((emb - self.target).norm(dim=1).mean()) <= preset.stop_at

    def feature_loss(self, emb: torch.Tensor, away_weight: float) -> torch.Tensor:
        if self.task.direction == AWAY:
            return self._away(emb, self.target)
        loss = (emb - self.target).pow(2).sum(-1)
        if self.origin is not None and away_weight:
            loss = loss + away_weight * self._away(emb, self.origin)
        return loss


def cloak(
    image: np.ndarray,
    tasks: list[FaceTask],
    extractor: Extractor,
    preset: CloakPreset,
    *,
    seed: int = 0,
    views: ViewDistribution | None = None,
    work_side: int = 2048,
    margin: float = 0.1,
    bf16: bool | None = None,
) -> CloakResult:
    """Cloak every face in ``tasks`` of ``image`` (H x W x 3 uint8 RGB); returns the new 8-bit image.

    ``bf16``: run the extractor inside the optimisation loop in bfloat16 (default: when the CPU has native
    bfloat16 instructions). Only the search direction is affected; the budget, the result and the
    verification are computed in float32.
    """
    import time

    t0 = time.perf_counter()
    if not tasks:
        return CloakResult(image.copy(), [], 0.0)
    views = views if views is not None else ViewDistribution()
    rng = np.random.default_rng(seed)
    faces = [_Face(t, image, work_side, margin) for t in tasks]

    net = extractor.bfloat16_twin() if (bf16_supported() if bf16 is None else bf16) else extractor
    opt = torch.optim.Adam([f.delta for f in faces], lr=preset.lr)
    history: list[list[float]] = [[] for _ in faces]
    for step in range(preset.steps):
        chips, owners = [], []
        for i, f in enumerate(faces):
            phase = (int(rng.integers(0, 16)), int(rng.integers(0, 16)))  # one JPEG block phase per step
            vs = [IDENTITY] + [views.sample(rng, f.long_side, force_jpeg=k == 0, jpeg_offset=phase)
                               for k in range(preset.views_per_step - 1)]
            chips.append(render_chips(f.pixels(), f.box[:2], f.tf, vs))
            owners += [i] * len(vs)
        emb = net(torch.cat(chips))
        loss = torch.zeros(())
        owners_t = torch.tensor(owners)
        done: list[bool] = []
        for i, f in enumerate(faces):
            fl = f.feature_loss(emb[owners_t == i], preset.away_weight)
            history[i].append(float(fl[0].detach()))
            done.append(f.converged(emb[owners_t == i].detach(), preset))
            loss = loss + fl.mean()
        if all(done):  # every face already where it should be, in every view of this step: stop early
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:  # cosine decay to a tenth of the initial step
            g["lr"] = preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step + 1) / preset.steps)))
        _project_to_budget(faces, preset.rho)

    out, results = _apply_at_full_resolution(image, faces, preset.rho)
    for res, hist in zip(results, history):
        res.loss = [hist[0], hist[-1]] if hist else []
    return CloakResult(out, results, time.perf_counter() - t0, steps=len(history[0]))


@torch.no_grad()
def _project_to_budget(faces, rho: float) -> None:
    """Scale each face's perturbation back onto the DSSIM budget (DSSIM grows about as the square of the
    perturbation's amplitude), so every iterate is feasible and Adam moves along the budget's boundary."""
    for f in faces:
        d = float(dssim(f.base[None], f.pixels()[None])[0])
        if d > rho:
            f.delta.mul_(math.sqrt(rho / d) * 0.995)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@torch.no_grad()
def _apply_at_full_resolution(image: np.ndarray, faces, rho: float):
    """Resample each perturbation to full resolution, add, round, and enforce the DSSIM budget exactly.

    Only the union of the faces' regions is touched (as float), so memory stays proportional to the
    faces, not to the photo. Where regions overlap, a face's DSSIM also depends on its neighbours'
    perturbations, so a face over budget scales itself and every face whose region overlaps its own.
    """
    ul = min(f.box_full[0] for f in faces), min(f.box_full[1] for f in faces)
    lr = max(f.box_full[2] for f in faces), max(f.box_full[3] for f in faces)
    base = _to_tensor(image[ul[1] : lr[1], ul[0] : lr[0]])
    deltas = [f.full_resolution_delta() for f in faces]
    factors = [1.0] * len(faces)

    def local(f) -> tuple[slice, slice]:
        L, T, R, B = f.box_full
        return slice(T - ul[1], B - ul[1]), slice(L - ul[0], R - ul[0])

    def compose() -> torch.Tensor:
        out = base.clone()
        for f, d, a in zip(faces, deltas, factors):
            ys, xs = local(f)
            out[:, ys, xs] += a * d
        return out.clamp(0, 255).round()

    def face_dssim(out: torch.Tensor, f) -> float:
        ys, xs = local(f)
        return dssim_large(base[None, :, ys, xs], out[None, :, ys, xs])

    out = compose()
    measured = [face_dssim(out, f) for f in faces]
    for i, f in enumerate(faces):
        current = measured[i] if factors == [1.0] * len(faces) else face_dssim(out, f)
        if current <= rho:
            continue
        group = [j for j, g in enumerate(faces) if _overlap(f.box_full, g.box_full)]  # includes i
        start = [factors[j] for j in group]

        def scale_group(m: float) -> None:
            for j, a in zip(group, start):
                factors[j] = a * m

        # DSSIM grows about as the square of the amplitude: one predicted step usually lands inside
        predicted = math.sqrt(rho / current) * 0.99
        scale_group(predicted)
        out = compose()
        if face_dssim(out, f) <= rho:
            continue
        lo, hi = 0.0, predicted
        for _ in range(12):  # rare: bisection on the scale of this face's (and its neighbours') perturbation
            scale_group((lo + hi) / 2)
            if face_dssim(compose(), f) <= rho:
                lo = (lo + hi) / 2
            else:
                hi = (lo + hi) / 2
        scale_group(lo)  # at lo = 0 nothing is left in this region: DSSIM 0, and verification decides
        out = compose()
    if factors != [1.0] * len(faces):
        measured = [face_dssim(out, f) for f in faces]
    results = [FaceResult(f.box_full, measured[i], factors[i]) for i, f in enumerate(faces)]
    written = image.copy()
    written[ul[1] : lr[1], ul[0] : lr[0]] = out.to(torch.uint8).permute(1, 2, 0).numpy()
    return written, results


def _resample_box(d: torch.Tensor, box_work, box_full, s: float) -> torch.Tensor:
    """Resample a working-resolution map over ``box_work`` onto the full-resolution pixels of ``box_full``."""
    l, t, r, b = box_work
    L, T, R, B = box_full
    ys = (torch.arange(T, B, dtype=torch.float64) + 0.5) * s - 0.5 - t
    xs = (torch.arange(L, R, dtype=torch.float64) + 0.5) * s - 0.5 - l
    gy = 2 * ys / max(b - t - 1, 1) - 1
    gx = 2 * xs / max(r - l - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None].to(d)
    return F.grid_sample(d[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
