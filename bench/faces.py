"""Time the face pipeline (MTCNN -> alignment -> dlib ResNet) and the descriptor's gradient, at 1 and 2 threads.

Rows: a cold ``import torch`` (fresh interpreters); loading both models with torch already imported;
detection + alignment + descriptor on decoded pixels (decode is bench/photo_io.py's job; the detector alone is
bench/bench_detect.py's) for a 12-megapixel photo with one face and for each group photo; the descriptor's
forward and forward+backward (gradient w.r.t. the input chips, what the cloak optimiser does) per face at
batch 1 and 8; the one-shot ``cloakd faces`` command end to end; peak RSS.

The 12 MP photo is made at bench time: metadata/sony-cybershot.jpg (640x480, a real snapshot of one person,
face about 35 px) upscaled bicubically to 4000x3000, so the face is about 220 px, as in a phone photo.

Timings are min and median over repeats after one warm-up. When the machine is shared, medians absorb the
other jobs' load: compare minimums, and read the 1-vs-2-thread ratio from minimums only.

Usage: .venv/bin/python bench/faces.py [--repeats N]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see daemon/cli/__init__.py)

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cloakd.core.detect import FaceDetector
from cloakd.core.extractors import DEFAULT_EXTRACTOR, load_extractor
from cloakd.core.faces import FaceAnalyzer
from common import DATA, machine

THREADS = (1, 2)
TWELVE_MP = (4000, 3000)
CLOAKD = Path(sys.executable).with_name("cloakd")


def timed(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> list[float]:
    """Seconds per call. The warm-up call lets oneDNN build its kernels for the shapes involved."""
    if warm_up:
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return runs


def rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        return np.asarray(im if size is None else im.resize(size, Image.BICUBIC))


def photos() -> dict[str, tuple[np.ndarray, str]]:
    """label -> (pixels, target): the 12 MP one-face photo, then the group photos at their own size."""
    cases = {
        "sony-cybershot.jpg upscaled to 4000x3000, 1 face": (
            rgb(DATA / "metadata" / "sony-cybershot.jpg", TWELVE_MP),
            "<= 1.0 s",
        )
    }
    counts = json.loads((DATA / "groups_face_counts.json").read_text())
    for path in sorted((DATA / "groups").glob("*.jpg")):
        image = rgb(path)
        cases[f"{path.name} {image.shape[1]}x{image.shape[0]}, {counts[path.name]['faces']} faces"] = (image, "")
    return cases


def lfw_chips(analyzer: FaceAnalyzer, count: int) -> torch.Tensor:
    """Real aligned chips (float N x 3 x S x S in [0, 255]) of the central LFW faces, one identity each."""
    chips = []
    for folder in sorted((DATA / "faces").iterdir())[:count]:
        image = rgb(folder / f"{folder.name}_0001.jpg")
        faces = analyzer.find(image)
        centre = np.array(image.shape[1::-1]) / 2
        face = min(faces, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
        chips.append(analyzer.chips(image, [face])[0])
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()


def forward(extractor: torch.nn.Module, chips: torch.Tensor) -> None:
    with torch.inference_mode():
        extractor(chips)


def forward_backward(extractor: torch.nn.Module, chips: torch.Tensor, target: torch.Tensor) -> None:
    """One step of the cloak's inner loop: distance to a target descriptor, gradient w.r.t. the pixels."""
    x = chips.clone().requires_grad_(True)
    (extractor(x) - target).pow(2).sum().backward()
    assert x.grad is not None


def subprocess_runs(argv: list[str], env: dict[str, str], repeats: int) -> list[float]:
    """Wall seconds of fresh processes (the OS page cache is warm after the first)."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t0)
    return runs


class Table:
    """A markdown table: per measurement, min / median at each thread count and the 1-to-2-thread ratio."""

    def __init__(self) -> None:
        self.rows: list[str] = []

    def add(self, label: str, runs: dict[int, list[float]], unit: str = "s", per: int = 1, target: str = "") -> None:
        """``runs``: seconds per run by thread count; ``per``: items per run (faces in a batch)."""
        scale = {"s": 1.0, "ms": 1000.0}[unit] / per
        digits = {"s": 3, "ms": 1}[unit]
        cells, mins = [], {}
        for t in THREADS:
            if t in runs:
                mins[t] = min(runs[t]) * scale
                cells.append(f"{mins[t]:.{digits}f} / {statistics.median(runs[t]) * scale:.{digits}f}")
            else:
                cells.append("-")
        ratio = f"{mins[1] / mins[2]:.2f}" if len(mins) == 2 else "-"
        self.rows.append(f"| {label} | {unit} | {' | '.join(cells)} | {ratio} | {target} |")

    def note(self, label: str, value: str) -> None:
        self.rows.append(f"| {label} | {value} | | | | |")

    def markdown(self) -> str:
        head = (
            "| measurement | unit | 1 thread min / median | 2 threads min / median | speed-up 2 vs 1 (min) "
            "| target |\n| --- | --- | ---: | ---: | ---: | --- |"
        )
        return "\n".join([head, *self.rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per in-process measurement")
    parser.add_argument("--process-repeats", type=int, default=3, help="fresh processes per subprocess row")
    args = parser.parse_args()
    load_before = os.getloadavg()
    table = Table()

    env = dict(os.environ)
    cold = subprocess_runs([sys.executable, "-c", "import torch"], env, args.process_repeats)
    table.add("`import torch` in a fresh interpreter", {1: cold})

    loads: dict[int, list[float]] = {}
    for t in THREADS:
        torch.set_num_threads(t)
        loads[t] = timed(
            lambda: (FaceDetector(), load_extractor(DEFAULT_EXTRACTOR)), args.process_repeats, warm_up=False
        )
    table.add("load MTCNN + dlib ResNet (torch imported)", loads, target="< 1 s (ResNet)")

    analyzer = FaceAnalyzer()
    cases = photos()
    for label, (image, goal) in cases.items():
        runs, found = {}, 0
        for t in THREADS:
            torch.set_num_threads(t)
            found = len(analyzer.analyse(image))
            runs[t] = timed(lambda: analyzer.analyse(image), args.repeats)
        table.add(f"detect + align + describe: {label} (found {found})", runs, target=goal)

    chips = lfw_chips(analyzer, 8)
    target_descriptor = torch.zeros(1, analyzer.extractor.dim)
    for name, step, goal in [
        ("forward", lambda x: forward(analyzer.extractor, x), ""),
        (
            "forward + backward (grad w.r.t. input)",
            lambda x: forward_backward(analyzer.extractor, x, target_descriptor),
            "<= 25 ms at batch 1",
        ),
    ]:
        for batch in (1, 8):
            runs = {}
            for t in THREADS:
                torch.set_num_threads(t)
                runs[t] = timed(lambda: step(chips[:batch]), args.repeats)
            table.add(
                f"descriptor {name}, batch {batch}, per face",
                runs,
                unit="ms",
                per=batch,
                target=goal if batch == 1 else "",
            )

    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "twelve_mp.jpg"
        Image.fromarray(next(iter(cases.values()))[0]).save(photo, quality=92)
        cli = {
            t: subprocess_runs(
                [str(CLOAKD), "faces", str(photo)], {**env, "CLOAKD_THREADS": str(t)}, args.process_repeats
            )
            for t in THREADS
        }
    table.add("one-shot `cloakd faces` on the 12 MP photo as JPEG, end to end (process wall time)", cli)
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    table.note("peak RSS, one-shot `cloakd faces` 12 MP (largest child process)", f"{child_peak:.0f} MB")
    table.note("peak RSS, this bench process (models, 7 photos, batch-8 backward)", f"{own_peak:.0f} MB")

    load_after = os.getloadavg()
    print(
        f"Machine: {machine()}  \nDate: {datetime.datetime.now():%Y-%m-%d %H:%M}  \n"
        f"Command: `.venv/bin/python bench/faces.py --repeats {args.repeats} "
        f"--process-repeats {args.process_repeats}`  \n"
        f"torch {torch.__version__}, threads: torch.set_num_threads(1 | 2) in-process, CLOAKD_THREADS for the "
        f"CLI; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}  \n"
        f"Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"(shared machine: compare minimums)\n"
    )
    print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
