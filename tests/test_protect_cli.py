"""`cloakd protect` says what it did to each photo, and pictures of the cloak (`--preview`, `cloakd preview`)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from cloakd.core.photo.decode import decode_file
from cloakd.core.preview import SMALL_FACE
from cloakd.daemon.cli import main
from cloakd.daemon.references import Described, ReferenceStore
from cloakd.daemon.targets import TargetStore


def _enrol_a_stranger(state, user: str) -> None:
    """References of nobody in the test photos (random descriptors of one 'person'), and a target class."""
    rng = np.random.default_rng(11)
    base = rng.normal(size=128).astype(np.float32)
    base *= 0.5 / np.linalg.norm(base)
    photos = []
    for i in range(3):
        d = (base + rng.normal(scale=0.01, size=128)).astype(np.float32)
        photos.append(Described(f"ref{i}.jpg", hashlib.sha256(d.tobytes()).hexdigest(), d, 1))
    refs = ReferenceStore(state, "dlib_resnet").enrol(user, photos, 0.6)
    TargetStore(state).choose(user, refs.descriptors)


def test_others_leave_without_the_users_face_says_nothing_was_cloaked(data_dir, tmp_path, capsys):
    state, out = tmp_path / "state", tmp_path / "out"
    _enrol_a_stranger(state, "zoe")
    group = data_dir / "groups" / "dlib_2008_002470.jpg"
    assert (
        main(
            ["protect", str(group), "--user", "zoe", "--others", "leave", "--state-dir", str(state), "--out", str(out)]
        )
        == 0
    )
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(
        f"{group} -> {out / group.name}: 6 faces, none cloaked (none is zoe's and --others leave): "
        "metadata stripped only"
    ), line
    assert "protected" not in line


def _panel_pixels(picture: Image.Image, colour: tuple[int, int, int]) -> int:
    return int(np.all(np.asarray(picture) == colour, axis=2).sum())


@pytest.mark.parametrize("face_width, zoom", [(160, 1), (60, 3)])
def test_the_picture_shows_original_cloaked_and_the_amplified_difference(face_width, zoom):
    from cloakd.core.preview import GAIN, ShownFace, crop_box, picture

    assert (face_width < SMALL_FACE) == (zoom == 3)
    original = np.empty((400, 500, 3), np.uint8)
    original[:] = (10, 200, 60)  # a colour no grey label text makes
    cloaked = original.copy()
    box = (200.0, 100.0, 200.0 + face_width, 100.0 + face_width)
    cloaked[120:140, 220:240, 0] += 3  # a 20 x 20 patch inside the face, red channel only
    shown = picture(original, cloaked, [ShownFace(box, "face 1: DSSIM 0.0100, feature shift 0.500")], "test")
    left, top, right, bottom = crop_box(original.shape, box)
    assert shown.width >= 3 * (right - left) * zoom and shown.height > (bottom - top) * zoom
    area = 20 * 20 * zoom * zoom
    assert _panel_pixels(shown, (3 * GAIN, 0, 0)) == area  # the difference panel, amplified
    assert _panel_pixels(shown, (13, 200, 60)) == area  # the cloaked panel
    assert _panel_pixels(shown, (10, 200, 60)) == 2 * (right - left) * (bottom - top) * zoom * zoom - area


def test_without_a_cloaked_face_the_whole_photo_is_shown_scaled_down():
    from cloakd.core.preview import WHOLE_PHOTO_SIDE, picture

    original = np.zeros((1000, 2000, 3), np.uint8)
    shown = picture(original, original, [], "no face")
    assert 3 * WHOLE_PHOTO_SIDE <= shown.width < 3 * WHOLE_PHOTO_SIDE + 100


@pytest.mark.slow
def test_protect_preview_and_the_preview_command_make_the_same_picture(analyzer, data_dir, tmp_path, capsys):
    from cloakd.daemon.cli.preview import faces_shown

    photo = data_dir / "faces" / "Bill_Gates" / "Bill_Gates_0003.jpg"
    out, pictures = tmp_path / "out", tmp_path / "pictures"
    assert main(["protect", str(photo), "--out", str(out), "--preview", str(pictures), "--mode", "low"]) == 0
    assert f"preview: {pictures / 'Bill_Gates_0003-preview.png'}" in capsys.readouterr().out
    made = Image.open(pictures / "Bill_Gates_0003-preview.png")
    again = tmp_path / "again.png"
    assert main(["preview", str(photo), str(out / photo.name), "--out", str(again)]) == 0
    remade = Image.open(again)
    assert made.format == remade.format == "PNG" and made.size == remade.size
    before, after = decode_file(photo).rgb, decode_file(out / photo.name).rgb
    [face] = faces_shown(analyzer, before, after)  # the one cloaked face, with its measures
    assert face.box[2] - face.box[0] < SMALL_FACE
    shift = float(re.search(r"feature shift (\d\.\d+)", face.label)[1])
    assert shift >= 0.25  # what protect verified
    assert made.width >= 3 * 3 * (face.box[2] - face.box[0])  # three panels, at 3x
    assert main(["preview", str(photo), str(out / photo.name), "--out", str(again)]) == 2  # never replaced
    assert "exists already" in capsys.readouterr().err
    assert "over the region shown" in face.label  # and protect names its own region
    other = data_dir / "faces" / "Bill_Gates" / "Bill_Gates_0004.jpg"  # same size, another picture
    third = tmp_path / "third.png"
    assert main(["preview", str(other), str(out / photo.name), "--out", str(third)]) == 2
    err = capsys.readouterr().err
    assert "not the same picture before and after cloaking" in err and "--force" in err and not third.exists()
    assert main(["preview", str(other), str(out / photo.name), "--out", str(third), "--force"]) == 0
    assert third.exists()


@pytest.fixture(scope="module")
def dog_and_woman(data_dir, tmp_path_factory):
    """`cloakd protect` without --user on a folder: the rug beside a dog (a false detection) and a snapshot
    of a woman, with a sub-folder that holds a photo without any detection. (stdout, stderr, exit, out)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("dog_and_woman")
    (folder / "more").mkdir()
    for name, where in [("kodak-dc240.jpg", "."), ("sony-cybershot.jpg", "."), ("Canon_40D.jpg", "more")]:
        (folder / where / name).write_bytes((data_dir / "metadata" / name).read_bytes())
    out = folder / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["protect", str(folder), "--recursive", "--mode", "low", "--out", str(out)])
    return stdout.getvalue(), stderr.getvalue(), code, out, folder


def test_a_doubtful_detection_is_listed_never_cloaked_and_the_target_comes_from_a_clear_face(dog_and_woman):
    stdout, stderr, code, _, folder = dog_and_woman
    assert code == 0, stderr
    dog = next(line for line in stdout.splitlines() if line.startswith(str(folder / "kodak-dc240.jpg")))
    assert "no face found (1 detection not counted as a face): metadata stripped only" in dog
    assert "  not counted as a face, not cloaked (score 0.729 at 224,367-250,397): the recogniser" in stdout
    target = next(line for line in stderr.splitlines() if line.startswith("target class"))
    assert f"chosen from the faces in {folder / 'sony-cybershot.jpg'} for this run only" in target


def test_without_user_faces_are_numbered_and_the_target_class_is_explained(dog_and_woman):
    stdout, stderr, _, _, _ = dog_and_woman
    assert re.search(r"  face 1 \(score 1.000, low\): DSSIM 0\.\d{4} over the cloaked region, moved", stdout)
    assert "user" not in stdout
    assert "target class (the public identity your faces are made to look like to a recogniser): " in stderr


def test_protect_takes_a_folder_mirrors_it_and_ends_with_one_summary_line(dog_and_woman):
    stdout, _, _, out, _ = dog_and_woman
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["kodak-dc240.jpg", "more/Canon_40D.jpg", "sony-cybershot.jpg"]
    assert re.fullmatch(r"3 photos: 1 protected, 2 metadata only, 0 failed, \d+\.\d s", stdout.splitlines()[-1])


def test_no_target_class_from_a_face_below_the_stricter_bar(data_dir, tmp_path, capsys):
    """Britney_Spears_0001's face counts as a face (it is cloaked) but scores 0.956: no target class from it."""
    photo = data_dir / "faces" / "Britney_Spears" / "Britney_Spears_0001.jpg"
    assert main(["protect", str(photo), "--mode", "low", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "no face in these photos is clear enough to choose one from" in captured.err
    assert "chosen from" not in captured.err
    assert "  face 1 (score 0.956, low): DSSIM" in captured.out and "to target" not in captured.out
