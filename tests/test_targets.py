"""Target bank and the persistent per-user target class (eq. 3)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cloakd.core.errors import CloakdError
from cloakd.core.extractors import DEFAULT_EXTRACTOR
from cloakd.core.targets import TargetBank, choose_target
from cloakd.daemon.targets import TargetStore
from conftest import REPO


@pytest.fixture(scope="module")
def bank():
    return TargetBank.load()


def test_shipped_bank_covers_the_target_pool(bank, data_dir):
    pool = sorted(p.name for p in (data_dir / "targets").iterdir() if p.is_dir())
    assert bank.names == pool and len(pool) == 483
    assert bank.extractor == DEFAULT_EXTRACTOR
    assert all(len(d) == 4 for d in bank.descriptors)
    assert TargetBank.from_bytes(bank.to_bytes()).digest() == bank.digest()


def test_bank_build_reproduces_the_shipped_entries(tmp_path, data_dir, bank):
    """`cloakd targets build` on three identities gives the shipped bank's descriptors for them."""
    src = tmp_path / "ids"
    src.mkdir()
    names = ["Aaron_Peirsol", "Costas_Simitis", "Michelle_Yeoh"]
    for n in names:
        (src / n).symlink_to(data_dir / "targets" / n)
    out = tmp_path / "bank.npz"
    run = subprocess.run(
        [sys.executable, "-m", "cloakd.daemon.cli", "targets", "build", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    built = TargetBank.load(out)
    assert built.names == names
    for n, d in zip(built.names, built.descriptors):
        np.testing.assert_allclose(d, bank.descriptors[bank.index(n)], atol=1e-4)


def test_choice_follows_eq3(bank, lfw_descriptors):
    names, _, x = lfw_descriptors
    user = x[names == "Hillary_Clinton"][:8]
    choice = choose_target(bank, user, k=20, rng=np.random.default_rng(7))
    assert len(choice.candidates) == 20 and choice.name in choice.candidates
    cands = bank.centroids[[bank.index(n) for n in choice.candidates]]
    mins = np.linalg.norm(user[:, None] - cands[None], axis=2).min(0)
    assert choice.min_distance == pytest.approx(mins.max(), abs=1e-6)
    # the farthest candidate is farther from the user than a typical one
    assert choice.min_distance > np.median(mins)


def test_target_is_persistent_and_changes_only_by_rotation(tmp_path, bank, lfw_descriptors):
    names, _, x = lfw_descriptors
    refs = x[names == "Jackie_Chan"][:6]
    store = TargetStore(tmp_path, bank)
    assert store.get("alice") is None
    first = store.choose("alice", refs)
    again = TargetStore(tmp_path, bank).get("alice")  # a new process sees the same record
    assert again.name == first.name and np.allclose(again.centroid, first.centroid)
    with pytest.raises(CloakdError, match="already has target class"):
        store.choose("alice", x[names == "Jackie_Chan"][6:])
    rotated, warning = store.rotate("alice", refs)
    assert rotated.name != first.name and first.name in rotated.previous
    assert "weakens protection" in warning and first.name in warning
    assert TargetStore(tmp_path, bank).get("alice").name == rotated.name


def test_corrupt_target_record_is_a_clear_error(tmp_path, bank):
    store = TargetStore(tmp_path, bank)
    store.path("bob").parent.mkdir(parents=True)
    store.path("bob").write_text("{not json")
    with pytest.raises(CloakdError, match="unreadable target record"):
        store.get("bob")
    with pytest.raises(CloakdError, match="invalid user name"):
        store.get("../etc")
