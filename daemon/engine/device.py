"""Where the face models run: ``cpu``, ``cuda`` or ``auto`` (CUDA when torch sees a GPU, else the CPU).

The extractors' forward and backward passes are nearly all of a cloak's arithmetic, so on CUDA each
extractor is wrapped in :class:`OnDevice`: its weights live on the GPU, the chips of a step are moved
there, and the descriptors come back to the CPU, inside the autograd graph (the cloak's gradients flow
through the move). Everything else (MTCNN, views, JPEG, SSIM, encoding) stays on the CPU. A GPU worker
takes several photos at once (``cloakd worker --nthreads N``): their steps share the GPU. This path has
not been measured on a GPU (README, "Several machines").
"""

from __future__ import annotations

import torch

from cloakd.core.errors import CloakdError
from cloakd.core.extractors import CLOAK_EXTRACTORS, DEFAULT_EXTRACTOR, Extractor, load_extractor
from cloakd.core.extractors.calibration import Calibration
from cloakd.core.faces import FaceAnalyzer

from ..config import DEVICES


def resolve(device: str) -> torch.device:
    """The torch device for a ``device`` setting; CloakdError if CUDA is asked for and torch sees none."""
    if device not in DEVICES:
        raise CloakdError(f"device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cuda" or device == "auto" and torch.cuda.is_available():
        if not torch.cuda.is_available():
            raise CloakdError(
                f"device cuda: torch {torch.__version__} sees no CUDA GPU here; fix: install a CUDA "
                f"build of torch on this machine, or use device cpu (or auto)"
            )
        return torch.device("cuda")
    return torch.device("cpu")


class OnDevice(Extractor):
    """``inner`` on ``device``; takes and returns tensors wherever the caller keeps them. Its name, chip
    geometry, size, identity scale and match threshold are ``inner``'s."""

    def __init__(self, inner: Extractor, device: torch.device):
        super().__init__()
        self.inner = inner.to(device)
        self.device = device
        self.name, self.geometry, self.dim = inner.name, inner.geometry, inner.dim

    @property
    def calibration(self) -> Calibration:
        return self.inner.calibration

    @property
    def match_threshold(self) -> float:  # a model may have its own (dlib's ResNet)
        return self.inner.match_threshold

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.inner(chips.to(self.device)).to(chips.device)


def load_analyzer(device: str) -> tuple[FaceAnalyzer, torch.device]:
    """The face models with what cloaking needs, their extractors on ``device``."""
    where = resolve(device)
    if where.type == "cpu":
        return FaceAnalyzer().load_cloak_models(), where
    primary = OnDevice(load_extractor(DEFAULT_EXTRACTOR), where)
    others = [OnDevice(load_extractor(n), where) for n in CLOAK_EXTRACTORS if n != DEFAULT_EXTRACTOR]
    return FaceAnalyzer(extractor=primary, cloak_extractors=[primary, *others]).load_cloak_models(), where
