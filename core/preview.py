"""A picture of what a cloak did, for people to judge it: original | cloaked | difference, per cloaked face.

Pure: two RGB arrays of the same photo (before and after) and the faces to show, in; one image out. Each
face gets a row of three panels cut around it: the original, the cloaked photo, and the absolute
difference amplified ``GAIN`` times (black: unchanged). Panels are at 100 % so the cloak's texture is seen
as it is; faces narrower than ``SMALL_FACE`` pixels are shown ``ZOOM`` times larger (nearest neighbour:
each pixel a square); a very large face is cut to ``MAX_CROP`` pixels around its centre. Without a face,
the row shows the whole photo, scaled down to fit. Labels use Pillow's default font.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAIN = 10
SMALL_FACE = 100
ZOOM = 3
MARGIN = 0.35  # of the face box's size, on every side
MAX_CROP = 768
WHOLE_PHOTO_SIDE = 512
GAP = 8
FONT_SIZE = 14


@dataclass(frozen=True)
class ShownFace:
    """A face to show: its box (x1, y1, x2, y2) in photo pixels and the line that describes it."""

    box: tuple[float, float, float, float]
    label: str


def crop_box(shape: tuple[int, ...], box: Sequence[float]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) around a face box: its margin added, at most MAX_CROP a side, in the photo."""
    h, w = shape[:2]
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w = min((x2 - x1) * (0.5 + MARGIN), MAX_CROP / 2)
    half_h = min((y2 - y1) * (0.5 + MARGIN), MAX_CROP / 2)
    left, top = max(int(round(cx - half_w)), 0), max(int(round(cy - half_h)), 0)
    right, bottom = min(int(round(cx + half_w)), w), min(int(round(cy + half_h)), h)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def zoom_for(box: Sequence[float]) -> int:
    return ZOOM if box[2] - box[0] < SMALL_FACE else 1


def difference(original: np.ndarray, cloaked: np.ndarray) -> np.ndarray:
    """|cloaked - original| per channel, times GAIN, clipped to 0-255."""
    delta = np.abs(cloaked.astype(np.int16) - original.astype(np.int16)) * GAIN
    return np.clip(delta, 0, 255).astype(np.uint8)


def picture(original: np.ndarray, cloaked: np.ndarray, faces: Sequence[ShownFace], title: str) -> Image.Image:
    """The preview of ``cloaked`` against ``original`` (H x W x 3 uint8 each, same size) for ``faces``."""
    if original.shape != cloaked.shape:
        raise ValueError(f"the two photos differ in size: {original.shape[:2]} and {cloaked.shape[:2]}")
    rows = [_face_row(original, cloaked, f) for f in faces] or [_whole_photo_row(original, cloaked)]
    return _compose(title, rows)


def _face_row(original: np.ndarray, cloaked: np.ndarray, face: ShownFace) -> tuple[str, list[Image.Image]]:
    left, top, right, bottom = crop_box(original.shape, face.box)
    zoom = zoom_for(face.box)
    a, b = original[top:bottom, left:right], cloaked[top:bottom, left:right]
    panels = [Image.fromarray(p) for p in (a, b, difference(a, b))]
    if zoom != 1:
        panels = [p.resize((p.width * zoom, p.height * zoom), Image.NEAREST) for p in panels]
    return f"{face.label} (shown at {zoom * 100} %)", panels


def _whole_photo_row(original: np.ndarray, cloaked: np.ndarray) -> tuple[str, list[Image.Image]]:
    h, w = original.shape[:2]
    scale = min(1.0, WHOLE_PHOTO_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    panels = [Image.fromarray(p).resize(size, Image.BOX) for p in (original, cloaked, difference(original, cloaked))]
    return f"no cloaked face: the whole photo (shown at {scale * 100:.0f} %)", panels


def _compose(title: str, rows: list[tuple[str, list[Image.Image]]]) -> Image.Image:
    font = ImageFont.load_default(size=FONT_SIZE)
    line = font.getbbox("Ag")[3] + 4
    headings = ("original", "cloaked", f"difference x{GAIN}")
    width = max(sum(p.width for p in panels) + GAP * 4 for _, panels in rows)
    width = max(width, int(font.getlength(title)) + 2 * GAP, *(int(font.getlength(t)) + 2 * GAP for t, _ in rows))
    height = GAP + line + sum(2 * line + max(p.height for p in panels) + 2 * GAP for _, panels in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, GAP), title, fill="black", font=font)
    y = GAP + line
    for label, panels in rows:
        y += GAP
        draw.text((GAP, y), label, fill="black", font=font)
        y += line
        x = GAP
        for heading, panel in zip(headings, panels):
            draw.text((x, y), heading, fill=(90, 90, 90), font=font)
            canvas.paste(panel, (x, y + line))
            x += panel.width + GAP
        y += line + max(p.height for p in panels) + GAP
    return canvas
