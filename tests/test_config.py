"""The service configuration: every problem is reported with the file, the line and a fix."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from cloakd.daemon.cli import main
from cloakd.daemon.config import ConfigError, Window, load_config, parse_config
from conftest import REPO

EXAMPLE = REPO / "config" / "cloakd.example.yaml"


def problems_of(text: str, tmp_path: Path, check_folders: bool = True) -> list[str]:
    path = tmp_path / "cloakd.yaml"
    path.write_text(text)
    if not check_folders:
        return parse_config(text, path)[1]
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return e.value.problems


def line_of(problem: str) -> int:
    m = re.match(r"(.+?):(\d+): (.+); fix: (.+)$", problem)
    assert m, f"not FILE:LINE: message; fix: ...: {problem!r}"
    return int(m[2])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("out", "ready", "archive", "b_out", "b_ready"):
        (tmp_path / name).mkdir()
    return tmp_path


def user_block(
    name: str = "alice", out: str = "out", ready: str = "ready", extra: str = "", archive: str = "archive"
) -> str:
    return (
        f"  {name}:\n    account: root\n    outbound:\n      - path: {out}\n    ready: {ready}\n"
        f"    originals: {{policy: archive, archive: {archive}}}\n{extra}"
    )


def test_example_config_is_valid_apart_from_its_folders(tmp_path: Path):
    text = EXAMPLE.read_text().replace("account: alice", "account: root")
    config, problems = parse_config(text, EXAMPLE)
    assert problems == []
    alice = config.users["alice"]
    assert alice.account == "root" and alice.mode == "mid" and alice.others == "away"
    assert alice.outbound[0].recursive and not alice.outbound[0].polling
    assert alice.held == Path("/home/alice/Pictures/Held")  # the documented default: "Held" beside ready
    assert alice.originals.policy == "archive" and config.workers == 1 and config.windows == ()


def test_example_sybil_block_turns_on_by_removing_its_comment_marks():
    text = EXAMPLE.read_text().replace("account: alice", "account: root")
    text = text.replace("    # sybil:", "    sybil:").replace("    #   ", "      ")
    config, problems = parse_config(text, EXAMPLE)
    assert problems == []
    sybil = config.users["alice"].sybil
    assert sybil is not None and sybil.per_day == 2.0
    assert sybil.candidates == Path("/home/alice/Pictures/SybilCandidates")


def test_a_valid_config_loads(tree: Path):
    path = tree / "cloakd.yaml"
    path.write_text(
        "stable_seconds: 2\nprocessing_windows: ['22:30-06:00']\nusers:\n"
        + user_block(extra="    keep_metadata: [datetimeoriginal]\n    heic_as: heif\n")
    )
    config = load_config(path)
    alice = config.users["alice"]
    assert alice.outbound[0].path == tree / "out" and alice.ready == tree / "ready"
    assert alice.held == tree / "Held" and alice.keep_metadata == ("DateTimeOriginal",) and alice.heic_as == "HEIF"
    assert config.stable_seconds == 2.0 and str(config.windows[0]) == "22:30-06:00"


def test_unknown_keys_name_the_line_and_suggest_the_known_key(tree: Path):
    text = "wrokers: 2\nusers:\n" + user_block(extra="    moed: high\n")
    problems = problems_of(text, tree, check_folders=False)
    assert [line_of(p) for p in problems] == [1, 9]
    assert "unknown key 'wrokers'" in problems[0] and "did you mean 'workers'?" in problems[0]
    assert "users.alice.moed" in problems[1] and "'mode'" in problems[1]


def test_wrong_types_and_values(tree: Path):
    text = "workers: two\nstable_seconds: true\nprocessing_windows: ['1am-6am']\nusers:\n" + user_block(
        extra="    mode: ultra\n    keep_metadata: [GPSLatitude]\n    sybil: {candidates: a, output: b, rate: lots}\n"
    )
    problems = problems_of(text, tree, check_folders=False)
    assert [line_of(p) for p in problems] == [1, 2, 3, 11, 12, 13]
    assert "workers is 'two', it must be a whole number" in problems[0]
    assert "stable_seconds is True" in problems[1]
    assert "HH:MM-HH:MM" in problems[2]
    assert "use one of: low, mid, high" in problems[3]
    assert "GPSLatitude" in problems[4] and "cannot be kept" in problems[4]
    assert "rate 'lots'" in problems[5]


def test_invalid_yaml_reports_its_line(tmp_path: Path):
    problems = problems_of("workers: 1\nusers:\n  alice: [unclosed\n  bob: 2\n", tmp_path, check_folders=False)
    assert len(problems) == 1 and "not valid YAML" in problems[0] and line_of(problems[0]) == 4


def test_missing_folders_and_accounts(tree: Path):
    text = "users:\n" + user_block(out="nowhere").replace("account: root", "account: nobody-such-account")
    problems = problems_of(text, tree, check_folders=False)
    assert len(problems) == 1 and line_of(problems[0]) == 3 and "no unix account" in problems[0]
    problems = problems_of("users:\n" + user_block(out="nowhere"), tree)
    assert len(problems) == 1 and line_of(problems[0]) == 5
    assert f"the outbound folder {tree / 'nowhere'} does not exist" in problems[0] and "mkdir -p" in problems[0]


def test_two_users_sharing_a_folder(tree: Path):
    (tree / "b_archive").mkdir()
    text = "users:\n" + user_block() + user_block("bob", out="b_out", ready="ready", archive="b_archive")
    problems = problems_of(text, tree)
    shared = [p for p in problems if "shared folders" in p]
    assert shared and all(line_of(p) == 12 for p in shared), problems  # bob's ready line (and held beside it)
    assert f"user bob's ready folder {tree / 'ready'} and user alice's ready folder {tree / 'ready'}" in shared[0]


def test_a_ready_folder_inside_an_outbound_folder(tree: Path):
    (tree / "out" / "ready").mkdir()
    problems = problems_of("users:\n" + user_block(ready="out/ready"), tree)
    assert len(problems) == 2, problems  # the ready folder, and the default held folder beside it
    assert (
        line_of(problems[0]) == 6
        and f"the ready folder {tree / 'out/ready'} is inside (or is) the outbound folder {tree / 'out'}" in problems[0]
    )


def test_archive_policy_needs_a_folder_and_keep_never_deletes(tree: Path):
    text = (
        "users:\n  alice:\n    account: root\n    outbound: [out]\n    ready: ready\n"
        "    originals: {policy: archive}\n  bob:\n    account: root\n    outbound: [b_out]\n    ready: b_ready\n"
        "    originals:\n      policy: keep\n      delete_after_days: 3\n"
    )
    problems = problems_of(text, tree, check_folders=False)
    assert [line_of(p) for p in problems] == [6, 13]
    assert "needs an `archive:` folder" in problems[0] and "policy keep never deletes" in problems[1]


def test_check_config_command(tree: Path, capsys):
    good, bad = tree / "good.yaml", tree / "bad.yaml"
    good.write_text("users:\n" + user_block())
    bad.write_text("users:\n" + user_block(ready="out"))
    assert main(["check-config", "--config", str(good)]) == 0
    assert "OK (1 user, 1 outbound folder)" in capsys.readouterr().out
    assert main(["check-config", "--config", str(bad)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{bad}:6: user alice: the ready folder {tree / 'out'} is inside (or is) the outbound")
    assert main(["check-config", "--config", str(tree / "absent.yaml")]) == 2
    assert "cannot read the configuration" in capsys.readouterr().err


def test_processing_windows_run_past_midnight():
    night, day = Window(22 * 60, 6 * 60), Window(1 * 60, 6 * 60)
    at = lambda h, m=0: datetime(2024, 5, 1, h, m)  # noqa: E731
    assert night.contains(at(23)) and night.contains(at(2)) and not night.contains(at(6)) and not night.contains(at(12))
    assert day.contains(at(1)) and day.contains(at(5, 59)) and not day.contains(at(0, 59))
    assert night.next_start(at(12)) == at(22) and day.next_start(at(12)) == datetime(2024, 5, 2, 1, 0)


def test_missing_keys_point_at_their_section(tmp_path: Path):
    text = "users:\n  alice:\n    account: root\n    outbound: [out]\n    originals: {policy: keep}\n  bob: 5\n"
    problems = problems_of(text, tmp_path, check_folders=False)
    assert [line_of(p) for p in problems] == [3, 6]
    assert "'users.alice.ready' is missing" in problems[0] and "users.bob must be a mapping" in problems[1]
