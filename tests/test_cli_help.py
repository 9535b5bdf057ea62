"""`cloakd --help` and every command's help are written for users: plain words, every option explained, and
one example per command."""

from __future__ import annotations

import argparse
import subprocess
import tomllib

from cloakd.daemon.cli import build_parser
from conftest import CLOAKD, REPO


def commands(parser: argparse.ArgumentParser, prefix: str = "cloakd") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name (``cloakd targets build``), nested ones included."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix} {name}"] = sub
                found.update(commands(sub, f"{prefix} {name}"))
    return found


def test_the_main_help_speaks_to_users():
    text = build_parser().format_help()
    assert "register(" not in text and "sub-command lives" not in text and "``" not in text
    assert "cloakd protect" in text and "examples:" in text


def test_every_command_has_plain_help_an_example_and_explains_every_option():
    found = commands(build_parser())
    assert {"cloakd protect", "cloakd preview", "cloakd targets build", "cloakd check-config"} <= set(found)
    for name, parser in found.items():
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, name
        assert "example:" in text and name in text.split("example:")[1], name
        unexplained = [
            a.dest
            for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help
        ]
        assert unexplained == [], f"{name}: {unexplained} have no help"


def test_version_is_the_installed_package_version():
    run = subprocess.run([str(CLOAKD), "--version"], capture_output=True, text=True, timeout=60)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert (run.returncode, run.stdout, run.stderr) == (0, f"cloakd {version}\n", "")


def test_protect_help_says_in_one_line_per_mode_what_it_buys_and_where_the_tables_are():
    from cloakd.core.cloak.presets import PRESETS

    text = commands(build_parser())["cloakd protect"].format_help()
    modes = text.split("modes (README, 'What the cloak protects against'", 1)[1].split("example:")[0]
    lines = [line.split() for line in modes.strip().splitlines()[1:]]
    assert [words[0] for words in lines] == list(PRESETS)  # one line per mode, every mode
    for words in lines:
        assert words[0] == "paper" or "butteraugli" in words, words  # how visible, beside what it buys
