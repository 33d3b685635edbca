"""A control plane given a port another one holds stops with one line naming it (exit 2)."""

from __future__ import annotations

import pathlib
import subprocess

from support.processes import ControlPlaneProcess, executable, free_port


def _start(tmp_path: pathlib.Path, http: str, grpc: str) -> subprocess.CompletedProcess[str]:
    cmd = [executable("flux-controlplane"), "--db", f"sqlite:///{tmp_path / 'flux.db'}", "--data-dir", str(tmp_path),
           "--http", http, "--grpc", grpc]  # fmt: skip
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:  # it started: it shares the port
        raise AssertionError(f"a second control plane started on a taken port:\n{exc.stderr!r}") from None


def test_a_taken_grpc_port_is_refused_not_shared(
    module_controlplane: ControlPlaneProcess, tmp_path: pathlib.Path
) -> None:
    # gRPC binds with SO_REUSEPORT by default: the second one started and took half of the nodes
    done = _start(tmp_path, f"127.0.0.1:{free_port()}", module_controlplane.grpc_addr)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot listen for the config stream (gRPC) on {module_controlplane.grpc_addr}" in done.stderr


def test_a_taken_rest_port_is_named_without_a_traceback(
    module_controlplane: ControlPlaneProcess, tmp_path: pathlib.Path
) -> None:
    taken = module_controlplane.url.removeprefix("http://")
    done = _start(tmp_path, taken, f"127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot listen for the REST API on {taken}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr
