"""SFace (Zhong et al., "SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition", IEEE TIP
2021) as a torch module: the OpenCV Zoo model ``face_recognition_sface_2021dec`` (Apache-2.0), a surrogate
extractor the cloak can optimise against besides dlib's ResNet.

The network is a plain MobileNet-V1 stack without residuals: a 3x3 conv to 32 channels, then 13
depthwise-separable pairs (3x3 depthwise, 1x1 pointwise) down to 1024 x 7 x 7, every conv followed by a
batch norm and a PReLU; then a batch norm, a fully connected layer to 128 and a last batch norm. All batch
norms (inference statistics) are folded into the neighbouring conv or linear layer by
``scripts/convert_sface.py``, which also dequantises OpenCV Zoo's int8 weights; the weights ship as
``core/data/sface.fp16.pt`` (float16 state dict, float32 once loaded; sha256 checked).

Runtime behaviour: eval mode, frozen parameters, differentiable with respect to the input chips.
Descriptors are L2-normalised, so the Euclidean distance between two is sqrt(2 - 2 cos) and a distance
threshold is a cosine threshold. Internally the module runs in channels_last memory format (faster on CPU
for these convolutions); inputs and outputs are ordinary tensors. It never changes torch's thread
settings.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import ChipGeometry, Extractor
from .weights import DATA, load_state

WEIGHTS = DATA / "sface.fp16.pt"
WEIGHTS_DIGEST = "3dd27f0d6d86fa2dc4ad7ce9b3e68b91d50415a82fbda4cd4042ece6b1008e2d"

#: (output channels, stride) of the depthwise-separable pairs after the 32-channel stem
SEPARABLE = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))


class PReLU(nn.Module):
    """Per-channel PReLU. When a gradient is to flow it is computed as relu(x) - a * relu(-x), the same
    values as ``F.prelu`` but much cheaper to differentiate on CPU (torch's prelu backward also computes
    the slopes' gradient, and slowly); without one, ``F.prelu`` is the faster forward."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.relu(x) - self.weight.view(1, -1, 1, 1) * F.relu(-x)
        return F.prelu(x, self.weight)


class ConvPReLU(nn.Sequential):
    """Conv (its batch norm folded into weight and bias) + per-channel PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups), PReLU(cout))


class Separable(nn.Sequential):
    """MobileNet-V1 depthwise-separable pair: 3x3 depthwise conv (with the stride), 1x1 pointwise conv."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(ConvPReLU(cin, cin, 3, stride, groups=cin), ConvPReLU(cin, cout, 1))


class SFace(Extractor):
    """128-d L2-normalised descriptors of 112x112 chips aligned to the ArcFace template.

    Input: float N x 3 x 112 x 112 RGB in [0, 255]; the model's (x - 127.5) / 128 happens inside.
    ``state``: the float32 state dict (see :func:`sface`).
    """

    name = "sface"
    geometry = ChipGeometry(
        size=112,
        template=((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)),
    )
    dim = 128
    # identity scale and match threshold: core/data/calibration.json (scripts/calibrate_extractors.py)

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        with torch.device("meta"):
            self.stem = ConvPReLU(3, 32, 3)
            channels = (32,) + tuple(c for c, _ in SEPARABLE)
            self.body = nn.Sequential(*(Separable(c, cout, s) for c, (cout, s) in zip(channels, SEPARABLE)))
            # batch norm on the 1024 x 7 x 7 map, FC to 128 and its batch norm, folded into one linear layer
            self.embedding = nn.Linear(1024 * 7 * 7, self.dim)
        self.load_state_dict(state, assign=True)
        self.to(memory_format=torch.channels_last)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(chips), dim=1)

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """The network's own output (OpenCV Zoo's ``fc1``), before L2 normalisation."""
        size = self.geometry.size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(f"expected N x 3 x {size} x {size} RGB chips, got {tuple(chips.shape)}")
        x = (chips.to(self.embedding.weight.dtype) - 127.5) * (1 / 128)
        x = self.body(self.stem(x.contiguous(memory_format=torch.channels_last)))
        return self.embedding(x.flatten(1))


def sface(path: str | os.PathLike[str] | None = None) -> SFace:
    """SFace with the shipped weights (``path``: another copy of ``sface.fp16.pt``)."""
    fix = "reinstall cloakd" if path is None else "regenerate it with scripts/convert_sface.py"
    return SFace(load_state(WEIGHTS if path is None else path, WEIGHTS_DIGEST, "SFace", fix))
