"""One rule for file modes (README, "Permissions"): the one-shot commands' outputs follow the umask, the
service's outputs follow the folder they land in, and state records (face descriptors) are 0600 in 0700
folders."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cloakd.daemon import deliver
from cloakd.daemon.cli import main
from cloakd.daemon.privileges import Account
from cloakd.daemon.references import Described, ReferenceStore
from cloakd.daemon.sybil import SybilRecord
from cloakd.daemon.targets import TargetStore
from servicekit import second_account, shared_tmp, user_tree


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for a test, and restore it after."""
    saved = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(saved)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_cli_outputs_follow_the_umask(data_dir, tmp_path, umask, capsys, mask, expected):
    umask(mask)
    out = tmp_path / "out"
    assert main(["strip", str(data_dir / "metadata" / "DSCN0010.jpg"), "--out", str(out)]) == 0
    assert mode(out / "DSCN0010.jpg") == expected


def test_service_outputs_take_the_mode_of_their_folder():
    owner = second_account()
    user = Account.lookup(owner.pw_name)
    with shared_tmp("cloakd-modes-") as base:
        ready = user_tree(base, owner, "ready")["ready"]
        for folder_mode, file_mode in ((0o750, 0o640), (0o700, 0o600), (0o755, 0o644)):
            ready.chmod(folder_mode)
            name = f"photo-{folder_mode:o}.jpg"
            deliver.write_new(user, ready / name, b"bytes", tag=name)
            assert mode(ready / name) == file_mode
        ready.chmod(0o750)
        deliver.write_new(user, ready / "2024" / "june" / "a.jpg", b"bytes", tag="x")
        assert mode(ready / "2024") == mode(ready / "2024" / "june") == 0o750  # not the service's umask
        assert mode(ready / "2024" / "june" / "a.jpg") == 0o640
        assert (ready / "2024" / "june" / "a.jpg").stat().st_uid == owner.pw_uid


def _descriptors(n: int) -> list[Described]:
    """n consistent one-face photos (one person: small variations of one descriptor)."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=128).astype(np.float32)
    base *= 0.5 / np.linalg.norm(base)
    out = []
    for i in range(n):
        desc = (base + rng.normal(scale=0.01, size=128)).astype(np.float32)
        out.append(Described(f"me-{i}.jpg", hashlib.sha256(desc.tobytes()).hexdigest(), desc, 1))
    return out


def test_state_records_are_private(tmp_path, umask):
    umask(0o022)
    state = tmp_path / "state"
    refs = ReferenceStore(state, "dlib_resnet").enrol("alice", _descriptors(3), 0.6)
    TargetStore(state).choose("alice", refs.descriptors)
    SybilRecord(state, "alice").save({})
    folder = state / "users" / "alice"
    assert {p.name: mode(p) for p in folder.iterdir()} == {
        "references.npz": 0o600,
        "target.json": 0o600,
        "sybil.json": 0o600,
    }
    assert mode(folder) == mode(state / "users") == mode(state) == 0o700
    # a state directory from before this rule, readable by everyone, is tightened on the next write
    for p in (folder, state / "users"):
        p.chmod(0o755)
    (folder / "references.npz").chmod(0o644)
    ReferenceStore(state, "dlib_resnet").enrol("alice", _descriptors(4), 0.6)
    assert mode(folder / "references.npz") == 0o600 and mode(folder) == mode(state / "users") == 0o700


def test_an_existing_state_directory_keeps_its_own_mode(tmp_path):
    """The administrator chose it (it may be any folder): only cloakd's own folders inside are tightened."""
    tmp_path.chmod(0o755)
    SybilRecord(tmp_path, "bob").save({})
    assert mode(tmp_path) == 0o755 and mode(tmp_path / "users" / "bob") == 0o700
