"""MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
Mobile Devices", 2018) trained with ArcFace on CASIA-WebFace: bubbliiiing/arcface-pytorch's
``arcface_mobilefacenet.pth`` (MIT), a surrogate extractor the cloak can optimise against. Its cloakd name,
``arcface_mbf``, names the loss and the architecture together, so that it is not taken for any other
network called MobileFaceNet.

The network is the paper's Table 1 (112 x 112 input, sizes after each row)::

    conv 3x3/2 to 64 + PReLU, depthwise 3x3 + PReLU                                     56 x 56
    bottleneck 64 -> 128 -> 64 /2,   4 x bottleneck 64 -> 128 -> 64 (residual)          28 x 28
    bottleneck 64 -> 256 -> 128 /2,  6 x bottleneck 128 -> 256 -> 128 (residual)        14 x 14
    bottleneck 128 -> 512 -> 128 /2, 2 x bottleneck 128 -> 256 -> 128 (residual)         7 x 7
    conv 1x1 to 512 + PReLU, linear global depthwise conv 7x7 (GDConv), linear conv 1x1 to 128

A bottleneck is MobileNet-V2's inverted residual with PReLU: 1x1 expand + PReLU, depthwise 3x3 (with the
stride) + PReLU, linear 1x1 projection; stride-1 blocks of equal width add their input. Every conv is
followed by a batch norm and has no bias. Module names are those of the original state dict, so that it
loads as it is (``MobileFaceNet(folded=False)``); :func:`fold` folds every batch norm (inference
statistics) into its conv, which is the layout cloakd ships (``core/data/arcface_mbf.fp16.pt``, made by
scripts/convert_arcface_mbf.py; float16, float32 once loaded; digest checked). Folding makes forward +
backward about 20% cheaper (35 against 42 ms of CPU per face at batch 1, one thread) and keeps the tiny
running variances (down to 2e-15) out of float16. PReLU is torch's own: the relu-difference form that
sface.py uses measured no faster here (within 2%, float32 and bfloat16).

Input: float N x 3 x 112 x 112 RGB in [0, 255] like every cloakd extractor, aligned by a similarity
transform of the five landmarks to the ArcFace template; the model's ``(x / 255 - 0.5) / 0.5`` happens
inside. Output: N x 128, L2-normalised (Euclidean distance d and cosine c: d^2 = 2 - 2c). Eval mode, frozen
parameters, differentiable with respect to the input; runs in channels_last memory format (as fast in
float32, and the bfloat16 twin's forward twice as fast: 4.5 against 9.9 ms per face at batch 4). It never
changes torch's thread settings.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import Extractor
from .sface import SFace
from .weights import DATA, load_state

WEIGHTS = DATA / "arcface_mbf.fp16.pt"
WEIGHTS_DIGEST = "47c2a23e4d3988b163cd3b626c3343dcf89ffc6ef9b5b1f165d2553fb5ba5278"

#: (transition name, residual stage name, input, expanded, output channels, stride, repeats) of each stage:
#: a strided bottleneck, then ``repeats`` residual ones (names as in the original state dict)
STAGES = (
    ("conv_23", "conv_3", 64, 128, 64, 2, 4),
    ("conv_34", "conv_4", 64, 256, 128, 2, 6),
    ("conv_45", "conv_5", 128, 512, 128, 2, 2),
)
RESIDUAL_EXPANSION = 2  # the residual blocks of every stage expand by 2


def _batch_norm(channels: int, folded: bool) -> nn.Module:
    return nn.Identity() if folded else nn.BatchNorm2d(channels)


class ConvBlock(nn.Module):
    """Conv, batch norm and (unless ``linear``) per-channel PReLU; ``folded``: the batch norm lives in the
    conv's weight and bias."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        linear: bool = False,
        folded: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=folded)
        self.bn = _batch_norm(cout, folded)
        self.prelu = nn.Identity() if linear else nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3 with the stride, linear 1x1 projection (+ input)."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, folded: bool) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, hidden, folded=folded)
        self.conv_dw = ConvBlock(hidden, hidden, 3, stride, groups=hidden, folded=folded)
        self.project = ConvBlock(hidden, cout, linear=True, folded=folded)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Repeated(nn.Module):
    """``repeats`` residual bottlenecks of one width (the original's ``model`` Sequential)."""

    def __init__(self, channels: int, repeats: int, folded: bool) -> None:
        super().__init__()
        hidden = channels * RESIDUAL_EXPANSION
        self.model = nn.Sequential(*(Bottleneck(channels, hidden, channels, 1, folded) for _ in range(repeats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Network(nn.Module):
    """The paper's MobileFaceNet, 112 x 112 normalised input to N x 128 x 1 x 1."""

    def __init__(self, folded: bool) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, stride=2, folded=folded)
        self.conv2_dw = ConvBlock(64, 64, 3, groups=64, folded=folded)
        for transition, repeated, cin, hidden, cout, stride, repeats in STAGES:
            setattr(self, transition, Bottleneck(cin, hidden, cout, stride, folded))
            setattr(self, repeated, Repeated(cout, repeats, folded))
        self.sep = nn.Conv2d(128, 512, 1, bias=folded)
        self.sep_bn = _batch_norm(512, folded)
        self.prelu = nn.PReLU(512)
        self.GDC_dw = nn.Conv2d(512, 512, 7, groups=512, bias=folded)  # global depthwise: 7 x 7 -> 1 x 1
        self.GDC_bn = _batch_norm(512, folded)
        self.features = nn.Conv2d(512, 128, 1, bias=folded)
        self.last_bn = _batch_norm(128, folded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        for transition, repeated, *_ in STAGES:
            x = getattr(self, repeated)(getattr(self, transition)(x))
        x = self.prelu(self.sep_bn(self.sep(x)))
        return self.last_bn(self.features(self.GDC_bn(self.GDC_dw(x))))


class MobileFaceNet(Extractor):
    """128-d L2-normalised descriptors of 112 x 112 chips aligned to the ArcFace template.

    ``folded``: the batch norms are folded into the convs (the shipped weights, :func:`arcface_mbf`);
    ``folded=False`` is the original layout, whose state dict (keys ``arcface.*``) loads as published.
    """

    name = "arcface_mbf"
    # The ArcFace 5-point template at 112 px, as SFace's: the best of the candidates measured by
    # scripts/convert_arcface_mbf.py --alignments --calibrate. Leave-one-out 1-NN on ../shared/data/faces:
    # 0.9958 (478/480), as the template x 1.05 and x 1.1 (tighter); x 0.95 0.9938, x 0.9 (looser) 0.9917,
    # 3 px lower/higher 0.9917/0.9896, the 96 x 112 crop letterboxed to 112 with grey sides (how the training
    # code pads a non-square crop) 0.9938, dlib's chip 0.873. Best verification accuracy on the train/ pairs
    # below, where the differences show: 0.9831; letterboxed 0.9830, x 1.05 0.9818, x 0.95 0.9814, x 1.1
    # 0.9803, 3 px lower/higher 0.9805/0.9784, x 0.9 0.9765, dlib's chip 0.834.
    geometry = SFace.geometry
    dim = 128
    # identity scale and match threshold: core/data/calibration.json (scripts/calibrate_extractors.py)

    def __init__(self, folded: bool = True) -> None:
        super().__init__()
        self.arcface = Network(folded)
        self.to(memory_format=torch.channels_last)

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """The network's own output (N x 128), before L2 normalisation."""
        size = self.geometry.size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(f"expected N x 3 x {size} x {size} RGB chips, got {tuple(chips.shape)}")
        x = chips.to(self.arcface.sep.weight.dtype) * (1 / 127.5) - 1  # (x / 255 - 0.5) / 0.5
        return self.arcface(x.contiguous(memory_format=torch.channels_last)).flatten(1)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(chips), dim=1)


#: batch norm -> the conv it follows, where the names do not say it (``X.bn`` follows ``X.conv``)
_HEAD_CONVS = {"sep_bn": "sep", "GDC_bn": "GDC_dw", "last_bn": "features"}


def fold(state: dict[str, torch.Tensor], eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """The folded state dict (float32) of an original-layout one: each conv followed by a batch norm gets
    weight * gamma / sqrt(var + eps) and bias beta - mean * gamma / sqrt(var + eps) (computed in float64)."""
    folded = {k: v.float() for k, v in state.items() if f"{k.rpartition('.')[0]}.running_mean" not in state}
    for bn in (k.removesuffix(".running_mean") for k in state if k.endswith(".running_mean")):
        module, _, name = bn.rpartition(".")
        conv = f"{module}.{_HEAD_CONVS.get(name, 'conv')}"
        gamma, beta, mean, var = (
            state[f"{bn}.{p}"].double() for p in ("weight", "bias", "running_mean", "running_var")
        )
        scale = gamma / torch.sqrt(var + eps)
        folded[f"{conv}.weight"] = (state[f"{conv}.weight"].double() * scale.view(-1, 1, 1, 1)).float()
        folded[f"{conv}.bias"] = (beta - mean * scale).float()
    return folded


def arcface_mbf(path: str | os.PathLike[str] | None = None) -> MobileFaceNet:
    """MobileFaceNet with the shipped weights (``path``: another copy of ``arcface_mbf.fp16.pt``)."""
    fix = "reinstall cloakd" if path is None else "regenerate it with scripts/convert_arcface_mbf.py"
    model = MobileFaceNet()
    model.load_state_dict(load_state(WEIGHTS if path is None else path, WEIGHTS_DIGEST, "MobileFaceNet", fix))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
