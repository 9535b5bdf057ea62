"""How a tracker may see a cloaked face after upload: the views the cloak is optimised over (EOT).

A :class:`View` is one draw of what platforms and trackers do to a photo: downscale the photo, recompress
it as JPEG, and align the face differently: another landmark model's alignment (an extractor may have
alternates, e.g. dlib's chip as dlib's own 5-point predictor places it) plus a little jitter.
:func:`render_chips` applies views to the pixels of a face's region and returns the chips the extractors
see, differentiably. The identity view reproduces
each extractor's exact pipeline (its own chip geometry) on the region.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..align import ChipTransform, chip_from_region, plan_region
from .draws import View
from .jpeg import jpeg_roundtrip


def transform_in_crop(tf: ChipTransform, origin: tuple[int, int], view: View) -> ChipTransform:
    """The chip transform relative to a crop starting at ``origin``, after the view's scale and jitter."""
    l, t, r, b = tf.rect
    ox, oy = origin
    s = view.scale
    # pixel centres map as (x + 0.5) * s - 0.5 under resampling
    cx = ((l + r) / 2 - ox + 0.5) * s - 0.5
    cy = ((t + b) / 2 - oy + 0.5) * s - 0.5
    half = (r - l) / 2 * s * view.zoom
    side = 2 * half
    cx += view.shift[0] * side
    cy += view.shift[1] * side
    return ChipTransform((cx - half, cy - half, cx + half, cy + half), tf.angle + view.rotation, tf.size)


def render_chips(
    pixels: torch.Tensor, origin: tuple[int, int], alignments: list[Sequence[ChipTransform]], views: list[View]
) -> list[torch.Tensor]:
    """For each extractor, its chips (N x 3 x S x S) seen through ``views`` from a crop (3 x h x w, 0-255)
    whose top-left is ``origin``. ``alignments``: per extractor, its chip transforms, its own alignment
    first, then alternates (a view's ``alignment`` picks one; an extractor without it uses its own).

    Views with the same scale and JPEG block phase are resampled and recompressed as one batch; every
    extractor samples its chip from the same processed pixels (one upload, several recognisers).
    """
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault((v.scale, None if v.jpeg_quality is None else v.jpeg_offset), []).append(i)
    chips: list[list[torch.Tensor | None]] = [[None] * len(views) for _ in alignments]
    for (scale, offset), members in groups.items():
        x = pixels.unsqueeze(0)
        if scale < 1.0:
            h, w = x.shape[-2:]
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x.expand(len(members), -1, -1, -1)
        if offset is not None:
            x = jpeg_roundtrip(x, [views[i].jpeg_quality for i in members], offset)
        for k, i in enumerate(members):
            for per_view, options in zip(chips, alignments):
                tf = options[views[i].alignment] if views[i].alignment < len(options) else options[0]
                local = transform_in_crop(tf, origin, views[i])
                region = plan_region(local, tuple(x.shape[-2:]))
                left, top, right, bottom = region.box
                per_view[i] = chip_from_region(x[k, :, top:bottom, left:right], region)
    return [torch.stack(per_view) for per_view in chips]
