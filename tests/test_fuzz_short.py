"""A short, fixed-seed run of bench/fuzz.py's mutation fuzzing (the long run is the bench's): every mutant of
the metadata corpus ends in a clean output or a specific error, none in a crash or a hang."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz  # noqa: E402


@pytest.mark.parametrize("suffixes", [(".jpg",), (".png",), (".webp",), (".heic", ".heif")])
def test_mutants_end_clean_or_in_a_specific_error(data_dir, suffixes):
    seeds = sorted(p for p in (data_dir / "metadata").iterdir() if p.suffix.lower() in suffixes)
    corpus = [p.read_bytes() for p in seeds]
    rng = random.Random(0)
    outcomes = {}
    for i in range(150):
        data = corpus[i % len(corpus)]
        mutant = fuzz.mutate(data, rng.choice(corpus), rng)
        if suffixes == (".png",) and i % 2:
            mutant = fuzz.fix_png_crcs(mutant)
        outcome, detail = fuzz.run_one(mutant, timeout=0)  # no alarm here: the suite has its own timeouts
        outcomes.setdefault(outcome, []).append(detail)
    assert "crash" not in outcomes, outcomes["crash"][:3]
    assert outcomes.get("clean") or suffixes == (".png",), outcomes.keys()  # the mutants reach the writers too
    assert outcomes.get("refused"), outcomes.keys()
