"""A differentiable stand-in for JPEG compression (baseline libjpeg, 4:2:0), for the cloak's EOT.

Upload platforms recompress photos at quality ~70-90. The cloak is optimised through this model so that
it survives: colour conversion to YCbCr (JFIF), 2x2 chroma averaging, 8x8 DCT, quantisation with the
standard tables scaled as libjpeg scales them, and the inverse. Rounding is replaced by
``round(x) + (x - round(x))**3`` (Shin & Song 2017), which equals rounding in value up to 1/8 of a step
and passes a useful gradient. The block grid's phase relative to the region is a parameter, because a
face region rarely starts on a multiple of 8 in the recompressed photo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

_LUMA = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float32,
)
_CHROMA = torch.full((8, 8), 99.0)
_CHROMA[:4, :4] = torch.tensor(
    [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]], dtype=torch.float32
)


def quant_table(base: torch.Tensor, quality: int) -> torch.Tensor:
    """libjpeg's jpeg_quality_scaling + baseline clamp to 1..255."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return torch.clamp(torch.floor((base * scale + 50) / 100), 1, 255)


def _dct_matrix() -> torch.Tensor:
    d = torch.zeros(8, 8, dtype=torch.float64)
    for k in range(8):
        for n in range(8):
            d[k, n] = math.cos(math.pi * (2 * n + 1) * k / 16) * (math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8))
    return d.float()


_DCT = _dct_matrix()
#: the 2-D 8x8 DCT as one 64 x 64 matrix acting on row-major flattened blocks (kron(D, D)): one GEMM over
#: all blocks instead of thousands of 8 x 8 batched products
_DCT2 = torch.kron(_DCT, _DCT)


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    r = torch.round(x)
    return r + (x - r) ** 3


def _blocks_roundtrip(plane: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """DCT, quantise, dequantise, inverse DCT of N x P x H x W planes (H, W multiples of 8, centred on 0)
    with one quantisation table per image (N x 64, row-major)."""
    n, p, h, w = plane.shape
    b = plane.reshape(n, p * h // 8, 8, w // 8, 8).transpose(2, 3).reshape(n, -1, 64)
    k = _DCT2.to(plane)
    q = tables.to(plane).unsqueeze(1)
    coef = _soft_round((b @ k.T) / q) * q
    b = (coef @ k).reshape(n, p * h // 8, w // 8, 8, 8).transpose(2, 3)
    return b.reshape(n, p, h, w)


def _pad_to(x: torch.Tensor, top: int, left: int, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    bottom = (-(h + top)) % multiple
    right = (-(w + left)) % multiple
    return F.pad(x, (left, right, top, bottom), mode="replicate")


#: JFIF colour conversion (rows: Y, Cb, Cr from R, G, B) and its inverse
_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_FROM_YCC = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def jpeg_roundtrip(rgb: torch.Tensor, quality: int | Sequence[int], offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Approximate decode(encode(rgb, quality)) for N x 3 x H x W RGB on the 0-255 scale.

    ``quality``: one value, or one per image (the views of one optimisation step go through as a batch).
    ``offset`` = (dy, dx) in 0..15: where the region starts inside the 16 x 16 MCU grid.
    """
    n, _, h, w = rgb.shape
    qualities = [quality] * n if isinstance(quality, int) else list(quality)
    if len(qualities) != n:
        raise ValueError(f"{len(qualities)} qualities for {n} images")
    dy, dx = offset
    x = _pad_to(rgb, dy, dx, 16)
    ycc = torch.einsum("dc,nchw->ndhw", _TO_YCC.to(x), x)
    luma = torch.stack([quant_table(_LUMA, q).reshape(64) for q in qualities])
    chroma_q = torch.stack([quant_table(_CHROMA, q).reshape(64) for q in qualities])
    y = _blocks_roundtrip(ycc[:, :1] - 128, luma) + 128
    chroma = _blocks_roundtrip(F.avg_pool2d(ycc[:, 1:], 2), chroma_q)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    out = torch.einsum("dc,nchw->ndhw", _FROM_YCC.to(x), torch.cat([y, chroma], 1))
    return out[..., dy : dy + h, dx : dx + w].clamp(0, 255)
