"""Convert OpenCV Zoo's SFace (int8 block-quantised ONNX) into cloakd's torch weights, core/data/sface.fp16.pt.

    .venv/bin/pip install onnx onnxruntime     # conversion and verification only, never used by cloakd
    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_sface.py              # about 15 s of CPU
    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_sface.py --threshold  # plus about 3 min

1. Read the graph with ``onnx`` and evaluate its constant part: each ``DequantizeLinear`` (opset 21,
   blocked: ``w = (q - zero_point) * scale``, scale and zero point repeated ``block_size`` times along
   ``axis``; computed in float32 exactly as onnxruntime does) and the ``Reshape`` after it.
2. Walk the 27 Conv -> BatchNormalization -> PRelu triplets and the head (BatchNormalization, Dropout,
   Flatten, Gemm, BatchNormalization), check every layer against :class:`SFace` (shape, stride, padding,
   groups), and fold each batch norm (inference statistics) into its conv, and the head's two into the
   linear layer (in float64, then float32).
3. Compare the float32 module with onnxruntime on 80 real chips (first two photos of each identity of
   ../shared/data/faces, cloakd's MTCNN + SFace's alignment): raw output and normalised descriptors
   (they agree to float rounding, about 1e-5 on outputs up to 5).
4. Write the state dict as float16 and measure what that rounding costs against the float32 weights
   (1 - cosine below 1e-4).
5. ``--threshold``: the distance threshold maximising same/different accuracy on ../shared/data/train
   (all same-person pairs of identities with >= 2 photos, as many random cross pairs, seed 0).

The conversion is deterministic; the weights digest printed at the end must equal ``WEIGHTS_DIGEST`` in
core/extractors/sface.py.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from PIL import Image

from cloakd.core.align import extract_chip
from cloakd.core.detect import FaceDetector
from cloakd.core.extractors import sface as sface_module
from cloakd.core.extractors.sface import SEPARABLE, SFace
from cloakd.core.extractors.weights import weights_digest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SOURCE = REPO.parent / "shared" / "surrogates" / "sface" / "face_recognition_sface_2021dec_int8bq.onnx"
SOURCE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
OUTPUT = REPO / "core" / "data" / "sface.fp16.pt"


# --- reading the graph ------------------------------------------------------------------------------------


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, block: int) -> np.ndarray:
    """Blocked DequantizeLinear: each ``block`` consecutive entries along ``axis`` share a scale and zero
    point. The integer difference is exact; the product is one float32 rounding, as in onnxruntime."""
    n = q.shape[axis]
    scale = np.repeat(scale, block, axis=axis).take(np.arange(n), axis=axis)
    zero_point = np.repeat(zero_point, block, axis=axis).take(np.arange(n), axis=axis)
    return (q.astype(np.int32) - zero_point.astype(np.int32)).astype(np.float32) * scale.astype(np.float32)


def read_graph(path: Path) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """Constants of the graph (initializers plus the dequantised weights) and its remaining nodes."""
    model = onnx.load(str(path))
    const = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    compute = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "DequantizeLinear":
            q, scale, zp = (const[name] for name in node.input)
            const[node.output[0]] = dequantize(q, scale, zp, attrs["axis"], attrs["block_size"])
        elif node.op_type == "Reshape" and all(name in const for name in node.input):
            const[node.output[0]] = const[node.input[0]].reshape(const[node.input[1]])
        elif node.op_type == "Constant":
            const[node.output[0]] = numpy_helper.to_array(attrs["value"])
        else:
            compute.append(node)
    return const, compute


class Nodes:
    """The graph's compute nodes in order, taken one at a time and checked for their operator."""

    def __init__(self, nodes: list[onnx.NodeProto], const: dict[str, np.ndarray]) -> None:
        self._nodes = iter(nodes)
        self.const = const

    def take(self, op_type: str) -> tuple[onnx.NodeProto, dict]:
        node = next(self._nodes)
        if node.op_type != op_type:
            raise SystemExit(f"unexpected graph: {node.op_type} {node.name!r} where {op_type} belongs")
        return node, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def arrays(self, node: onnx.NodeProto) -> list[np.ndarray]:
        return [self.const[name].astype(np.float64) for name in node.input[1:]]

    def batch_norm(self) -> tuple[np.ndarray, np.ndarray]:
        """Scale and shift (float64) of the next BatchNormalization in inference mode."""
        node, attrs = self.take("BatchNormalization")
        gamma, beta, mean, var = self.arrays(node)
        scale = gamma / np.sqrt(var + np.float64(np.float32(attrs["epsilon"])))
        return scale, beta - mean * scale

    def end(self) -> None:
        rest = list(self._nodes)
        if rest:
            raise SystemExit(f"unexpected graph: {len(rest)} nodes after the last batch norm")


def convert(path: Path) -> dict[str, torch.Tensor]:
    """Float32 state dict of :class:`SFace`, batch norms folded, from the ONNX file."""
    const, nodes = read_graph(path)
    graph = Nodes(nodes, const)
    sub, _ = graph.take("Sub")
    mul, _ = graph.take("Mul")
    if (const[sub.input[1]].item(), const[mul.input[1]].item()) != (127.5, 1 / 128):
        raise SystemExit("unexpected input normalisation (SFace.embed assumes (x - 127.5) / 128)")

    state: dict[str, np.ndarray] = {}
    prefixes = ["stem"] + [f"body.{i}.{j}" for i in range(len(SEPARABLE)) for j in (0, 1)]
    conv_attrs = []
    for prefix in prefixes:
        conv, attrs = graph.take("Conv")
        conv_attrs.append(attrs)
        weight = const[conv.input[1]].astype(np.float64)
        scale, shift = graph.batch_norm()
        prelu, _ = graph.take("PRelu")
        state[f"{prefix}.0.weight"] = weight * scale[:, None, None, None]
        state[f"{prefix}.0.bias"] = shift
        state[f"{prefix}.1.weight"] = const[prelu.input[1]].reshape(-1)

    # head: y = s2 * (W (a x + c) + b - m2) + beta2 = (s2 W a) x + s2 (W c + b) + shift2, x flattened NCHW
    a, c = graph.batch_norm()
    graph.take("Dropout")  # identity at inference
    _, flatten = graph.take("Flatten")
    gemm, gemm_attrs = graph.take("Gemm")
    if flatten.get("axis", 1) != 1 or gemm_attrs != {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}:
        raise SystemExit(f"unexpected head: Flatten {flatten}, Gemm {gemm_attrs}")
    w, b = graph.arrays(gemm)
    s2, shift2 = graph.batch_norm()
    graph.end()
    pixels = w.shape[1] // len(a)
    a, c = np.repeat(a, pixels), np.repeat(c, pixels)
    state["embedding.weight"] = s2[:, None] * w * a[None, :]
    state["embedding.bias"] = s2 * (w @ c + b) + shift2

    tensors = {k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}
    check_layers(SFace(tensors), conv_attrs)
    return tensors


def check_layers(model: SFace, conv_attrs: list[dict]) -> None:
    """Stride, padding, groups and kernel of every conv in the graph equal those of our module."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(conv_attrs) == 27
    for i, (conv, attrs) in enumerate(zip(convs, conv_attrs)):
        ours = (list(conv.kernel_size), list(conv.stride), list(conv.padding) * 2, conv.groups, [1, 1])
        theirs = (attrs["kernel_shape"], attrs["strides"], attrs["pads"], attrs["group"], attrs["dilations"])
        if ours != theirs:
            raise SystemExit(f"conv {i}: graph has {theirs}, SFace builds {ours}")


# --- real chips ---------------------------------------------------------------------------------------------


def central_chip(detector: FaceDetector, path: Path) -> np.ndarray | None:
    """The 112 px SFace chip (uint8 RGB) of the face nearest the photo's centre, None if MTCNN finds none."""
    image = np.asarray(Image.open(path).convert("RGB"))
    dets = detector.detect(image)
    if not len(dets):
        return None
    centre = np.array(image.shape[1::-1]) / 2
    i = int(np.argmin([np.linalg.norm((box[:2] + box[2:]) / 2 - centre) for box in dets.boxes]))
    return extract_chip(image, SFace.geometry.transform(dets.landmarks[i]))


def as_input(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()


@torch.inference_mode()
def describe(model: SFace, chips: np.ndarray, raw: bool = False, batch: int = 64) -> np.ndarray:
    run = model.embed if raw else model
    return np.concatenate([run(as_input(chips[i : i + batch])).numpy() for i in range(0, len(chips), batch)])


def onnxruntime_outputs(path: Path, chips: np.ndarray) -> np.ndarray:
    """OpenCV Zoo's own outputs (``fc1``, batch 1). The file lists its initializers, and the float weights
    the quantiser replaced, among the graph inputs; onnxruntime would demand those, so only ``data`` stays."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    keep = [i for i in model.graph.input if i.name == "data"]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["fc1"], {"data": as_input(chip[None]).numpy()})[0] for chip in chips])


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def compare(name: str, ours: np.ndarray, reference: np.ndarray) -> None:
    cos = (normalised(ours) * normalised(reference)).sum(1)
    print(
        f"  {name}: raw max abs diff {np.abs(ours - reference).max():.3g} (outputs up to "
        f"{np.abs(reference).max():.3g}), normalised max abs diff "
        f"{np.abs(normalised(ours) - normalised(reference)).max():.3g}, 1 - cosine max {(1 - cos).max():.3g}"
    )


# --- threshold ----------------------------------------------------------------------------------------------


def best_threshold(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """The distance threshold (midway between two observed distances) maximising the accuracy of
    "same person iff distance < threshold" on these pairs, and that accuracy."""
    d = np.concatenate([same, different])
    is_same = np.concatenate([np.ones(len(same), bool), np.zeros(len(different), bool)])
    order = np.argsort(d)
    d, is_same = d[order], is_same[order]
    correct = np.cumsum(is_same) + (len(different) - np.cumsum(~is_same))  # threshold just above d[i]
    i = int(np.argmax(correct))
    return float((d[i] + d[min(i + 1, len(d) - 1)]) / 2), correct[i] / len(d)


def measure_threshold(model: SFace, detector: FaceDetector) -> None:
    people = [p for p in sorted((DATA / "train").iterdir()) if len(list(p.glob("*.jpg"))) >= 2]
    names, chips = [], []
    for person in people:
        for path in sorted(person.glob("*.jpg")):
            chip = central_chip(detector, path)
            if chip is not None:
                names.append(person.name)
                chips.append(chip)
    names = np.array(names)
    desc = describe(model, np.stack(chips))
    print(f"train: {len(chips)} faces of {len(set(names))} identities with >= 2 photos")

    same = [(i, j) for i, j in itertools.combinations(range(len(names)), 2) if names[i] == names[j]]
    rng = np.random.default_rng(0)
    different: set[tuple[int, int]] = set()
    while len(different) < len(same):
        i, j = sorted(rng.choice(len(names), 2, replace=False))
        if names[i] != names[j]:
            different.add((int(i), int(j)))

    def distances(pairs) -> np.ndarray:
        i, j = np.array(sorted(pairs)).T
        return np.linalg.norm(desc[i] - desc[j], axis=1)

    d_same, d_diff = distances(same), distances(different)
    threshold, accuracy = best_threshold(d_same, d_diff)
    print(
        f"  {len(d_same)} same-person and {len(d_diff)} different-person pairs: best threshold {threshold:.4f}"
        f" (cosine {1 - threshold**2 / 2:.4f}), accuracy {accuracy:.4f}; same pairs below it "
        f"{(d_same < threshold).mean():.4f}, different pairs below it {(d_diff < threshold).mean():.4f}"
    )
    for t in (1.0, 1.05, 1.1, 1.128, 1.15, 1.2, 1.25):  # 1.128: OpenCV's own (cosine 0.363)
        print(f"  accuracy at {t}: {((d_same < t).sum() + (d_diff >= t).sum()) / (len(d_same) + len(d_diff)):.4f}")


# --- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, default=SOURCE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--threshold", action="store_true", help="also measure the match threshold on train/")
    args = parser.parse_args()
    torch.set_num_threads(1)

    digest = hashlib.sha256(args.onnx.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{args.onnx}: sha256 {digest}, expected OpenCV Zoo's {SOURCE_SHA256}")
    state = convert(args.onnx)
    model = SFace(state).eval()
    print(f"converted {sum(v.numel() for v in state.values()):,} parameters")

    detector = FaceDetector()
    paths = [p for person in sorted((DATA / "faces").iterdir()) for p in sorted(person.glob("*.jpg"))[:2]]
    chips = np.stack([c for c in (central_chip(detector, p) for p in paths) if c is not None])
    reference = onnxruntime_outputs(args.onnx, chips)
    print(f"float32 module vs onnxruntime on {len(chips)} real chips:")
    compare("float32", describe(model, chips, raw=True), reference)

    half = {k: v.half().contiguous().clone() for k, v in state.items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, args.output)
    model16 = SFace({k: v.float() for k, v in half.items()}).eval()
    print("float16 weights:")
    compare("vs onnxruntime", describe(model16, chips, raw=True), reference)
    compare("vs float32", describe(model16, chips, raw=True), describe(model, chips, raw=True))

    written = weights_digest(half)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes), weights digest {written}")
    if written != sface_module.WEIGHTS_DIGEST:
        print("  (differs from WEIGHTS_DIGEST in core/extractors/sface.py: update it)")
    if args.threshold:
        measure_threshold(model16, detector)


if __name__ == "__main__":
    main()
