"""The state directory: its place, its per-user layout, and who may read it.

Layout (STATE is the configuration's ``state_dir``, /var/lib/cloakd by default)::

    STATE/ledger.sqlite3              every photo the service has seen (ledger.py)
    STATE/service.json                the service's pid and start, and its clean stop (running.py)
    STATE/users/NAME/target.json      the user's target class (targets.py)
    STATE/users/NAME/references.npz   the user's enrolled face descriptors (references.py)
    STATE/users/NAME/sybil.json       what became of each Sybil candidate (sybil.py)

Permissions: face descriptors are biometric data. Every record is written 0600 (files.replace_file), and
``users`` and each user's folder are 0700, created so and tightened if found looser, so only the account
that runs cloakd (root, for the service) can read them. STATE itself is created 0700 when cloakd creates
it; an existing one is left as it is (it may be any folder the administrator chose).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cloakd.core.errors import CloakdError

DEFAULT_STATE_DIR = Path("/var/lib/cloakd")
PRIVATE = 0o700
#: user names as configured (users: NAME) and as folders of the state directory
_USER_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$")
USER_NAME_RULE = "letters, digits, '.', '_' and '-' (at most 64; not '.' or '..')"


def valid_user_name(name: str) -> bool:
    return bool(_USER_NAME.match(name)) and name not in (".", "..")


def user_dir(state_dir: Path | str, user: str, *, create: bool = False) -> Path:
    """``STATE/users/NAME``; with ``create``, made (or tightened) private, ready for a record."""
    if not valid_user_name(user):
        raise CloakdError(f"invalid user name {user!r}: use {USER_NAME_RULE}")
    folder = Path(state_dir) / "users" / user
    if create:
        if not folder.parent.parent.is_dir():
            _private(folder.parent.parent)
        _private(folder.parent)
        _private(folder)
    return folder


def _private(folder: Path) -> None:
    """``folder`` exists with mode 0700."""
    try:
        os.mkdir(folder, PRIVATE)
    except FileExistsError:
        pass
    if os.stat(folder).st_mode & 0o777 != PRIVATE:
        os.chmod(folder, PRIVATE)
