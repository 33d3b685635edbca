"""`fluxctl get` tables: every kind has columns (issue 14: `get registries` and `get alerts`
crashed with a KeyError as soon as one existed), and cut cells end in an ellipsis."""

from __future__ import annotations

import os
import subprocess

import pytest
from support.processes import ControlPlaneProcess, executable

from controlplane.cli.fluxctl import COLUMNS, ELLIPSIS, MAX_CELL, table
from controlplane.spec import KINDS


def fluxctl(cp: ControlPlaneProcess, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_TOKEN": cp.token if token is None else token}
    return subprocess.run([executable("fluxctl"), *args], env=env, capture_output=True, text=True, timeout=60)


def test_every_kind_fluxctl_lists_has_columns() -> None:
    assert set(KINDS) | {"services", "nodes", "history", "tokens"} <= set(COLUMNS)


def test_a_cut_cell_ends_in_an_ellipsis_and_a_short_one_is_whole() -> None:
    rows = [{"name": "x" * 200}, {"name": "short"}]
    lines = table(rows, [("NAME", lambda r: r["name"])]).splitlines()
    assert lines[1] == "x" * (MAX_CELL - 1) + ELLIPSIS
    assert lines[2] == "short"


@pytest.mark.parametrize(
    ("plural", "body", "shown"),
    [
        ("registries", {"name": "etcd-main", "type": "etcd", "address": "127.0.0.1:1", "export": True}, "etcd"),
        (
            "alerts",
            {"name": "orders-low", "kind": "min_healthy", "service": "orders", "threshold": 2,
             "webhook": "https://hooks.example.com/flux/" + "x" * 80},
            "min_healthy",
        ),
    ],
)  # fmt: skip
def test_get_registries_and_alerts_print_tables(
    module_controlplane: ControlPlaneProcess, plural: str, body: dict[str, object], shown: str
) -> None:
    with module_controlplane.client() as c:
        r = c.post(f"/api/v1/{plural}", json=body)
        assert r.status_code == 201, r.text
    result = fluxctl(module_controlplane, "get", plural)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[0] == "NAME"
    row = next(line for line in rows if line.startswith(str(body["name"])))
    assert shown in row
    if plural == "alerts":  # the long webhook is cut, visibly
        assert row.rstrip().endswith(ELLIPSIS)
    assert "Traceback" not in result.stderr
