"""Fixtures shared by every suite: free ports, a control plane child process, MariaDB databases.

Helpers live in `tests/support/` and are imported as `from support.processes import ...`.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from support.processes import (
    ControlPlaneProcess,
    free_port,
    mariadb_database,
    mariadb_unreachable,
    wait_until,
)

__all__ = ["ControlPlaneProcess", "free_port", "wait_until"]


@pytest.fixture
def controlplane(tmp_path: pathlib.Path) -> Iterator[ControlPlaneProcess]:
    """A running control plane on a fresh SQLite database in `tmp_path` (stopped after the test)."""
    with ControlPlaneProcess(tmp_path / "controlplane") as cp:
        yield cp


@pytest.fixture(scope="module")
def module_controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    """One control plane (SQLite) shared by the tests of a module that do not interfere."""
    with ControlPlaneProcess(tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def mariadb_available() -> None:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def mariadb_url(mariadb_available: None) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty MariaDB database, dropped after the test."""
    with mariadb_database() as url:
        yield url
