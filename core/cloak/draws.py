"""What a view is (:class:`View`: one draw of what an upload and a tracker do to a photo) and the ranges views
are drawn from (:class:`ViewDistribution`). Plain data without torch: the configuration reads the presets,
which hold a distribution, and `cloakd status` or `check-config` should not wait for torch to load.
core/cloak/views.py renders views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class View:
    scale: float = 1.0  # photo downscale factor (<= 1)
    jpeg_quality: int | None = None
    jpeg_offset: tuple[int, int] = (0, 0)
    shift: tuple[float, float] = (0.0, 0.0)  # alignment jitter, fraction of the chip side
    rotation: float = 0.0  # radians
    zoom: float = 1.0
    alignment: int = 0  # 0: the extractor's own alignment; i > 0: its i-th alternate, where it has one


IDENTITY = View()
EXACT_ALTERNATE = View(alignment=1)  # the photo as it is, aligned by the first alternate landmark model


@dataclass(frozen=True)
class ViewDistribution:
    """What uploads do, as ranges: long side 1080-2048 px, +-2% shift, +-3 degrees, +-3% zoom (the spread
    seen between MTCNN and dlib alignments of the same face), and JPEG recompression in every random view.
    Quality is drawn from 70-85: platforms use 70-90, and the low end is the hard case (measured on
    ../shared/data/faces: JPEG in every random view at 70-85 raised the linear tracker's PSR after
    JPEG 75 from 75% to 90% at the same budget)."""

    jpeg_quality: tuple[int, int] = (70, 85)
    long_side: tuple[int, int] = (1080, 2048)
    shift: float = 0.02
    rotation_deg: float = 3.0
    zoom: float = 0.03
    p_jpeg: float = 1.0
    p_resize: float = 0.7
    p_alternate: float = 0.5  # a random view aligns the face by another landmark model, where there is one

    def sample(
        self,
        rng: np.random.Generator,
        photo_long_side: int,
        force_jpeg: bool = False,
        jpeg_offset: tuple[int, int] | None = None,
    ) -> View:
        """One random view; ``jpeg_offset`` fixes the JPEG block phase (views sharing it and their scale
        are recompressed as one batch)."""
        scale = 1.0
        if photo_long_side > self.long_side[0] and rng.random() < self.p_resize:
            target = rng.uniform(self.long_side[0], min(self.long_side[1], photo_long_side))
            scale = min(1.0, target / photo_long_side)
        quality = None
        if force_jpeg or rng.random() < self.p_jpeg:
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
        return View(
            scale=scale,
            jpeg_quality=quality,
            jpeg_offset=(
                jpeg_offset if jpeg_offset is not None else (int(rng.integers(0, 16)), int(rng.integers(0, 16)))
            ),
            shift=(float(rng.uniform(-self.shift, self.shift)), float(rng.uniform(-self.shift, self.shift))),
            rotation=math.radians(float(rng.uniform(-self.rotation_deg, self.rotation_deg))),
            zoom=float(1 + rng.uniform(-self.zoom, self.zoom)),
            alignment=int(rng.random() < self.p_alternate),
        )
