"""`flux-tunnel` that cannot start says why in one line naming the setting (issue 14 item 2: a
taken `webServer.port` printed ~50 lines of ExceptionGroup). Real child processes, no node."""

from __future__ import annotations

import pathlib
import socket
import subprocess

from support.processes import executable, free_port


def run_agent(config: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("flux-tunnel"), "-c", str(config), *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_taken_webserver_port_is_one_line_naming_it(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "agent.toml"
        config.write_text(
            f'serverAddr = "127.0.0.1"\nserverPort = {free_port()}\nauth.token = "t"\n'
            f'webServer.addr = "127.0.0.1"\nwebServer.port = {port}\n'
            '[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocalPort = 22\nremotePort = 6022\n'
        )
        done = run_agent(config)
    assert done.returncode == 1, done
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "ExceptionGroup" not in out and "+-+" not in out, out
    errors = [line for line in done.stderr.splitlines() if "webServer.port" in line]
    assert len(errors) == 1, out
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0] and "in use" in errors[0].lower(), errors
