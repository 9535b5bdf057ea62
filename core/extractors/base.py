"""The Extractor interface: a face descriptor network and the chip it takes.

An extractor is a torch ``nn.Module`` in eval mode that maps aligned face chips to descriptors. Callers
never normalise pixels themselves: the input is always float RGB in [0, 255], N x 3 x S x S, so that a
cloak optimised on pixels gets gradients through the extractor's own normalisation. Where the chip comes
from is described by ``geometry``: the chip size and where the five landmarks (MTCNN's order) should land in
the chip; the alignment module fits a similarity transform to them and turns it into a sampling grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .calibration import Calibration, calibration


@dataclass(frozen=True)
class ChipGeometry:
    """Where an extractor's input chip lies relative to the face.

    ``size``: chip side in pixels. ``template``: where the five landmarks (MTCNN's order: image-left eye,
    image-right eye, nose, mouth left, mouth right) land in the chip, in chip pixels. A model trained on
    dlib's ``get_face_chip`` gives its ``padding`` instead (the unit face square is mapped to
    [padding, 1 + padding] / (1 + 2 padding) of the chip) and the template follows from dlib's. A model
    trained on detection boxes without landmark alignment (FaceNet) gives ``box_margin`` instead: the chip
    is upright and square about the centre of the face's detection box, whose mean side spans
    ``size - box_margin`` chip pixels (:meth:`~cloakd.core.align.ChipTransform.around_box`).
    """

    size: int
    padding: float | None = None
    template: tuple[tuple[float, float], ...] | None = None
    box_margin: float | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.padding, self.template, self.box_margin)) != 1:
            raise ValueError("a chip geometry takes one of dlib's padding, a landmark template or a box margin")

    def transform(self, landmarks: np.ndarray, box: np.ndarray | None = None):
        """The :class:`~cloakd.core.align.ChipTransform` that crops a face with these 5 landmarks and this
        detection box (x1, y1, x2, y2; only a box geometry uses it, and needs it)."""
        from ..align import MTCNN_TEMPLATE, ChipTransform, template_in_chip

        if self.box_margin is not None:
            if box is None:
                raise ValueError("this chip geometry crops the face's detection box: none was given")
            return ChipTransform.around_box(box, self.size, self.box_margin)
        if self.template is not None:
            chip_points = np.asarray(self.template, dtype=np.float64)
        else:
            chip_points = template_in_chip(MTCNN_TEMPLATE, self.size, self.padding)
        return ChipTransform.fit(chip_points, landmarks, self.size)


class Extractor(nn.Module):
    """A face descriptor network. Subclasses set ``name``, ``geometry`` and ``dim`` and implement forward."""

    name: str = ""
    geometry: ChipGeometry
    dim: int

    @property
    def calibration(self) -> Calibration:
        """The extractor's measured identity scale (core/data/calibration.json)."""
        return calibration(self.name)

    @property
    def match_threshold(self) -> float:
        """Distance under which two descriptors are taken to be the same person: the calibrated one, unless
        the model has its own (a subclass sets it)."""
        return self.calibration.match_threshold

    @property
    def same_person(self) -> float:
        """Median distance between two photos of one person on ../shared/data/train."""
        return self.calibration.same_person

    @property
    def other_person(self) -> float:
        """Median distance between photos of two different people on ../shared/data/train."""
        return self.calibration.other_person

    @property
    def identity_gap(self) -> float:
        """The unit in which the cloak counts this extractor's distances: a move of one gap is the
        difference between looking like another photo of the same person and like someone else."""
        return self.calibration.identity_gap

    def forward(self, chips: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def bfloat16_twin(self) -> "Extractor":
        """A bfloat16 copy of this extractor (made once, kept with it), for the cloak's search; the copy
        takes and returns float32. Casting weights once beats autocast, which recasts them every call."""
        twin = self.__dict__.get("_bf16_twin")
        if twin is None:
            import copy

            twin = _BFloat16(copy.deepcopy(self).to(torch.bfloat16))
            self.__dict__["_bf16_twin"] = twin  # not a submodule: state_dict and .to() ignore it
        return twin


class _BFloat16(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.inner(chips.to(torch.bfloat16)).float()
