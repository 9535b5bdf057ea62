"""How commands are declared, and the options several commands share: where cloakd's state is
(``--config`` / ``--state-dir``), and the output folder and format (``--out``, ``--keep``, ``--heic-as``)."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from cloakd.core.errors import CloakdError, os_error_text
from cloakd.core.photo.container import OutputOptions
from cloakd.core.photo.keep import resolve

from ..config import DEFAULT_CONFIG, HEIC_AS, UserConfig, default_config, load_config
from ..state import DEFAULT_STATE_DIR

HELP_WIDTH = 100


def add_command(
    sub, name: str, *, summary: str, description: str, example: str, notes: str = ""
) -> argparse.ArgumentParser:
    """A sub-command: ``summary`` in `cloakd --help`; ``description`` (one paragraph of plain words), ``notes``
    (lines kept as written, e.g. a table) and one ``example`` in its own help."""
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, HELP_WIDTH),
        epilog=(notes + "\n\n" if notes else "") + f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


#: where a command looks without --config, in words
DEFAULT_CONFIG_WORDS = f"{DEFAULT_CONFIG}, or ~/.config/cloakd/cloakd.yaml for a per-user service (install.sh --user)"


def add_config_option(p: argparse.ArgumentParser, *, default: Path | None | bool = True, help: str = "") -> None:
    """``--config FILE``; ``default=True``: :func:`default_config` (the per-user service's file for its user)."""
    p.add_argument(
        "--config",
        type=Path,
        default=default_config() if default is True else default,
        metavar="FILE",
        help=help or f"the service's configuration file (default: {DEFAULT_CONFIG_WORDS})",
    )


def add_state_options(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` (its ``state_dir``) or ``--state-dir DIR``: where users' records are kept."""
    where = p.add_mutually_exclusive_group()
    add_config_option(
        where,
        default=None,
        help=f"use the state directory (state_dir) of this configuration; default: {DEFAULT_CONFIG_WORDS} "
        f"if it exists, else {DEFAULT_STATE_DIR}",
    )
    where.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep users' target classes, enrolled face descriptors and Sybil records in DIR "
        "instead of the configuration's state directory",
    )


def state_dir(args: argparse.Namespace) -> Path:
    """The state directory the options name (see :func:`add_state_options`)."""
    if args.state_dir is not None:
        return args.state_dir
    config = args.config or default_config()
    if args.config is None and not config.exists():
        return DEFAULT_STATE_DIR
    return load_config(config, check_folders=False).state_dir


def number(kind: type, minimum: float, *, inclusive: bool = True):
    """An argparse type: a number of ``kind`` (int or float) of at least ``minimum`` (above it, if not
    ``inclusive``), so that a wrong value is a usage error, never a failure deep inside a command."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if value < minimum or (value == minimum and not inclusive):
            bound = "at least" if inclusive else "more than"
            raise argparse.ArgumentTypeError(f"{text} is too small: it must be {bound} {minimum}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_out_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help=f"folder for {what} (created if missing; nothing in it is ever replaced)",
    )


def add_output_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--out DIR`` and what the written files keep: ``--keep TAG`` and ``--heic-as``."""
    add_out_option(p, what)
    p.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="TAG",
        help="EXIF tag to keep, e.g. DateTimeOriginal (repeatable; GPS and Orientation never)",
    )
    p.add_argument(
        "--heic-as",
        choices=HEIC_AS,
        default=UserConfig.heic_as.lower(),
        help="format of the copies of HEIC photos (default %(default)s)",
    )


def output_settings(args: argparse.Namespace) -> tuple[tuple[str, ...], OutputOptions]:
    """(tags to keep, output options) from ``--keep`` and ``--heic-as``; a bad tag name is an error before any
    file is touched."""
    return resolve(args.keep), OutputOptions(heic_as=args.heic_as.upper())


def output_folder(folder: Path) -> Path:
    """``--out DIR``, created if missing; CloakdError if it is a file or cannot be made or written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CloakdError(
            f"--out {folder}: this is a file, not a folder; fix: name a folder (it is created if missing)"
        ) from None
    except OSError as e:
        raise CloakdError(f"--out: cannot create the folder {os_error_text(e, folder)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CloakdError(f"--out {folder}: cannot write into this folder; fix: choose a folder you can write to")
    return folder
