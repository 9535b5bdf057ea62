"""Read a trained dlib DNN from its ``.dat`` file (dlib's own binary serialisation) into NumPy arrays.

dlib itself is only a test oracle here, so the file is parsed by this module. The reader is strict: it
walks the whole layout, checks every version number, layer type and tensor shape it meets, and must end
exactly at end of file. Anything else (a truncated download, a damaged byte, a different network or
format version) is a ``ModelCorruptError`` naming the file, the byte offset and what was wrong, never a
struct/index error. Only the layer types and versions that dlib's face-recognition ResNet uses are
understood; others are rejected by name rather than guessed at.

Encodings (dlib/serialize.h, float_details.h, dnn/tensor.h):

- integer: a control byte (low nibble = byte count 1..8, bit 0x80 = negative), then the magnitude,
  little-endian. ``01 00`` is 0, ``02 00 01`` is 256, ``81 1c`` is -28.
- float/double: packed int64 mantissa and packed int16 exponent, value = mantissa * 2**exponent;
  exponents 32000/32001/32002 stand for +inf/-inf/NaN.
- bool: ASCII ``'1'`` or ``'0'``. string: packed length, then the bytes.
- tensor: version 2, packed n, k, nr, nc, then n*k*nr*nc raw little-endian float32 (NCHW).
- alias_tensor (a view into a layer's parameter tensor): version 1 and its four dimensions, no data.

Layout: the loss layer (version, type, margin, threshold), then one version int per layer wrapper from
the output down (add_layer = 2, tag/skip = 1, the bottom add_layer holding the input = 3), then the input
layer, then each add_layer's details followed by its bookkeeping trailer, from the input up. Tag and skip
layers write nothing but their version, which is why the forward order can be rebuilt from the version
list alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Union

import numpy as np

from ..errors import ModelCorruptError, ModelMissingError


@dataclass(frozen=True, eq=False)
class Conv:
    """con_: ``weight`` is (out, in, kh, kw), torch's OIHW; dlib convolutions always carry a bias."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, eq=False)
class Affine:
    """affine_ in CONV mode: y = gamma * x + beta per channel (dlib's folded batch norm)."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Relu:
    """relu_: no parameters."""


@dataclass(frozen=True)
class Pool:
    """max_pool_/avg_pool_: ``size`` (0, 0) means dlib's pool-everything (mean over the whole plane)."""

    kind: str  # "max" or "avg"
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    """add_prev_: adds the output of the tagged layer; which tag is fixed by the network type, not the file."""


@dataclass(frozen=True, eq=False)
class Fc:
    """fc_ without bias: ``weight`` is (out, in), torch's Linear layout (dlib stores it transposed)."""

    weight: np.ndarray


@dataclass(frozen=True)
class Tag:
    """A tag or skip layer: the file stores only its version, so the two cannot be told apart."""


Layer = Union[Conv, Affine, Relu, Pool, AddPrev, Fc, Tag]


@dataclass(frozen=True, eq=False)
class DatNetwork:
    """Everything a dlib DNN file holds that inference needs, layers in forward order (input first)."""

    loss: str
    margin: float
    dist_thresh: float
    input_type: str
    input_mean: tuple[float, float, float]  # RGB means dlib subtracts before dividing by 256
    input_size: tuple[int, int]  # (rows, columns) the input layer requires
    layers: tuple[Layer, ...]


_ADD_LAYER, _TAG_OR_SKIP, _BOTTOM_ADD_LAYER = 2, 1, 3
_FLOAT_SPECIALS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
_FIX = "re-download or reinstall the file"


class _Reader:
    """A cursor over the file's bytes; every failure becomes a ModelCorruptError with the byte offset."""

    def __init__(self, data: bytes, source: str, fix: str) -> None:
        self.data = data
        self.source = source
        self.fix = fix
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> NoReturn:
        offset = self.pos if at is None else at
        raise ModelCorruptError(
            f"dlib model file {self.source} is damaged or not a supported dlib network: {what} "
            f"at byte {offset} of {len(self.data)} ({self.fix})"
        )

    def skip(self, n: int) -> int:
        """Move past ``n`` bytes that must exist; returns where they start."""
        if n > len(self.data) - self.pos:
            self.fail(f"file ends early (needed {n} more bytes)")
        start = self.pos
        self.pos += n
        return start

    def take(self, n: int) -> bytes:
        start = self.skip(n)
        return self.data[start : self.pos]

    def integer(self, *, signed: bool = True, size: int = 8) -> int:
        start = self.pos
        control = self.take(1)[0]
        nbytes = control & 0x0F
        if control & 0x70 or not 1 <= nbytes <= size:
            self.fail(f"invalid integer control byte 0x{control:02x}", start)
        if control & 0x80 and not signed:
            self.fail("negative value where an unsigned integer belongs", start)
        value = int.from_bytes(self.take(nbytes), "little")
        return -value if control & 0x80 else value

    def count(self) -> int:
        return self.integer(signed=False)

    def floating(self) -> float:
        start = self.pos
        mantissa = self.integer()
        exponent = self.integer(size=2)
        if exponent in _FLOAT_SPECIALS:
            return _FLOAT_SPECIALS[exponent]
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            self.fail("float out of range", start)

    def boolean(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            self.fail(f"invalid bool byte 0x{byte[0]:02x}", self.pos - 1)
        return byte == b"1"

    def string(self) -> str:
        start = self.pos
        raw = self.take(self.count())
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            self.fail("non-ASCII string", start)

    def version(self, expected: int, what: str) -> None:
        start = self.pos
        found = self.integer()
        if found != expected:
            self.fail(f"{what} has version {found}, expected {expected}", start)

    def tensor(self) -> np.ndarray:
        """A tensor's float32 values as a read-only NCHW view into the file's bytes (no copy)."""
        self.version(2, "tensor")
        shape = tuple(self.count() for _ in range(4))
        size = math.prod(shape)
        offset = self.skip(4 * size)
        return np.frombuffer(self.data, dtype="<f4", count=size, offset=offset).reshape(shape)

    def alias_shape(self) -> tuple[int, int, int, int]:
        self.version(1, "alias_tensor")
        return tuple(self.count() for _ in range(4))  # type: ignore[return-value]

    def multipliers(self) -> None:
        """Learning-rate and weight-decay multipliers: training-only, read and dropped."""
        for _ in range(4):
            self.floating()

    def end(self) -> None:
        if self.pos != len(self.data):
            self.fail(f"{len(self.data) - self.pos} unexpected bytes after the network")


def read_dat(path: str | Path, sha256: str | None = None, fix: str = _FIX) -> DatNetwork:
    """Parse the dlib DNN file at ``path``; with ``sha256``, first check the file is exactly that one.

    ``fix`` tells the user how to repair a damaged file (e.g. which package to reinstall); it ends every
    error message.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelMissingError(f"cannot read dlib model file {path}: {exc.strerror or exc} ({fix})") from None
    if sha256 is not None and (digest := hashlib.sha256(data).hexdigest()) != sha256:
        raise ModelCorruptError(
            f"dlib model file {path} is not the expected model: sha256 {digest[:16]}... "
            f"({len(data)} bytes), expected {sha256[:16]}...: damaged or replaced ({fix})"
        )
    return parse_dat(data, str(path), fix)


def parse_dat(data: bytes, source: str = "<bytes>", fix: str = _FIX) -> DatNetwork:
    """Parse a whole dlib DNN file held in ``data``; ``source`` names it in error messages."""
    r = _Reader(data, source, fix)
    r.version(1, "loss layer")
    loss = r.string()
    if loss != "loss_metric_2":
        r.fail(f"unsupported loss layer {loss!r}")
    margin, dist_thresh = r.floating(), r.floating()

    wrappers = []  # from the output down, without the bottom add_layer
    while (kind := r.integer()) != _BOTTOM_ADD_LAYER:
        if kind not in (_ADD_LAYER, _TAG_OR_SKIP):
            r.fail(f"unexpected layer wrapper version {kind}")
        wrappers.append(kind)

    input_type = r.string()
    if input_type != "input_rgb_image_sized":
        r.fail(f"unsupported input layer {input_type!r}")
    input_mean = (r.floating(), r.floating(), r.floating())
    input_size = (r.count(), r.count())

    layers: list[Layer] = [_layer(r)]
    _trailer(r, bottom=True)
    for kind in reversed(wrappers):
        if kind == _TAG_OR_SKIP:
            layers.append(Tag())
        else:
            layers.append(_layer(r))
            _trailer(r, bottom=False)
    r.end()
    return DatNetwork(loss, margin, dist_thresh, input_type, input_mean, input_size, tuple(layers))


def _trailer(r: _Reader, *, bottom: bool) -> None:
    """add_layer bookkeeping after its details: 3 state flags and 3 (normally empty) gradient tensors."""
    for _ in range(3):
        r.boolean()
    for _ in range(3):
        r.tensor()
    if bottom:
        r.count()  # sample_expansion_factor


def _layer(r: _Reader) -> Layer:
    start = r.pos
    name = r.string()
    parse = _LAYER_PARSERS.get(name)
    if parse is None:
        r.fail(f"unsupported layer type {name!r}", start)
    return parse(r)


def _conv(r: _Reader) -> Conv:
    start = r.pos
    params = r.tensor()
    filters, rows, cols = r.count(), r.count(), r.count()
    stride = (r.integer(), r.integer())
    padding = (r.integer(), r.integer())
    weight_shape, bias_shape = r.alias_shape(), r.alias_shape()
    r.multipliers()
    out, inp, kh, kw = weight_shape
    if (
        (out, kh, kw) != (filters, rows, cols)
        or bias_shape != (1, filters, 1, 1)
        or params.size != out * inp * kh * kw + out
        or min(stride) < 1
        or min(padding) < 0
    ):
        r.fail(f"inconsistent con_4 layer ({filters} filters {rows}x{cols}, weights {weight_shape})", start)
    flat = params.reshape(-1)
    return Conv(flat[:-out].reshape(weight_shape), flat[-out:], stride, padding)


def _affine(r: _Reader) -> Affine:
    start = r.pos
    params = r.tensor().reshape(-1)
    gamma_shape, beta_shape = r.alias_shape(), r.alias_shape()
    mode = r.integer()
    channels = params.size // 2
    shapes_ok = gamma_shape == beta_shape == (1, channels, 1, 1) and params.size == 2 * channels
    if mode != 0 or not shapes_ok:
        r.fail(f"unsupported affine_ layer (mode {mode}, gamma {gamma_shape})", start)
    return Affine(params[:channels], params[channels:])


def _relu(r: _Reader) -> Relu:
    return Relu()


def _pool(kind: str):
    def parse(r: _Reader) -> Pool:
        start = r.pos
        size = (r.integer(), r.integer())
        stride = (r.integer(), r.integer())
        padding = (r.integer(), r.integer())
        if min(size) < 0 or min(stride) < 1 or min(padding) < 0:
            r.fail(f"invalid {kind} pool window {size} stride {stride} padding {padding}", start)
        return Pool(kind, size, stride, padding)

    return parse


def _add_prev(r: _Reader) -> AddPrev:
    return AddPrev()


def _fc(r: _Reader) -> Fc:
    start = r.pos
    outputs, inputs = r.count(), r.count()
    params = r.tensor()
    weight_shape, bias_shape = r.alias_shape(), r.alias_shape()
    bias_mode = r.integer()
    r.multipliers()
    if bias_mode != 1 or bias_shape != (0, 0, 0, 0):
        r.fail(f"fc_2 layer with a bias (mode {bias_mode}) is not supported", start)
    if params.shape != (inputs, outputs, 1, 1) or weight_shape != params.shape:
        r.fail(f"inconsistent fc_2 layer ({inputs} -> {outputs}, weights {params.shape})", start)
    return Fc(params.reshape(inputs, outputs).T)


_LAYER_PARSERS = {
    "con_4": _conv,
    "affine_": _affine,
    "relu_": _relu,
    "max_pool_2": _pool("max"),
    "avg_pool_2": _pool("avg"),
    "add_prev_": _add_prev,
    "fc_2": _fc,
}
