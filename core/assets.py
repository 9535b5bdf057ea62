"""Locate model files shipped inside installed Python packages, without importing those packages.

``face_recognition_models/__init__`` imports pkg_resources (gone from current setuptools) and
``facenet_pytorch/__init__`` imports torchvision (a CUDA build that cannot load with CPU torch), so both are
found with ``importlib.util.find_spec``, which does not execute ``__init__``. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelMissingError

_INSTALL_HINT = {
    "face_recognition_models": "pip install face-recognition-models",
    "facenet_pytorch": "pip install --no-deps facenet-pytorch==2.6.0",
}


def package_file(package: str, relative: str) -> Path:
    """Return the path of ``relative`` inside installed ``package``; ModelMissingError if absent."""
    hint = _INSTALL_HINT.get(package, f"pip install {package}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(f"model package {package!r} is not installed (install it with: {hint})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelMissingError(f"model file {path} is missing (reinstall with: {hint})")
    return path
