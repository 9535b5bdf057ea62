"""Intel's ``face-reidentification-retail-0095`` (Open Model Zoo, Apache-2.0) as a torch module.

A surrogate extractor for the cloak: a small modern recogniser that does not share dlib's features. The
network follows Intel's OpenVINO IR (v5, FP16) layer by layer::

    BGR 0-255 -> ScaleShift (x * a + b per channel)
    -> conv 3x3/2 to 64 + PReLU -> depthwise 3x3 + PReLU                                     64 x 64
    -> bottleneck 64 -> 128 -> 64 /2,  4 x bottleneck 64 -> 128 -> 64 (residual)            32 x 32
    -> bottleneck 64 -> 256 -> 128 /2, 6 x bottleneck 128 -> 256 -> 128 (residual)          16 x 16
    -> bottleneck 128 -> 512 -> 128 /2, 2 x bottleneck 128 -> 256 -> 128 (residual)          8 x 8
    -> conv 1x1 to 512 + PReLU -> depthwise 8x8 (global) -> conv 1x1 to 256 (no bias)

A bottleneck is MobileNet-V2's inverted residual with PReLU and squeeze-and-excitation on its projection:
1x1 expand + PReLU, depthwise 3x3 + PReLU, 1x1 project (linear), then x * sigmoid(SE(x)) with SE = global
average, 1x1 to C/8, PReLU, 1x1 back to C; stride-1 blocks add their input. Every PReLU has one slope.

The weights are Intel's FP16 values (``core/data/omz_reid.fp16.pt``, made by scripts/convert_omz_reid.py),
computed in float32. Input: float N x 3 x 128 x 128 **RGB** in [0, 255] like every cloakd extractor (the
module flips to the BGR order the network was exported for); chips are aligned by a similarity transform
of the five landmarks to Intel's reference points. Output: N x 256, L2-normalised, so the Euclidean
distance d relates to the cosine similarity c the model was trained for by d^2 = 2 - 2c.

The module runs in channels_last memory format, which is faster here for float32 and for the bfloat16
twin; inputs and outputs are ordinary tensors. It never changes torch's thread settings.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import ChipGeometry, Extractor
from .weights import DATA, load_state

WEIGHTS_FILE = DATA / "omz_reid.fp16.pt"
#: sha256 of the weights' names, shapes and FP16 bytes (see weights.weights_digest), not of the file's container
WEIGHTS_DIGEST = "3923f7bd5c06f08a13ceed801f066c5cb43c5ea1be030eaf0dd2a324cf13ce48"

#: Intel's reference landmarks for this model, as fractions of the chip side, in MTCNN's order.
REFERENCE_POINTS = (
    (0.31556875, 0.46157411),
    (0.68262292, 0.46157411),
    (0.50026250, 0.64050536),
    (0.34947188, 0.82469196),
    (0.65343646, 0.82469196),
)
CHIP_SIZE = 128

#: (input, expanded, output channels, stride) of each bottleneck, in order
BOTTLENECKS = (
    (64, 128, 64, 2),
    *[(64, 128, 64, 1)] * 4,
    (64, 256, 128, 2),
    *[(128, 256, 128, 1)] * 6,
    (128, 512, 128, 2),
    *[(128, 256, 128, 1)] * 2,
)


class PReLU(nn.PReLU):
    """PReLU with one slope a, applied as leaky_relu(x, a): the same values, and a fused backward pass
    several times faster than nn.PReLU's (which also reduces a gradient for the slope). The slope itself
    gets no gradient: the weights are frozen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.weight.item())


def _conv_prelu(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups), PReLU())


class SqueezeExcitation(nn.Module):
    """x * sigmoid(up(PReLU(down(mean of x over the image)))), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, channels // 8, 1)
        self.act = PReLU()
        self.up = nn.Conv2d(channels // 8, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.up(self.act(self.down(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(weight)


class Bottleneck(nn.Module):
    """Inverted residual: expand, depthwise 3x3, linear projection, squeeze-and-excitation (+ input)."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = _conv_prelu(cin, hidden)
        self.depthwise = _conv_prelu(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)
        self.se = SqueezeExcitation(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.project(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class OMZFaceReid(Extractor):
    """256-d L2-normalised descriptors of 128 x 128 chips aligned to Intel's reference points."""

    name = "omz_reid"
    geometry = ChipGeometry(size=CHIP_SIZE, template=tuple((x * CHIP_SIZE, y * CHIP_SIZE) for x, y in REFERENCE_POINTS))
    dim = 256
    # identity scale and match threshold: core/data/calibration.json (scripts/calibrate_extractors.py)

    def __init__(self) -> None:
        """The architecture with untrained weights; :func:`omz_reid` loads Intel's."""
        super().__init__()
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))  # the IR's ScaleShift, BGR order
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.stem = nn.Sequential(_conv_prelu(3, 64, 3, stride=2), _conv_prelu(64, 64, 3, groups=64))
        self.blocks = nn.Sequential(*(Bottleneck(*spec) for spec in BOTTLENECKS))
        self.head = nn.Sequential(
            _conv_prelu(128, 512),
            nn.Conv2d(512, 512, 8, groups=512),  # global depthwise: one 8x8 filter per channel
            nn.Conv2d(512, self.dim, 1, bias=False),
        )
        self.to(memory_format=torch.channels_last)

    def embedding(self, chips: torch.Tensor) -> torch.Tensor:
        """The network's own output (N x 256, not normalised), as the IR computes it."""
        size = self.geometry.size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(f"expected N x 3 x {size} x {size} RGB chips, got {tuple(chips.shape)}")
        bgr = chips.to(self.scale.dtype).flip(1)
        x = torch.addcmul(self.shift, bgr, self.scale).contiguous(memory_format=torch.channels_last)
        return self.head(self.blocks(self.stem(x))).flatten(1)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedding(chips), dim=1)


def omz_reid(path: str | os.PathLike[str] | None = None) -> OMZFaceReid:
    """Load Intel's weights from ``path`` (default: the copy shipped in cloakd's package data).

    The file must hold exactly the converted FP16 weights (digest checked): the state-dict checks cannot
    tell a damaged copy with the right shapes from the real one.
    """
    fix = "reinstall cloakd, or regenerate it with scripts/convert_omz_reid.py"
    state = load_state(WEIGHTS_FILE if path is None else path, WEIGHTS_DIGEST, "omz_reid", fix)
    model = OMZFaceReid()
    model.load_state_dict(state)
    return model
