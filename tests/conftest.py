"""Shared test fixtures. Test data is read from ../shared/data (never copied into the repo).

Models are loaded once per test session (session-scoped fixtures below).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see daemon/cli/__init__.py)

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLOAKD_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
#: the installed console command, beside the interpreter that runs the tests
CLOAKD = Path(sys.executable).with_name("cloakd")


@pytest.fixture(scope="session")
def owner():
    """The second unix account the service tests act as (tests/servicekit.py; they run as root)."""
    from servicekit import second_account

    return second_account()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test data not found at {DATA} (set CLOAKD_TEST_DATA)")
    return DATA


@pytest.fixture(scope="session")
def dlib_oracle():
    """dlib's own pipeline (test-only oracle): HOG detector, 5-point predictor, ResNet descriptor."""
    dlib = pytest.importorskip("dlib")
    from cloakd.core.assets import package_file

    models = "models/{}"
    return {
        "dlib": dlib,
        "detector": dlib.get_frontal_face_detector(),
        "predictor": dlib.shape_predictor(
            str(package_file("face_recognition_models", models.format("shape_predictor_5_face_landmarks.dat")))
        ),
        "resnet": dlib.face_recognition_model_v1(
            str(package_file("face_recognition_models", models.format("dlib_face_recognition_resnet_model_v1.dat")))
        ),
    }


@pytest.fixture(scope="session")
def resnet():
    """dlib's face-recognition ResNet (torch port, extractor "dlib_resnet"): eval mode, frozen weights."""
    from cloakd.core.extractors import load_extractor

    return load_extractor("dlib_resnet")


@pytest.fixture(scope="session")
def analyzer():
    """cloakd's own pipeline (MTCNN + alignment + dlib ResNet), loaded once."""
    from cloakd.core.faces import FaceAnalyzer

    return FaceAnalyzer()


@pytest.fixture(scope="session")
def lfw_descriptors(analyzer, data_dir):
    """(identity names, paths, descriptors) of the central face of every photo in faces/, computed once."""
    import numpy as np
    from PIL import Image

    names, paths, descs = [], [], []
    for path in sorted((data_dir / "faces").glob("*/*.jpg")):
        img = np.array(Image.open(path).convert("RGB"))
        faces = analyzer.analyse(img)
        centre = np.array(img.shape[1::-1]) / 2
        face = min(faces, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
        names.append(path.parent.name)
        paths.append(path)
        descs.append(face.descriptor)
    return np.array(names), paths, np.stack(descs)
