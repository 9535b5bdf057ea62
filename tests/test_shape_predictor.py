"""dlib's 5-point landmark predictor in NumPy (core/detect/shape_predictor.py), against dlib itself."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from cloakd.core import align
from cloakd.core.detect.shape_predictor import dlib_pipeline_chip, load_shape_predictor
from cloakd.core.errors import ModelCorruptError, ModelMissingError


@pytest.fixture(scope="module")
def photos(data_dir):
    """One photo of each of 12 identities of faces/, as RGB arrays."""
    people = sorted(p for p in (data_dir / "faces").iterdir() if p.is_dir())[::3]
    return [np.asarray(Image.open(sorted(p.glob("*.jpg"))[1]).convert("RGB")) for p in people]


def _oracle_landmarks(dlib_oracle, image):
    """dlib's HOG box of the largest face and its 5-point predictor's landmarks."""
    rects = dlib_oracle["detector"](image, 1)
    rect = max(rects, key=lambda r: r.area())
    shape = dlib_oracle["predictor"](image, rect)
    return rect, np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)


def test_the_predictor_places_dlibs_landmarks_to_the_pixel(analyzer, dlib_oracle, photos):
    predictor = analyzer.landmarks
    for image in photos:
        rect, expected = _oracle_landmarks(dlib_oracle, image)
        found = predictor.predict(image, (rect.left(), rect.top(), rect.right(), rect.bottom()))
        # dlib returns whole pixels (rounded); ours are the unrounded values
        assert np.abs(found - expected).max() <= 0.51, (found, expected)


def test_the_predictor_reads_grey_images_like_dlib(analyzer, dlib_oracle, photos):
    grey = np.asarray(Image.fromarray(photos[0]).convert("L"))
    rect, expected = _oracle_landmarks(dlib_oracle, grey)
    found = analyzer.landmarks.predict(grey, (rect.left(), rect.top(), rect.right(), rect.bottom()))
    assert np.abs(found - expected).max() <= 0.51


def test_the_emulated_pipeline_chip_sees_the_face_as_dlibs_pipeline_does(analyzer, dlib_oracle, photos):
    """From cloakd's own detection (MTCNN), the chip dlib's pipeline would cut is found: described by the
    ResNet, it is much nearer the real pipeline's descriptor than cloakd's own chip is."""
    e = analyzer.extractor
    chip_points = align.template_in_chip(align.DLIB_5POINT_TEMPLATE, 150, 0.25)
    own, emulated = [], []
    for image in photos:
        face = max(analyzer.analyse(image), key=lambda f: float(np.prod(f.box[2:] - f.box[:2])))
        _, points = _oracle_landmarks(dlib_oracle, image)
        real = analyzer.describe(
            image, [replace(face, transform=align.ChipTransform.fit(chip_points, points, 150))], e
        )[0]
        (alternate,) = analyzer.alternate_alignments(image, face, e)
        assert alternate == dlib_pipeline_chip(analyzer.landmarks, image, face.transform, 0.25)
        via = analyzer.describe(image, [replace(face, transform=alternate)], e)[0]
        own.append(np.linalg.norm(face.descriptor - real))
        emulated.append(np.linalg.norm(via - real))
    assert np.median(emulated) < 0.5 * np.median(own), (np.median(emulated), np.median(own))


def test_extractors_of_other_geometries_have_no_alternate_alignment(analyzer, photos):
    face = analyzer.analyse(photos[0])[0]
    others = [e for e in analyzer.cloak_extractors if e.geometry.padding is None]
    assert others, "the ensemble has extractors with their own landmark templates"
    for e in others:
        assert analyzer.alternate_alignments(photos[0], face, e) == ()


def test_a_missing_or_altered_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelMissingError, match="cannot read dlib landmark model"):
        load_shape_predictor(tmp_path / "absent.dat")
    from cloakd.core.assets import package_file
    from cloakd.core.detect.shape_predictor import MODEL_FILE, MODEL_PACKAGE

    data = bytearray(package_file(MODEL_PACKAGE, MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged = tmp_path / "shape_predictor_5_face_landmarks.dat"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelCorruptError, match="not the expected model.*unmodified copy"):
        load_shape_predictor(damaged)
