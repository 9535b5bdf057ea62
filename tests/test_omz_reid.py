"""Intel's face-reidentification-retail-0095 as cloakd's torch module: equal to OpenVINO running Intel's IR,
identifies real faces through cloakd's own detection and alignment, differentiable, strict about its file."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
import torch

from cloakd.core.detect import FaceDetector
from cloakd.core.errors import ModelCorruptError, ModelMissingError
from cloakd.core.extractors import load_extractor
from cloakd.core.extractors.omz_reid import REFERENCE_POINTS, WEIGHTS_FILE, omz_reid
from conftest import REPO

SOURCE = REPO.parent / "shared" / "surrogates" / "omz-face-reid-0095"
#: One FP16 step at 1.0 (10-bit mantissa): rounding to FP16 anywhere in the network would already leave
#: errors of this order, and a wrong blob or layer far larger ones. Both sides compute in float32 with the
#: same FP16 weight values, so they differ by float32 summation order only (measured on the 480 faces: 3e-7
#: on unit descriptors, 5e-6 on raw values up to 5).
FP16_STEP = 2.0**-10


def _script():
    """scripts/convert_omz_reid.py, which holds the IR reader, the OpenVINO oracle and the chip maker."""
    spec = importlib.util.spec_from_file_location("convert_omz_reid", REPO / "scripts" / "convert_omz_reid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def convert():
    return _script()


@pytest.fixture(scope="module")
def model():
    return load_extractor("omz_reid")


@pytest.fixture(scope="module")
def faces(convert, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """(identity labels, 128 x 128 RGB chips) of the central face of every photo of faces/, found by
    cloakd's MTCNN and aligned to this model's template."""
    photos = sorted((data_dir / "faces").glob("*/*.jpg"))
    used, chips = convert.central_chips(photos, FaceDetector())
    assert len(used) == len(photos) == 480
    return np.array([p.parent.name for p in used]), chips


def _as_input(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()


def test_identifies_lfw_faces_leave_one_out(model, faces, convert):
    labels, chips = faces
    descriptors = convert.describe(model, chips)
    assert descriptors.shape == (480, 256)
    assert np.allclose(np.linalg.norm(descriptors, axis=1), 1, atol=1e-5)
    similarity = descriptors @ descriptors.T  # unit vectors: nearest = most similar
    np.fill_diagonal(similarity, -np.inf)
    accuracy = (labels[similarity.argmax(1)] == labels).mean()
    assert accuracy >= 0.99  # measured 478/480


def test_equals_openvino_on_intels_ir(model, faces, convert):
    pytest.importorskip("openvino")
    if not SOURCE.is_dir():
        pytest.skip(f"Intel's IR not found at {SOURCE}")
    chips = faces[1][::60][:8]  # 8 identities
    oracle = convert.openvino_model(convert.read_ir(SOURCE))
    expected = oracle(_as_input(chips).flip(1).numpy())  # the IR takes BGR
    with torch.no_grad():
        raw = model.embedding(_as_input(chips)).numpy()
        unit = model(_as_input(chips)).numpy()
    assert raw.shape == expected.shape == (8, 256)
    assert np.abs(raw - expected).max() <= FP16_STEP * np.abs(expected).max()
    assert np.abs(unit - expected / np.linalg.norm(expected, axis=1, keepdims=True)).max() <= FP16_STEP


def test_input_gradient_is_finite_nonzero_and_points_downhill(model, faces):
    chips = faces[1]
    target = model(_as_input(chips[12:13]))[0]  # another identity
    x = _as_input(chips[:1]).requires_grad_(True)
    distance = torch.linalg.vector_norm(model(x)[0] - target)
    distance.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.5
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        stepped = torch.linalg.vector_norm(model(x - 2.0 * x.grad.sign())[0] - target)
    assert stepped < distance


def test_bfloat16_twin_stays_close_to_float32(model, faces):
    x = _as_input(faces[1][::60])
    with torch.no_grad():
        exact, approximate = model(x), model.bfloat16_twin()(x)
    assert approximate.dtype == torch.float32
    # measured on 200 faces: median 0.020, max 0.033 (match_threshold is 1.15)
    assert torch.linalg.vector_norm(exact - approximate, dim=1).max() < 0.06


def test_metadata(model):
    assert (model.name, model.dim, model.geometry.size) == ("omz_reid", 256, 128)
    assert np.allclose(model.geometry.template, np.array(REFERENCE_POINTS) * 128)
    assert 0.5 < model.match_threshold < 1.5
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="128 x 128"):
        model(torch.zeros(1, 3, 112, 112))


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "omz_reid.fp16.pt"
    with pytest.raises(ModelMissingError, match=re.escape(str(missing))):
        omz_reid(missing)


def test_damaged_weights_file_is_refused(tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(WEIGHTS_FILE.read_bytes()[:100_000])
    with pytest.raises(ModelCorruptError, match="cannot be read"):
        omz_reid(truncated)
    state = torch.load(WEIGHTS_FILE, weights_only=True)
    state["head.2.weight"][0, 0] += 1
    altered = tmp_path / "altered.pt"
    torch.save(state, altered)
    with pytest.raises(ModelCorruptError, match="digest"):
        omz_reid(altered)


def test_cloakd_never_imports_openvino():
    """OpenVINO is a conversion and test oracle, never a run-time dependency."""
    imports = re.compile(r"^\s*(import|from)\s+openvino\b", re.M)
    sources = [p for top in ("core", "daemon") for p in (REPO / top).rglob("*.py")]
    assert sources and not [p for p in sources if imports.search(p.read_text())]
