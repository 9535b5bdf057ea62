"""``cloakd preview ORIGINAL CLOAKED --out F.png``, and the same picture for ``cloakd protect --preview DIR``.

The picture itself is core/preview.py (arrays in, image out); here the photos are read and measured and
the PNG is written. Both ways measure alike, from the two photos' pixels: the faces found in the original
whose descriptor moved by at least CLOAKED_SHIFT in the cloaked photo (re-encoding alone moves a face
about 0.01-0.03; protect requires at least 0.25 of a cloaked face), each labelled with the DSSIM of the
region shown and its feature shift (the descriptor distance between the original and the cloaked face,
at the original's alignment).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cloakd.core.errors import CloakdError
from cloakd.core.preview import ShownFace, crop_box, picture

from .exits import Exit
from .models import load_analyzer
from .options import add_command, output_folder

CLOAKED_SHIFT = 0.1
#: whole-photo DSSIM above which two photos are not one picture before and after cloaking: a cloak changes
#: only the faces (max mode: <= 0.05 in a face's region, less over the photo; JPEG 75 alone 0.001), while two
#: photos of the same person and size differ by 0.33-0.35 (LFW) and noise of sigma 8 gives 0.17
SAME_PICTURE_DSSIM = 0.1
#: how the preview names the region its DSSIM is measured over (protect names its own: the cloak's region)
REGION_SHOWN = "over the region shown"


def register(sub) -> None:
    p = add_command(
        sub,
        "preview",
        summary="a picture of what a cloak did: original | cloaked | difference",
        description="Make a PNG that shows, around each cloaked face, the original photo, the cloaked "
        "one and their difference amplified, labelled with the DSSIM and the feature "
        "shift. Faces narrower than 100 pixels are shown three times larger. 'cloakd "
        "protect --preview DIR' makes the same picture for every photo it protects.",
        example="cloakd preview holiday.jpg ready/holiday.jpg --out holiday-preview.png",
    )
    p.add_argument("original", type=Path, metavar="ORIGINAL", help="the photo before cloaking")
    p.add_argument("cloaked", type=Path, metavar="CLOAKED", help="the same photo after cloaking")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the PNG to write (never replaced)")
    p.add_argument(
        "--force",
        action="store_true",
        help=f"make the picture even when the two photos differ too much to be one picture before and after "
        f"cloaking (DSSIM over the whole photo above {SAME_PICTURE_DSSIM})",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from cloakd.core.photo.decode import decode_file
    from cloakd.daemon.files import write_new

    original, cloaked = decode_file(args.original).rgb, decode_file(args.cloaked).rgb
    if original.shape != cloaked.shape:
        raise CloakdError(
            f"{args.original} is {original.shape[1]}x{original.shape[0]} but {args.cloaked} is "
            f"{cloaked.shape[1]}x{cloaked.shape[0]}: not the same photo before and after cloaking"
        )
    whole = _dssim(original, cloaked)
    if whole > SAME_PICTURE_DSSIM and not args.force:
        raise CloakdError(
            f"{args.original} and {args.cloaked} differ by DSSIM {whole:.3f} over the whole photo (a cloak changes "
            f"only the faces: below {SAME_PICTURE_DSSIM}): not the same picture before and after cloaking; "
            "fix: check the two paths, or pass --force to picture them anyway"
        )
    png = render(load_analyzer(), original, cloaked, f"{args.original.name} -> {args.cloaked}")
    output_folder(args.out.parent)
    try:
        write_new(args.out, png)
    except FileExistsError:
        raise CloakdError(f"{args.out} exists already; fix: choose another name for --out") from None
    print(f"{args.out}: preview of {args.cloaked}")
    return Exit.OK


def render(
    analyzer, original: np.ndarray, cloaked: np.ndarray, title: str, modes: Sequence[tuple[Sequence[float], str]] = ()
) -> bytes:
    """The preview PNG of ``cloaked`` against ``original`` (RGB arrays). ``modes``: (box, mode) of the faces
    a protect run cloaked, to name each face's mode."""
    shown = faces_shown(analyzer, original, cloaked, modes)
    buffer = io.BytesIO()
    picture(original, cloaked, shown, title).save(buffer, "PNG")
    return buffer.getvalue()


def faces_shown(
    analyzer, original: np.ndarray, cloaked: np.ndarray, modes: Sequence[tuple[Sequence[float], str]] = ()
) -> list[ShownFace]:
    """The cloaked faces (see the module docstring), each with its label."""
    faces = analyzer.analyse(original)
    if not faces:
        return []
    after = analyzer.describe_chips(analyzer.chips(cloaked, faces))
    shown = []
    for number, (face, descriptor) in enumerate(zip(faces, after), 1):
        shift = float(np.linalg.norm(descriptor - face.descriptor))
        if shift < CLOAKED_SHIFT:
            continue
        left, top, right, bottom = crop_box(original.shape, face.box)
        dssim = _dssim(original[top:bottom, left:right], cloaked[top:bottom, left:right])
        mode = next((f", mode {m}" for box, m in modes if _contains(box, face.box)), "")
        label = f"face {number}{mode}: DSSIM {dssim:.4f} {REGION_SHOWN}, feature shift {shift:.3f}"
        shown.append(ShownFace(tuple(float(v) for v in face.box), label))
    return shown


def _contains(box: Sequence[float], other: Sequence[float]) -> bool:
    """Whether ``box`` holds the centre of ``other``."""
    cx, cy = (other[0] + other[2]) / 2, (other[1] + other[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def _dssim(a: np.ndarray, b: np.ndarray) -> float:
    import torch

    from cloakd.core.cloak.ssim import dssim_large

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float()  # a copy: decoded pixels are read-only

    return dssim_large(tensor(a), tensor(b))
