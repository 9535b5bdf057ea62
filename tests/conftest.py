"""Shared test fixtures. Test data is read from ../shared/data (never copied into the repo).

Models are loaded once per test session (session-scoped fixtures below).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLOAKD_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test data not found at {DATA} (set CLOAKD_TEST_DATA)")
    return DATA
