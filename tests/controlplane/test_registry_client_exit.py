"""The Python registry client when an application closes it and exits (issue 14): no traceback
from the atexit hook, and the instance is deregistered at once, not left until its TTL."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from support.processes import ControlPlaneProcess

SCRIPT = textwrap.dedent(
    """
    import sys
    from fluxcommon.registry_client import RegistryClient

    client = RegistryClient(sys.argv[1], token=sys.argv[2])
    reg = client.register(sys.argv[3], "10.9.9.9", 8080, ttl="5m")
    print(reg.id, flush=True)
    {close}
    """
)


@pytest.mark.parametrize(
    "close",
    [
        "client.close()",  # the client first: its registrations go with it
        "",  # nothing closed: the atexit hook deregisters
        "client.close(); reg.close()",  # both, in the wrong order
    ],
)
def test_exit_after_close_deregisters_without_a_traceback(module_controlplane: ControlPlaneProcess, close: str) -> None:
    cp = module_controlplane
    service = f"exiting-{abs(hash(close)) % 10_000}"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(close=close), cp.url, cp.token, service],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip() == "10.9.9.9:8080"
    with cp.client() as c:
        r = c.get(f"/api/v1/services/{service}/instances", params={"healthy": "false"})
        assert r.status_code == 200, r.text
        assert r.json()["instances"] == [], "the instance stayed registered after the application exited"
