"""A user's mistakes get one clear line and Exit.FAILED, never "internal error" (Exit.INTERNAL is for bugs);
one bad path in a batch fails alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloakd.daemon.cli import main
from cloakd.daemon.cli.exits import Exit

NO_FACE = "metadata/DSCN0010.jpg"  # a landscape: protect only strips it (fast)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def errors(err: str) -> list[str]:
    """stderr without the progress lines."""
    return [line for line in err.splitlines() if line and not line.startswith(("cloakd: protect: ", "cloakd: strip: "))]


def test_protect_a_batch_with_a_missing_photo_and_a_folder(data_dir, tmp_path, capsys):
    good = data_dir / NO_FACE
    missing, folder = tmp_path / "missing.jpg", tmp_path / "a-folder"
    folder.mkdir()
    out = tmp_path / "out"
    code, stdout, err = run(["protect", "--out", out, good, missing, folder], capsys)
    assert code == Exit.FAILED
    assert errors(err) == [
        f"cloakd: error: {folder}: no photo in this folder (--recursive also looks in its sub-folders)",
        f"cloakd: error: {missing}: No such file or directory",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["DSCN0010.jpg"]
    assert f"{good} -> {out / 'DSCN0010.jpg'}" in stdout
    assert stdout.splitlines()[-1].startswith("2 photos: 0 protected, 1 metadata only, 1 failed, ")


def test_strip_into_a_file_or_an_impossible_folder(data_dir, tmp_path, capsys):
    photo = data_dir / NO_FACE
    existing = tmp_path / "existing.jpg"
    existing.write_bytes(b"mine")
    code, _, err = run(["strip", "--out", existing, photo], capsys)
    assert code == Exit.FAILED and errors(err) == [
        f"cloakd: error: --out {existing}: this is a file, not a folder; fix: name a folder (it is created if missing)"
    ]
    assert existing.read_bytes() == b"mine"
    code, _, err = run(["strip", "--out", "/proc/nope", photo], capsys)
    assert code == Exit.FAILED and errors(err) == [
        "cloakd: error: --out: cannot create the folder /proc/nope: No such file or directory"
    ]


def _config(tmp_path: Path) -> Path:
    for name in ("out", "ready"):
        (tmp_path / name).mkdir(exist_ok=True)
    config = tmp_path / "cloakd.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nusers:\n  alice:\n    account: root\n    outbound: [out]\n"
        f"    ready: ready\n    originals: {{policy: keep}}\n"
    )
    return config


MISTAKES = {
    "faces, a folder": (["faces", "{tmp}"], "Is a directory"),
    "inspect, a missing file": (["inspect", "{tmp}/none.jpg"], "No such file or directory"),
    "strip, a folder without photos": (["strip", "{tmp}", "--out", "{tmp}/out"], "no photo in this folder"),
    "targets build, a missing folder": (
        ["targets", "build", "{tmp}/none", "--out", "{tmp}/bank.npz"],
        "not a folder of identity sub-folders",
    ),
    "target, an impossible user name": (
        ["target", "show", "--user", "../etc", "--state-dir", "{tmp}"],
        "invalid user name",
    ),
    "target choose, missing photos": (
        ["target", "choose", "--user", "alice", "--state-dir", "{tmp}", "--photos", "{tmp}/none"],
        "no such file or folder",
    ),
    "enrol, missing photos": (
        ["enrol", "--user", "alice", "--state-dir", "{tmp}", "{tmp}/none"],
        "no such file or folder",
    ),
    "enrol, a broken configuration": (
        ["enrol", "--user", "alice", "--config", "{tmp}/broken.yaml", "{tmp}"],
        "broken.yaml:2: not valid YAML",
    ),
    "protect, --out is a file": (["protect", "--out", "{tmp}/broken.yaml", "{tmp}/none.jpg"], "not a folder"),
    "protect --user without a target": (
        ["protect", "--user", "alice", "--state-dir", "{tmp}", "--out", "{tmp}/o", "{tmp}/none.jpg"],
        "has no target class yet",
    ),
    "preview, a missing photo": (
        ["preview", "{tmp}/none.jpg", "{tmp}/none.jpg", "--out", "{tmp}/p.png"],
        "No such file or directory",
    ),
    "sybil, not enrolled": (
        ["sybil", "--user", "alice", "--candidates", "{tmp}", "--out", "{tmp}/s", "--state-dir", "{tmp}"],
        "is not enrolled",
    ),
    "evaluate, a missing folder": (["evaluate", "{tmp}/none"], "no such folder"),
    "run, a missing configuration": (["run", "--config", "{tmp}/none.yaml"], "cannot read the configuration"),
    "status, a folder as configuration": (["status", "--config", "{tmp}"], "Is a directory"),
    "status, no configuration": (["status", "--config", "{tmp}/none.yaml"], "fix: create it"),
    "check-config, a missing configuration": (["check-config", "--config", "{tmp}/none.yaml"], "fix: create it"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_every_command_answers_a_mistake_with_one_line(case, tmp_path, capsys):
    argv, words = MISTAKES[case]
    (tmp_path / "broken.yaml").write_text("users: [\n")
    code, _, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    lines = errors(err)
    assert code == Exit.FAILED and len(lines) == 1, err
    assert lines[0].startswith("cloakd: error: ") and words in lines[0] and "[Errno" not in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["protect", "p.jpg", "--out", "o", "--rho", "-0.1"],
            "argument --rho: -0.1 is too small: it must be more than 0",
        ),
        (["protect", "p.jpg", "--out", "o", "--steps", "many"], "argument --steps: 'many' is not a whole number"),
        (["strip", "p.jpg", "--out", "o", "--max-megapixels", "0"], "it must be more than 0"),
        (["sybil", "--user", "a", "--candidates", "c", "--out", "o", "--count", "0"], "it must be at least 1"),
        (["evaluate", "d", "--users", "0"], "argument --users: 0 is too small"),
        (["target", "choose", "--user", "a", "--candidates", "-3"], "argument --candidates: -3 is too small"),
    ],
)
def test_a_number_out_of_range_is_a_usage_error(argv, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == Exit.FAILED and words in capsys.readouterr().err


def test_state_commands_read_the_state_directory_of_the_configuration(data_dir, tmp_path, capsys):
    config = _config(tmp_path)
    photo = data_dir / "faces" / "Bill_Gates" / "Bill_Gates_0001.jpg"
    code, out, err = run(["target", "choose", "--user", "alice", "--config", config, "--photos", photo], capsys)
    assert code == Exit.OK, err
    assert (tmp_path / "state" / "users" / "alice" / "target.json").exists()
    code, out, _ = run(["target", "show", "--user", "alice", "--config", config], capsys)
    assert code == Exit.OK and "alice: target class" in out
    code, out, _ = run(["target", "show", "--user", "alice", "--state-dir", tmp_path / "elsewhere"], capsys)
    assert code == Exit.NOTHING and "no target class chosen yet" in out
