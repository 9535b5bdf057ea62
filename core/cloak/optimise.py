"""The cloak optimiser (Fawkes eq. 2, budget kept by projection): pure computation on arrays, no I/O.

For each face of a photo, a perturbation lives on the photo's own pixels around the face (the face's
region: the bounding box of its chips' footprints plus a margin for alignment jitter), feathered to zero
at the edge of the chips so no seam appears. It is optimised against one or several feature extractors
(an ensemble: a cloak that fools several different recognisers is more likely to fool one it never saw),
each seeing the face through its own alignment. The loss of a face is

    sum over extractors k of  mean over views v of  (|| Phi_k(chip_kv(x + delta)) - t_k || / s_k)^2

plus a push away from the face's own descriptors and a hinge that insists on a minimum gain towards the
target in every extractor (the verification checks each). ``s_k`` is extractor k's identity gap (median
different-person minus median same-person distance), so every extractor's loss is counted in the same
unit: a move of one gap weighs the same in each.
The views are the tracker's exact alignment plus random upload processing (JPEG, downscale, alignment
jitter, blur; see views.py). ``t_k`` is the target descriptor in extractor k's space (towards a target
class or, for a Sybil image, towards the user); an untargeted cloak only pushes the face away from
itself.

Each face is optimised at its own working resolution (see :func:`working_scale`). The perturbations are
then resampled to full resolution, added (where regions overlap, they add up), rounded to 8 bits, and the
DSSIM budget is enforced there, at full resolution, for every face's region.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..align import ChipTransform, chip_to_box
from ..extractors import Extractor
from .draws import EXACT_ALTERNATE, IDENTITY, View, ViewDistribution
from .presets import CloakPreset
from .ssim import dssim, dssim_large
from .views import render_chips

#: Adam's iterate is projected a little inside the budget, so the next step rarely needs a second projection
PROJECTION_SAFETY = 0.995
#: the first full-resolution rescale aims just inside the budget (DSSIM grows about as amplitude squared)
RESCALE_SAFETY = 0.99
#: halvings of the rescale factor when the predicted one overshoots (rare): 2^-12 of the amplitude
BISECTION_STEPS = 12
#: JPEG's block grid repeats every 16 pixels (one 4:2:0 MCU): the phases a view can draw
JPEG_PHASES = 16
#: the feathered edge of a chip's footprint, as a fraction of the chip side (a raised cosine to zero)
FEATHER_RAMP = 0.08
#: chips of the first extractor per forward and backward pass: bounds the activations kept for the
#: backward pass (a group photo's faces are differentiated a few at a time)
CHIPS_PER_PASS = 16
#: chip pixels per working pixel is never finer than this (finer working detail is wasted time)
WORK_PIXELS_PER_CHIP_PIXEL = 1.5


@dataclass
class Goal:
    """What one extractor should see of one face after cloaking."""

    transform: ChipTransform  # the face's chip for this extractor, in full-resolution photo coordinates
    origin: np.ndarray  # the face's own descriptor in this extractor's space: pushed away from
    target: np.ndarray | None = None  # pulled towards (None: this extractor only pushes away)
    #: the same face's chip as other landmark models align it (random views use them too; views.py)
    alternates: tuple[ChipTransform, ...] = ()

    @property
    def alignments(self) -> tuple[ChipTransform, ...]:
        return (self.transform, *self.alternates)


@dataclass
class FaceTask:
    """One face to cloak: one :class:`Goal` per extractor, in the order the extractors are given."""

    goals: list[Goal]


@dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # region at full resolution (left, top, right, bottom exclusive)
    dssim: float  # measured at full resolution on the 8-bit result
    loss: list[float] = field(default_factory=list)  # identity-view feature loss, first and last step


@dataclass
class CloakResult:
    image: np.ndarray
    faces: list[FaceResult]
    seconds: float = 0.0
    steps: int = 0  # optimisation steps run (fewer than the preset's when every face converged early)


Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in pixels


def _region_box(transforms: Sequence[ChipTransform], hw: tuple[int, int], margin: float) -> Box:
    """The bounding box of the chips' footprints, grown by ``margin`` of each chip's side, inside the image."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for tf in transforms:
        corners = tf.footprint()
        pad = margin * tf.size * tf.scale
        lo = np.minimum(lo, corners.min(0) - pad)
        hi = np.maximum(hi, corners.max(0) + pad)
    lo, hi = np.floor(lo).astype(int), np.ceil(hi).astype(int) + 1
    h, w = hw
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], w), min(hi[1], h)


def _scaled(tf: ChipTransform, s: float) -> ChipTransform:
    """The same chip in an image resampled by factor s (pixel centres map as (x + 0.5) s - 0.5)."""
    left, top, right, bottom = tf.rect
    cx, cy = ((left + right) / 2 + 0.5) * s - 0.5, ((top + bottom) / 2 + 0.5) * s - 0.5
    half = (right - left) / 2 * s
    return ChipTransform((cx - half, cy - half, cx + half, cy + half), tf.angle, tf.size)


def _translated(tf: ChipTransform, dx: float, dy: float) -> ChipTransform:
    left, top, right, bottom = tf.rect
    return ChipTransform((left + dx, top + dy, right + dx, bottom + dy), tf.angle, tf.size)


def _feather(size: int) -> torch.Tensor:
    """Chip-space window: 1 inside, a raised-cosine ramp to 0 over the outer FEATHER_RAMP of the chip."""
    u = torch.linspace(0, 1, size, dtype=torch.float64)
    edge = torch.minimum(u, 1 - u) / FEATHER_RAMP
    w = 0.5 - 0.5 * torch.cos(math.pi * edge.clamp(0, 1))
    return (w[:, None] * w[None, :]).unsqueeze(0)


def working_scale(h: int, w: int, transforms: ChipTransform | Sequence[ChipTransform], work_side: int) -> float:
    """The resolution one face is optimised at, as a factor of the photo's.

    At most ``work_side`` on the long side (detail finer than platforms keep is wasted), and no finer than
    WORK_PIXELS_PER_CHIP_PIXEL per pixel of the finest chip among the extractors' (an extractor sees the
    face through its chip only). Never finer than full resolution.
    """
    if isinstance(transforms, ChipTransform):
        transforms = [transforms]
    finest = min(tf.scale for tf in transforms)  # tf.scale: full-resolution pixels per chip pixel
    return min(1.0, work_side / max(h, w), WORK_PIXELS_PER_CHIP_PIXEL / finest)


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX): then the extractors' forward and
    backward in the loop take about 2/3 of the float32 time, descriptors differ by about 1% of the
    same-person threshold and gradients keep a cosine of about 0.98 (tests/test_cloak.py)."""
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
    face next to a small one costs what each costs alone. ``work_scale`` is the working resolution as a
    factor of the photo's, ``full_box`` the region in the photo's pixels, ``work_box`` the same region in
    the working crop's pixels; ``gaps`` the extractors' identity gaps.
    """

    def __init__(self, task: FaceTask, gaps: Sequence[float], image: np.ndarray, work_side: int, margin: float):
        h, w = image.shape[:2]
        self.task = task
        self.work_scale = working_scale(h, w, [g.transform for g in task.goals], work_side)
        self.full_box = _region_box([tf for g in task.goals for tf in g.alignments], (h, w), margin)  # every chip
        crop = self._working_crop(image)
        self.alignments = [tuple(self._local(tf) for tf in g.alignments) for g in task.goals]
        every_local = [tf for a in self.alignments for tf in a]
        self.has_alternates = any(len(a) > 1 for a in self.alignments)
        self.work_box = _region_box(every_local, crop.shape[:2], margin)
        wl, wt, wr, wb = self.work_box
        self.base = _to_tensor(crop[wt:wb, wl:wr])
        self.long_side = max(h, w) * self.work_scale  # the photo's long side at this face's working resolution
        footprints = [chip_to_box(_feather(tf.size), tf, self.work_box).float() for tf in every_local]
        self.mask = torch.stack(footprints).amax(0)  # where the perturbation may act: the chips, feathered
        self.delta = torch.zeros(3, wb - wt, wr - wl, requires_grad=True)
        self._aim(task.goals, gaps)

    def _aim(self, goals: list[Goal], gaps: Sequence[float]) -> None:
        """Per extractor: its identity gap, the target and the face's own descriptor as tensors, and where
        the face starts, in gaps from the target."""
        self.gaps = list(gaps)
        self.targets = [None if g.target is None else torch.as_tensor(np.asarray(g.target, np.float32)) for g in goals]
        self.origins = [torch.as_tensor(np.asarray(g.origin, np.float32)) for g in goals]
        self.start = [
            None if t is None else float((o - t).norm()) / u for o, t, u in zip(self.origins, self.targets, gaps)
        ]

    def _working_crop(self, image: np.ndarray) -> np.ndarray:
        """The face's region of the photo with a little context (for the resampling filter at the region's
        edge), at the working resolution; its top-left corner in the photo is ``crop_origin``."""
        h, w = image.shape[:2]
        left, top, right, bottom = self.full_box
        context = int(math.ceil(2 / self.work_scale)) + 1
        crop_left, crop_top = max(left - context, 0), max(top - context, 0)
        self.crop_origin = (crop_left, crop_top)
        crop = image[crop_top : min(bottom + context, h), crop_left : min(right + context, w)]
        return _resize_uint8(crop, self.work_scale) if self.work_scale != 1.0 else crop

    def _local(self, tf: ChipTransform) -> ChipTransform:
        """A chip of the photo in the working crop's pixels."""
        tf = _translated(tf, -self.crop_origin[0], -self.crop_origin[1])
        return _scaled(tf, self.work_scale) if self.work_scale != 1.0 else tf

    def pixels(self) -> torch.Tensor:
        """The face's working pixels as the extractors see them: the perturbation ``delta`` (the search's
        variable), through ``mask``, on the original pixels ``base``."""
        return (self.base + self.mask * self.delta).clamp(0, 255)

    def full_resolution_delta(self) -> torch.Tensor:
        """The perturbation on the full-resolution pixels of ``full_box``."""
        d = self.mask * self.delta.detach()
        if self.work_scale == 1.0:
            return d
        crop_left, crop_top = self.crop_origin
        left, top, right, bottom = self.full_box
        box_in_crop = (left - crop_left, top - crop_top, right - crop_left, bottom - crop_top)
        return _resample_box(d, self.work_box, box_in_crop, self.work_scale)

    def _distances(self, k: int, emb: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
        """Distances of extractor k's descriptors ``emb`` (views x D) to ``to``, in identity gaps of k."""
        return (emb - to).pow(2).sum(-1).clamp_min(1e-12).sqrt() / self.gaps[k]

    def converged(self, embs: list[torch.Tensor], preset: CloakPreset) -> bool:
        """Whether this step's views (before the step) show every extractor's goal reached: a target on
        average within ``preset.stop_at`` gaps, or (untargeted) every view at least
        ``preset.away_margin`` gaps from the face's own descriptor."""
        for k, emb in enumerate(embs):
            if self.targets[k] is not None:
                if preset.stop_at is None or float(self._distances(k, emb, self.targets[k]).mean()) > preset.stop_at:
                    return False
            elif float(self._distances(k, emb, self.origins[k]).min()) < preset.away_margin:
                return False
        return True

    def feature_losses(self, embs: list[torch.Tensor], preset: CloakPreset) -> list[torch.Tensor]:
        """Per extractor, per view, in gaps: the squared distance to the target, the push away from the
        face's own descriptor until ``preset.away_margin``, and the hinge on a gain towards the target short
        of ``preset.gain_goal``."""
        out = []
        for k, emb in enumerate(embs):
            away = F.relu(preset.away_margin - self._distances(k, emb, self.origins[k])).pow(2)
            if self.targets[k] is None:
                loss = away
            else:
                to_target = self._distances(k, emb, self.targets[k])
                short = F.relu(preset.gain_goal - (self.start[k] - to_target)).pow(2)
                loss = to_target.pow(2) + preset.away_weight * away + preset.gain_weight * short
            out.append(loss)
        return out


def cloak(
    image: np.ndarray,
    tasks: list[FaceTask],
    extractors: Extractor | Sequence[Extractor],
    preset: CloakPreset,
    *,
    seed: int = 0,
    views: ViewDistribution | None = None,
    work_side: int = 2048,
    margin: float = 0.1,
    bf16: bool | None = None,
) -> CloakResult:
    """Cloak every face in ``tasks`` of ``image`` (H x W x 3 uint8 RGB); returns the new 8-bit image.

    ``extractors``: the extractors the cloak is optimised against (each task has one goal per extractor;
    their losses, in identity gaps, are summed). ``bf16``: run them inside the optimisation
    loop in bfloat16 (default: when the CPU has native bfloat16 instructions). Only the search direction
    is affected; the budget and the result are computed in float32.

    The steps: prepare each face's state (:class:`_Face`, :class:`_Search`), then per step the gradients of
    every face's loss over its views (:meth:`_Search.gradients`, the loss itself in
    :meth:`_Face.feature_losses`), one Adam step and the projection onto the budget (:meth:`_Search.descend`);
    at the end the budget is enforced exactly at full resolution (:func:`_apply_at_full_resolution`).
    """
    t0 = time.perf_counter()
    if not tasks:
        return CloakResult(image.copy(), [], 0.0)
    extractors = [extractors] if isinstance(extractors, Extractor) else list(extractors)
    search = _Search(
        image,
        tasks,
        extractors,
        preset,
        views if views is not None else preset.views,
        seed=seed,
        work_side=work_side,
        margin=margin,
        bf16=bf16_supported() if bf16 is None else bf16,
    )
    for step in range(preset.steps):
        if search.gradients(step):  # every face already where it should be, in every view of this step: stop early
            break
        search.descend(step)
    out, results = _apply_at_full_resolution(image, search.faces, preset.rho)
    for res, hist in zip(results, search.history):
        res.loss = [hist[0], hist[-1]] if hist else []
    return CloakResult(out, results, time.perf_counter() - t0, steps=len(search.history[0]))


class _Search:
    """One cloak's optimisation: the faces' states, the networks the search runs (bfloat16 twins or the
    extractors), Adam, the random views' stream, and each face's identity-view loss per step.

    The faces are differentiated a few at a time (``passes``): their losses are independent, so the
    gradient is the same, and the activations kept for the backward pass stay bounded.
    """

    def __init__(
        self,
        image: np.ndarray,
        tasks: list[FaceTask],
        extractors: list[Extractor],
        preset: CloakPreset,
        views: ViewDistribution,
        *,
        seed: int,
        work_side: int,
        margin: float,
        bf16: bool,
    ):
        if any(len(t.goals) != len(extractors) for t in tasks):
            raise ValueError("every face task needs one goal per extractor")
        self.preset, self.views = preset, views
        self.rng = np.random.default_rng(seed)
        gaps = [e.identity_gap for e in extractors]
        self.faces = [_Face(t, gaps, image, work_side, margin) for t in tasks]
        self.nets = [e.bfloat16_twin() if bf16 else e for e in extractors]
        self.opt = _Adam([f.delta for f in self.faces])
        self.history: list[list[float]] = [[] for _ in self.faces]
        per_pass = max(1, CHIPS_PER_PASS // preset.views_per_step)
        self.passes = [list(range(i, min(i + per_pass, len(tasks)))) for i in range(0, len(tasks), per_pass)]

    def gradients(self, step: int) -> bool:
        """This step's losses and their gradients, pass by pass; True when every face had already reached
        its goal in this step's views (then there is nothing to descend)."""
        done: list[bool] = []
        for f in self.faces:
            f.delta.grad = None
        for members in self.passes:
            loss = self._loss(members, self._embed(members, step), done)
            if len(self.passes) == 1 and all(done):
                break
            loss.backward()
        return all(done)

    def descend(self, step: int) -> None:
        """One Adam step (cosine-decayed step size), then each face's perturbation back onto the budget."""
        preset = self.preset
        self.opt.step(preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / preset.steps))))
        _project_to_budget(self.faces, preset.rho)

    def _draw(self, f: _Face) -> tuple[list[View], int]:
        """A face's views for one step: its exact views (the exact alignment, and the exact alternate one
        where the preset and the face have it), then random upload views sharing one JPEG block phase; and
        how many exact views lead."""
        preset, rng = self.preset, self.rng
        phase = (int(rng.integers(0, JPEG_PHASES)), int(rng.integers(0, JPEG_PHASES)))  # one per step
        exact = [IDENTITY] + ([EXACT_ALTERNATE] if preset.exact_alternate and f.has_alternates else [])
        drawn = [
            self.views.sample(rng, f.long_side, force_jpeg=k == 0, jpeg_offset=phase)
            for k in range(preset.views_per_step - len(exact))
        ]
        return exact + drawn, len(exact)

    def _embed(self, members: list[int], step: int) -> list[list[torch.Tensor]]:
        """Per face of ``members``, per extractor, the descriptors of the views it sees this step."""
        per_extractor: list[list[torch.Tensor]] = [[] for _ in self.nets]
        seen: list[list[list[int]]] = []  # per face, per extractor: the views it sees
        for i in members:
            f = self.faces[i]
            views, exact = self._draw(f)
            seen.append([_views_seen(k, step, self.preset, exact, len(a) > 1) for k, a in enumerate(f.alignments)])
            for k, chips in enumerate(render_chips(f.pixels(), f.work_box[:2], f.alignments, views)):
                per_extractor[k].append(chips[seen[-1][k]])
        embs = [
            net(torch.cat(chips)).split([len(s[k]) for s in seen])
            for k, (net, chips) in enumerate(zip(self.nets, per_extractor))
        ]
        return [[e[j] for e in embs] for j in range(len(members))]

    def _loss(self, members: list[int], embs: list[list[torch.Tensor]], done: list[bool]) -> torch.Tensor:
        """The faces' losses summed over faces and extractors; notes each face's identity-view loss in its
        history and whether it reached its goal (into ``done``)."""
        loss = torch.zeros(())
        for i, mine in zip(members, embs):
            per_extractor = self.faces[i].feature_losses(mine, self.preset)
            self.history[i].append(float(sum(fl[0].detach() for fl in per_extractor)))
            done.append(self.faces[i].converged([e.detach() for e in mine], self.preset))
            loss = loss + sum(fl.mean() for fl in per_extractor)
        return loss


def _views_seen(k: int, step: int, preset: CloakPreset, exact: int = 1, has_alternates: bool = True) -> list[int]:
    """Which of a step's views (``exact`` exact views first, then random ones) extractor ``k`` sees: the
    first extractor all of them, the others the exact view and ``preset.ensemble_views - 1`` of the other
    views, in turn (each view costs every extractor that sees it a forward and backward pass; over the
    steps each still sees every kind of view). An extractor without alternate alignments skips the exact
    alternate view, which for it is the exact view again."""
    n = preset.views_per_step
    if k == 0 or preset.ensemble_views is None or preset.ensemble_views >= n:
        return list(range(n))
    first = 1 if has_alternates else exact  # the views it takes turns over: first .. n - 1
    pool = n - first
    start = step * (preset.ensemble_views - 1) + k
    return [0] + sorted({first + (start + j) % pool for j in range(min(preset.ensemble_views - 1, pool))})


class _Adam:
    """Adam (Kingma and Ba 2015) on the faces' perturbations, as torch.optim.Adam computes it. Written out
    because constructing torch.optim's first optimiser in a process imports torch._dynamo and sympy (2.5 s),
    more than a whole cloak of a small photo takes."""

    def __init__(self, params: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        b1, b2 = self.betas
        self.t += 1
        correction1, correction2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(correction2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / correction1)


@torch.no_grad()
def _project_to_budget(faces: list[_Face], rho: float) -> None:
    """Scale each face's perturbation back onto the DSSIM budget (DSSIM grows about as the square of the
    perturbation's amplitude), so every iterate is feasible and Adam moves along the budget's boundary."""
    for f in faces:
        d = float(dssim(f.base[None], f.pixels()[None])[0])
        if d > rho:
            f.delta.mul_(math.sqrt(rho / d) * PROJECTION_SAFETY)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class _Composite:
    """The union of the faces' regions at full resolution, with each face's perturbation at its own
    amplitude factor: composes the 8-bit result and measures each face's DSSIM on it."""

    def __init__(self, image: np.ndarray, faces: list[_Face]):
        self.left = min(f.full_box[0] for f in faces)
        self.top = min(f.full_box[1] for f in faces)
        self.right = max(f.full_box[2] for f in faces)
        self.bottom = max(f.full_box[3] for f in faces)
        self.base = _to_tensor(image[self.top : self.bottom, self.left : self.right])
        self.faces = faces
        self.deltas = [f.full_resolution_delta() for f in faces]
        self.factors = [1.0] * len(faces)

    def _slices(self, f: _Face) -> tuple[slice, slice]:
        left, top, right, bottom = f.full_box
        return slice(top - self.top, bottom - self.top), slice(left - self.left, right - self.left)

    def compose(self) -> torch.Tensor:
        out = self.base.clone()
        for f, d, a in zip(self.faces, self.deltas, self.factors):
            ys, xs = self._slices(f)
            out[:, ys, xs] += a * d
        return out.clamp(0, 255).round()

    def dssim(self, out: torch.Tensor, f: _Face) -> float:
        ys, xs = self._slices(f)
        return dssim_large(self.base[None, :, ys, xs], out[None, :, ys, xs])

    def scale(self, group: list[int], start: list[float], m: float) -> None:
        """Set the factors of the faces in ``group`` to their ``start`` values times ``m``."""
        for j, a in zip(group, start):
            self.factors[j] = a * m


@torch.no_grad()
def _apply_at_full_resolution(image: np.ndarray, faces: list[_Face], rho: float):
    """Resample each perturbation to full resolution, add, round, and enforce the DSSIM budget exactly.

    Only the union of the faces' regions is touched (as float), so memory stays proportional to the
    faces, not to the photo. Where regions overlap, a face's DSSIM also depends on its neighbours'
    perturbations, so a face over budget scales itself and every face whose region overlaps its own.
    """
    comp = _Composite(image, faces)
    out = comp.compose()
    measured = []
    for f in faces:
        current = comp.dssim(out, f)
        measured.append(current)
        if current <= rho:
            continue
        group = [j for j, g in enumerate(faces) if _overlap(f.full_box, g.full_box)]  # includes f
        start = [comp.factors[j] for j in group]
        predicted = math.sqrt(rho / current) * RESCALE_SAFETY
        comp.scale(group, start, predicted)
        out = comp.compose()
        if comp.dssim(out, f) <= rho:
            continue
        lo, hi = 0.0, predicted
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            comp.scale(group, start, mid)
            if comp.dssim(comp.compose(), f) <= rho:
                lo = mid
            else:
                hi = mid
        comp.scale(group, start, lo)  # at lo = 0 nothing is left in this region: DSSIM 0, verification decides
        out = comp.compose()
    if any(a != 1.0 for a in comp.factors):  # a rescale may have changed any face's DSSIM: measure again
        measured = [comp.dssim(out, f) for f in faces]
    results = [FaceResult(f.full_box, d) for f, d in zip(faces, measured)]
    written = image.copy()
    written[comp.top : comp.bottom, comp.left : comp.right] = out.to(torch.uint8).permute(1, 2, 0).numpy()
    return written, results


def _resample_box(d: torch.Tensor, work_box: Box, full_box: Box, s: float) -> torch.Tensor:
    """Resample a working-resolution map over ``work_box`` onto the full-resolution pixels of ``full_box``
    (both in the coordinates of the same crop, the working one scaled by ``s``)."""
    wl, wt, wr, wb = work_box
    left, top, right, bottom = full_box
    ys = (torch.arange(top, bottom, dtype=torch.float64) + 0.5) * s - 0.5 - wt
    xs = (torch.arange(left, right, dtype=torch.float64) + 0.5) * s - 0.5 - wl
    gy = 2 * ys / max(wb - wt - 1, 1) - 1
    gx = 2 * xs / max(wr - wl - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None].to(d)
    return F.grid_sample(d[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
