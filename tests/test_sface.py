"""SFace, cloakd's torch port of OpenCV Zoo's face_recognition_sface_2021dec: identifies real faces through
cloakd's own detection and alignment, equals the ONNX model it was converted from, is differentiable with
respect to its input, and fails clearly without its weights file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from cloakd.core.errors import ModelCorruptError, ModelMissingError
from cloakd.core.extractors import load_extractor
from cloakd.core.extractors.sface import WEIGHTS, SFace, sface

ONNX_FILE = "surrogates/sface/face_recognition_sface_2021dec_int8bq.onnx"
# Descriptors (unit vectors) from the float16 weights differ from the float32 dequantised ONNX weights by
# at most 0.0031 per element and 5.8e-5 in 1 - cosine on 80 real chips (scripts/convert_sface.py; with
# float32 weights the difference is 1e-6, float rounding): these bounds leave a factor of about 4.
FP16_MAX_ABS = 0.012
FP16_MAX_ONE_MINUS_COS = 2.5e-4


@pytest.fixture(scope="module")
def model() -> SFace:
    return load_extractor("sface")


@pytest.fixture(scope="module")
def lfw(model, data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(identity names, chips N x 112 x 112 x 3 uint8, descriptors N x 128) of the face nearest the centre
    of every photo in faces/ (40 identities x 12), through cloakd's MTCNN and SFace's own alignment."""
    from cloakd.core.detect import FaceDetector
    from cloakd.core.faces import FaceAnalyzer

    analyzer = FaceAnalyzer(FaceDetector(), model)
    names, chips = [], []
    for path in sorted((data_dir / "faces").glob("*/*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = analyzer.find(image)
        if not faces:
            continue
        centre = np.array(image.shape[1::-1]) / 2
        face = min(faces, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
        names.append(path.parent.name)
        chips.append(analyzer.chips(image, [face])[0])
    chips = np.stack(chips)
    descriptors = np.concatenate([analyzer.describe_chips(chips[i : i + 16]) for i in range(0, len(chips), 16)])
    return np.array(names), chips, descriptors


def _as_input(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()


def test_identifies_lfw_faces_leave_one_out(model, lfw):
    names, _, descriptors = lfw
    assert len(names) >= 475 and descriptors.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    distances = np.linalg.norm(descriptors[:, None] - descriptors[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    accuracy = (names[distances.argmin(1)] == names).mean()
    assert accuracy >= 0.99, f"leave-one-out 1-NN accuracy {accuracy:.4f}"

    # the threshold was chosen on other identities (train/); it still separates these
    same = names[:, None] == names[None]
    off_diagonal = ~np.eye(len(names), dtype=bool)
    below = distances < model.match_threshold
    assert below[same & off_diagonal].mean() >= 0.9
    assert below[~same].mean() <= 0.01


def test_equals_the_onnx_model(model, lfw, data_dir):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    graph = onnx.load(str(data_dir.parent / ONNX_FILE))
    keep = [i for i in graph.graph.input if i.name == "data"]  # the file also lists its weights as inputs
    del graph.graph.input[:]
    graph.graph.input.extend(keep)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    chips = _as_input(lfw[1][::60])  # 8 faces of 8 identities
    expected = np.concatenate([session.run(["fc1"], {"data": chip[None].numpy()})[0] for chip in chips])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    with torch.no_grad():
        ours = model(chips).numpy()
    assert np.abs(ours - expected).max() <= FP16_MAX_ABS
    assert (1 - (ours * expected).sum(1)).max() <= FP16_MAX_ONE_MINUS_COS


def test_input_gradient_and_bfloat16_twin(model, lfw):
    _, chips, descriptors = lfw
    x = _as_input(chips[:2]).requires_grad_(True)
    target = torch.from_numpy(descriptors[100:102])
    distance = torch.linalg.vector_norm(model(x) - target, dim=1).sum()
    distance.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.5
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        stepped = torch.linalg.vector_norm(model(x - 2.0 * x.grad.sign()) - target, dim=1).sum()
    assert stepped < distance

    twin = model.bfloat16_twin()
    with torch.no_grad():
        half = twin(_as_input(chips[:8]))
    assert half.dtype == torch.float32
    gap = np.linalg.norm(half.numpy() - descriptors[:8], axis=1)
    assert gap.max() <= 0.05, gap  # about 0.012 on real faces, against a match threshold above 1


def test_metadata(model):
    assert not model.training
    assert (model.name, model.dim, model.geometry.size) == ("sface", 128, 112)
    assert 0.5 < model.match_threshold < 1.5


def test_missing_weights_file_names_its_path(tmp_path):
    missing = tmp_path / "sface.fp16.pt"
    with pytest.raises(ModelMissingError, match=re.escape(str(missing))) as error:
        sface(missing)
    assert not isinstance(error.value, ModelCorruptError)


def test_damaged_weights_file_is_refused(tmp_path):
    data = bytearray(WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 1
    damaged = tmp_path / "sface.fp16.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelCorruptError, match=re.escape(str(damaged))):
        sface(damaged)
