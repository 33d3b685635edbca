"""A node whose --admin port is taken stops with one line naming it (exit 2), with one worker or
several, instead of a trio ExceptionGroup traceback."""

from __future__ import annotations

import pathlib
import socket

import pytest
from support.node import NodeProcess
from support.processes import ControlPlaneProcess


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_admin_port_is_one_line(
    module_controlplane: ControlPlaneProcess, tmp_path: pathlib.Path, workers: int
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        node = NodeProcess(tmp_path, module_controlplane.grpc_addr, node_id=f"taken-{workers}", workers=workers)
        node.admin_port = port
        node.start(wait_ready=False)
        assert node.proc is not None
        try:
            code = node.proc.wait(30)
        finally:
            node.stop()
    out = node.log_path.read_text()
    assert code == 2, out
    assert f"flux-node: cannot start: --admin 127.0.0.1:{port}: Address already in use" in out, out
    assert "Traceback" not in out, out
