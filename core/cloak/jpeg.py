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


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    r = torch.round(x)
    return r + (x - r) ** 3


def _blocks_roundtrip(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT, quantise, dequantise, inverse DCT of an N x H x W plane (H, W multiples of 8, centred on 0)."""
    n, h, w = plane.shape
    b = plane.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    d = _DCT.to(plane)
    coef = d @ b @ d.T
    q = table.to(plane)
    coef = _soft_round(coef / q) * q
    b = d.T @ coef @ d
    return b.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _pad_to(x: torch.Tensor, top: int, left: int, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    bottom = (-(h + top)) % multiple
    right = (-(w + left)) % multiple
    return F.pad(x, (left, right, top, bottom), mode="replicate")


def jpeg_roundtrip(rgb: torch.Tensor, quality: int, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Approximate decode(encode(rgb, quality)) for N x 3 x H x W RGB on the 0-255 scale.

    ``offset`` = (dy, dx) in 0..15: where the region starts inside the 16 x 16 MCU grid.
    """
    n, _, h, w = rgb.shape
    dy, dx = offset
    x = _pad_to(rgb, dy, dx, 16)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    y = _blocks_roundtrip(y - 128, quant_table(_LUMA, quality)) + 128
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    cq = quant_table(_CHROMA, quality)
    chroma = torch.stack([_blocks_roundtrip(chroma[:, i], cq) for i in range(2)], 1)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0], chroma[:, 1]
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return out[..., dy : dy + h, dx : dx + w].clamp(0, 255)
