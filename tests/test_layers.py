"""The layers of the code base, enforced (issue 18): the import-linter contracts of
pyproject.toml ([tool.importlinter]) must all be kept.

- the sans-IO cores (HTTP request parsing, route matching, balancers, rate-limit algorithms,
  the circuit breaker, the tunnel wire protocol, config isolation, the exchange core and its
  commands, the runtime tables and the policy chain they hold, the cookie parser, the shared
  health verdict and the node's health state machine) import no trio, socket,
  select, grpc, asyncio or httpcore, directly or through what they import;
- the config compiler reaches policy implementations (and their I/O clients) only through
  `dataplane.policies.build`;
- the tunnel's wire protocol knows nothing of its trio transport;
- `fluxcommon` is below every side; the agent, the control plane and the node import nothing
  of each other.

`.venv/bin/lint-imports` prints the same report, with the chain of imports at fault.
"""

from __future__ import annotations

import pathlib
import textwrap
import tomllib
from typing import Any

import pytest
from importlinter.cli import lint_imports

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

# The cores the architecture names (ARCHITECTURE.md §4, STYLE.md, issue 18).
CORES = {
    "dataplane.http.request",
    "dataplane.routing.matcher",
    "dataplane.balancing",
    "dataplane.policies.ratelimit.algorithms",
    "dataplane.policies.circuit",
    "fluxcommon.tunnel.protocol",
    "dataplane.config.isolation",
    "dataplane.exchange.core",
    "dataplane.exchange.commands",
    "dataplane.http.cookies",
    "dataplane.health.state",
    "fluxcommon.health",
}
IO_LIBRARIES = {"trio", "socket", "select", "grpc", "asyncio", "httpcore"}


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_every_import_contract_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    status = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == 0, report
    assert "BROKEN" not in report


def test_the_io_contract_covers_every_core_and_io_library() -> None:
    contract = _contracts()["sans-io-cores"]
    assert set(contract["source_modules"]) >= CORES
    assert set(contract["forbidden_modules"]) >= IO_LIBRARIES
    assert not contract.get("ignore_imports"), "the cores have no exceptions"
    assert not contract.get("allow_indirect_imports")


def test_the_contract_catches_an_io_import_two_modules_away(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same contract over a small package whose core reaches `socket` through a helper, and
    trio only inside a function: both are reported, so a violation cannot hide."""
    package = tmp_path / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text("from layered import helper\n\n\ndef later():\n    import trio\n")
    (package / "helper.py").write_text("import socket\n")
    forbidden = _contracts()["sans-io-cores"]["forbidden_modules"]
    config = tmp_path / "contracts.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [tool.importlinter]
            root_packages = ["layered"]
            include_external_packages = true
            exclude_type_checking_imports = true

            [[tool.importlinter.contracts]]
            name = "core is sans-IO"
            type = "forbidden"
            source_modules = ["layered.core"]
            forbidden_modules = {forbidden!r}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    status = lint_imports(config_filename=str(config), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == 1, report
    assert "layered.core is not allowed to import socket" in report
    assert "layered.helper -> socket" in report
    assert "layered.core is not allowed to import trio" in report
