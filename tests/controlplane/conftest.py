"""Fixtures shared by the control-plane tests."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from support.registry_backends import make_registry

from controlplane.registry.store import RegistryStore


@pytest.fixture
def registry(tmp_path: pathlib.Path) -> Iterator[RegistryStore]:
    """A RegistryStore on a fresh SQLite database."""
    store, engine = make_registry(tmp_path)
    yield store
    engine.dispose()
