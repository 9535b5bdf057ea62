"""Convert Intel's face-reidentification-retail-0095 (OpenVINO IR v5, FP16) into cloakd's torch weights.

Reads the IR's topology (.xml) and its FP16 blobs at their offsets in the .bin, maps them onto
:class:`cloakd.core.extractors.omz_reid.OMZFaceReid` layer by layer (every convolution's channels, groups,
kernel, stride and padding and every PReLU are checked against the IR), verifies the module against an
oracle on real aligned faces, and writes ``core/data/omz_reid.fp16.pt`` (a float16 state dict)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_omz_reid.py [--source DIR] [--data DIR]
    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_omz_reid.py --threshold   # also measure match_threshold

Conversion with verification on the 480 photos of ../shared/data/faces takes about 40 s on one thread
(most of it MTCNN); ``--threshold`` adds about 3 minutes (3,474 photos of ../shared/data/train). The
output is deterministic: the same IR gives a byte-identical file.

The oracle is OpenVINO's own CPU runtime (the ``openvino`` PyPI package, ``.venv/bin/pip install openvino``:
a conversion and test tool only, cloakd never imports it). Current OpenVINO no longer reads IR v5, so
:func:`openvino_model` builds the same graph from OpenVINO's operations by walking the IR's layers and
edges generically: the wiring comes from the .xml, not from our module, and the arithmetic from
OpenVINO's kernels, in float32 (forced: on processors with bfloat16 it would otherwise choose bfloat16).
The conversion fails unless our module matches it to within one FP16 step and identifies >= 99% of faces.
"""

from __future__ import annotations

import argparse
import itertools
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cloakd.core.align import extract_chip
from cloakd.core.detect import FaceDetector
from cloakd.core.extractors.omz_reid import WEIGHTS_DIGEST, WEIGHTS_FILE, OMZFaceReid
from cloakd.core.extractors.weights import weights_digest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "surrogates" / "omz-face-reid-0095"
DATA = REPO.parent / "shared" / "data"
MODEL = "face-reidentification-retail-0095"


@dataclass
class IRLayer:
    id: int
    type: str
    data: dict[str, str]
    blobs: dict[str, np.ndarray]  # "weights" / "biases", float32 copies of the FP16 values
    inputs: list[int] = field(default_factory=list)  # producing layer ids, by input port

    def ints(self, key: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self.data[key].split(","))


def read_ir(source: Path) -> list[IRLayer]:
    """The IR's layers in id order (a topological order), each with its FP16 blobs and its inputs."""
    root = ET.parse(source / f"{MODEL}.xml").getroot()
    if root.get("version") != "5":
        raise SystemExit(f"expected an IR v5 topology, got version {root.get('version')}")
    payload = (source / f"{MODEL}.bin").read_bytes()
    layers = {}
    for node in root.find("layers"):
        data = node.find("data")
        blobs = {blob.tag: _fp16_blob(payload, blob) for blob in node.iterfind("blobs/*")}
        if node.get("precision") != "FP16":
            raise SystemExit(f"layer {node.get('id')} is {node.get('precision')}, expected FP16")
        layer = IRLayer(int(node.get("id")), node.get("type"), dict(data.attrib) if data is not None else {}, blobs)
        layers[layer.id] = layer
    edges = sorted(root.find("edges"), key=lambda e: (int(e.get("to-layer")), int(e.get("to-port"))))
    for edge in edges:
        layers[int(edge.get("to-layer"))].inputs.append(int(edge.get("from-layer")))
    return [layers[i] for i in sorted(layers)]


def _fp16_blob(payload: bytes, blob: ET.Element) -> np.ndarray:
    count, offset = int(blob.get("size")) // 2, int(blob.get("offset"))
    return np.frombuffer(payload, "<f2", count, offset).astype(np.float32)


def ir_state_dict(layers: list[IRLayer]) -> dict[str, torch.Tensor]:
    """The IR's weights under our module's names, FP16; fails unless every layer matches our module's."""
    model = OMZFaceReid()
    weighted = [layer for layer in layers if layer.blobs]
    ours = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.PReLU))]
    if weighted[0].type != "ScaleShift" or len(weighted) - 1 != len(ours):
        raise SystemExit(f"IR has {len(weighted)} weighted layers, our module {len(ours) + 1} (ScaleShift first)")
    state = {"scale": weighted[0].blobs["weights"], "shift": weighted[0].blobs["biases"]}
    for layer, (name, module) in zip(weighted[1:], ours):
        _check_layer(layer, name, module)
        state[f"{name}.weight"] = layer.blobs["weights"]
        if "biases" in layer.blobs:
            state[f"{name}.bias"] = layer.blobs["biases"]
    expected = model.state_dict()
    if list(state) != list(expected):
        raise SystemExit("IR weights do not map one-to-one onto the module's state dict")
    return {k: torch.from_numpy(v).reshape(expected[k].shape).to(torch.float16) for k, v in state.items()}


def _check_layer(layer: IRLayer, name: str, module: nn.Module) -> None:
    if isinstance(module, nn.PReLU):
        ok = layer.type == "PReLU" and layer.data.get("channel_shared") == "1" and layer.blobs["weights"].size == 1
    else:
        conv: nn.Conv2d = module
        ok = (
            layer.type == "Convolution"
            and int(layer.data["output"]) == conv.out_channels
            and int(layer.data["group"]) == conv.groups
            and layer.ints("kernel") == conv.kernel_size
            and layer.ints("strides") == conv.stride
            and layer.ints("pads_begin") == layer.ints("pads_end") == conv.padding
            and layer.ints("dilations") == (1, 1)
            and layer.blobs["weights"].size == conv.weight.numel()
            and ("biases" in layer.blobs) == (conv.bias is not None)
        )
    if not ok:
        raise SystemExit(f"IR layer {layer.id} ({layer.type} {layer.data}) does not match our {name}: {module}")


def openvino_model(layers: list[IRLayer]):
    """The IR's graph as a compiled OpenVINO model (float32 on CPU): N x 3 x 128 x 128 BGR -> N x 256."""
    import openvino as ov
    import openvino.opset13 as ops

    def per_channel(values: np.ndarray) -> np.ndarray:
        return values.reshape(1, -1, 1, 1)

    out = {}
    for layer in layers:
        x = [out[i] for i in layer.inputs]
        w, b = layer.blobs.get("weights"), layer.blobs.get("biases")
        if layer.type == "Input":
            node = ops.parameter([-1, 3, 128, 128], np.float32, name="data")
        elif layer.type == "ScaleShift":
            node = ops.add(ops.multiply(x[0], per_channel(w)), per_channel(b))
        elif layer.type == "Convolution":
            cout, groups, kernel = int(layer.data["output"]), int(layer.data["group"]), layer.ints("kernel")
            geometry = [list(layer.ints(k)) for k in ("strides", "pads_begin", "pads_end", "dilations")]
            if groups == 1:
                node = ops.convolution(x[0], w.reshape(cout, -1, *kernel), *geometry)
            else:
                node = ops.group_convolution(x[0], w.reshape(groups, cout // groups, -1, *kernel), *geometry)
            if b is not None:
                node = ops.add(node, per_channel(b))
        elif layer.type == "PReLU":
            node = ops.prelu(x[0], w)
        elif layer.type == "Pooling" and layer.data["pool-method"] == "avg":
            node = ops.avg_pool(
                x[0],
                list(layer.ints("strides")),
                list(layer.ints("pads_begin")),
                list(layer.ints("pads_end")),
                list(layer.ints("kernel")),
                layer.data["exclude-pad"] == "true",
                layer.data["rounding_type"],
            )
        elif layer.type == "Activation" and layer.data["type"] == "sigmoid":
            node = ops.sigmoid(x[0])
        elif layer.type == "Eltwise" and layer.data["operation"] in ("mul", "sum"):
            node = (ops.multiply if layer.data["operation"] == "mul" else ops.add)(x[0], x[1])
        else:
            raise SystemExit(f"IR layer {layer.id}: no translation for {layer.type} {layer.data}")
        out[layer.id] = node
    model = ov.Model([ops.result(out[layers[-1].id])], [out[layers[0].id]], MODEL)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda bgr: compiled(bgr)[0].reshape(len(bgr), -1)


def central_chips(paths: list[Path], detector: FaceDetector) -> tuple[list[Path], np.ndarray]:
    """cloakd's MTCNN + this model's alignment: the chip of the face nearest each photo's centre
    (photos without a face are left out). Returns the photos used and N x 128 x 128 x 3 uint8 RGB chips."""
    used, chips = [], []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        found = detector.detect(image)
        if not len(found):
            continue
        centre = np.array(image.shape[1::-1]) / 2
        k = int(np.argmin(np.linalg.norm((found.boxes[:, :2] + found.boxes[:, 2:]) / 2 - centre, axis=1)))
        used.append(path)
        chips.append(extract_chip(image, OMZFaceReid.geometry.transform(found.landmarks[k])))
    return used, np.stack(chips)


def as_input(chips: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 RGB -> N x 3 x S x S float in [0, 255] (cloakd's extractor input)."""
    return torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()


@torch.inference_mode()
def describe(model: OMZFaceReid, chips: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([model(as_input(chips[i : i + batch])).numpy() for i in range(0, len(chips), batch)])


def verify(model: OMZFaceReid, layers: list[IRLayer], chips: np.ndarray, labels: np.ndarray) -> None:
    """Our module against OpenVINO (raw embeddings) and leave-one-out 1-NN identification; exits on a
    difference of one FP16 step (2^-10 at 1.0) or an accuracy below 0.99."""
    oracle = openvino_model(layers)
    ours, theirs = [], []
    with torch.inference_mode():
        for i in range(0, len(chips), 8):
            x = as_input(chips[i : i + 8])
            ours.append(model.embedding(x).numpy())
            theirs.append(oracle(x.flip(1).numpy()))  # the IR takes BGR
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    unit = ours / np.linalg.norm(ours, axis=1, keepdims=True) - theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    print(
        f"vs OpenVINO on {len(chips)} chips: max |diff| {np.abs(ours - theirs).max():.2e} "
        f"(embedding max |value| {np.abs(theirs).max():.2f}), min cosine {cosine.min():.8f}, "
        f"max |diff| of L2-normalised descriptors {np.abs(unit).max():.2e}"
    )
    descriptors = describe(model, chips)
    similarity = descriptors @ descriptors.T  # unit vectors: nearest = most similar
    np.fill_diagonal(similarity, -np.inf)
    correct = (labels[similarity.argmax(1)] == labels).sum()
    print(f"leave-one-out 1-NN identification: {correct}/{len(labels)} = {correct / len(labels):.4f}")
    if np.abs(unit).max() > 2.0**-10 or correct < 0.99 * len(labels):
        raise SystemExit("verification failed: the converted module does not reproduce Intel's model")


def measure_threshold(descriptors: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
    """The distance threshold maximising verification accuracy on every same-person pair of these photos
    and as many random different-person pairs among them. Also prints the 10-fold accuracy (threshold
    chosen on 9 folds, scored on the 10th)."""
    groups = [np.flatnonzero(labels == name) for name in np.unique(labels)]
    same = np.array([pair for group in groups for pair in itertools.combinations(group, 2)])
    rng = np.random.default_rng(seed)
    candidates = rng.integers(0, len(labels), size=(4 * len(same), 2))
    different = candidates[labels[candidates[:, 0]] != labels[candidates[:, 1]]][: len(same)]
    pairs = np.concatenate([same, different])
    is_same = np.arange(len(pairs)) < len(same)
    distance = np.linalg.norm(descriptors[pairs[:, 0]] - descriptors[pairs[:, 1]], axis=1)
    threshold, accuracy = best_threshold(distance, is_same)
    folds, held_out = rng.permutation(len(pairs)) % 10, []
    for fold in range(10):
        fold_threshold, _ = best_threshold(distance[folds != fold], is_same[folds != fold])
        held_out.append(((distance[folds == fold] < fold_threshold) == is_same[folds == fold]).mean())
    print(
        f"threshold on {len(labels)} photos of {len(set(labels))} identities, "
        f"{len(same)} same + {len(different)} different pairs: {threshold:.4f} (accuracy {accuracy:.4f}; "
        f"10-fold {np.mean(held_out):.4f} +- {np.std(held_out):.4f}); same-pair distance median "
        f"{np.median(distance[is_same]):.3f}, different {np.median(distance[~is_same]):.3f}"
    )


def best_threshold(distance: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): the midpoint between two consecutive distances that classifies the most pairs
    right, a pair being called the same person when its distance is below the threshold."""
    order = np.argsort(distance)
    d, same = distance[order], is_same[order]
    correct = np.cumsum(same) + (~same).sum() - np.cumsum(~same)  # [k]: the k + 1 nearest called same
    k = int(correct[:-1].argmax())
    return float((d[k] + d[k + 1]) / 2), float(correct[k] / len(d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder of Intel's .xml and .bin")
    parser.add_argument("--data", type=Path, default=DATA, help="cloakd's test data (faces/, train/)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--threshold", action="store_true", help="also measure match_threshold on train/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.monotonic()

    layers = read_ir(args.source)
    state = ir_state_dict(layers)
    print(f"{len(layers)} IR layers -> {len(state)} tensors, {sum(v.numel() for v in state.values()):,} values")
    model = OMZFaceReid()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()

    detector = FaceDetector()
    paths, chips = central_chips(sorted((args.data / "faces").glob("*/*.jpg")), detector)
    verify(model, layers, chips, np.array([p.parent.name for p in paths]))
    if args.threshold:  # every photo of the identities of train/ that have at least two
        people = [sorted(person.glob("*.jpg")) for person in sorted((args.data / "train").iterdir())]
        photos = [p for person in people if len(person) >= 2 for p in person]
        paths, chips = central_chips(photos, detector)
        print(f"train/: a face in {len(chips)} of {len(photos)} photos")
        measure_threshold(describe(model, chips), np.array([p.parent.name for p in paths]))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    digest = weights_digest(state)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes), weights digest {digest}")
    if digest != WEIGHTS_DIGEST:
        print("the digest differs from WEIGHTS_DIGEST in core/extractors/omz_reid.py: update it there")
    print(f"{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
