"""End-to-end: real `flux-node` processes enrolling, restarting, renewing and being revoked.

One control plane with a short node-certificate lifetime (20 s, so renewal happens while
the test watches) serves the module.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from support.node import NodeProcess
from support.processes import ControlPlaneProcess, executable, free_port, wait_until

from controlplane.pki import CertificateAuthority
from fluxcommon.trust import JoinToken

pytestmark = pytest.mark.slow

TTL = 20


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with ControlPlaneProcess(tmp_path_factory.mktemp("cp"), extra_args=("--node-cert-ttl", f"{TTL}s")) as cp:
        doc = {
            "listeners": [{"name": "pub", "port": free_port()}],
            "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9001}]}],
            "routes": [{"name": "r", "listener": "pub", "cluster": "c", "path": "/"}],
        }
        with cp.client() as c:
            assert c.post("/api/v1/apply", json=doc).status_code == 200
        yield cp


@pytest.fixture
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


_weights = iter(range(2, 1_000_000))


def bump(c: httpx.Client) -> int:
    r = c.put("/api/v1/clusters/c", json={"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9001,
                                                                       "weight": next(_weights)}]})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    return int(r.headers["x-flux-config-version"])


def run_node(cp: ControlPlaneProcess, workdir: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`flux-node` expected to stop at once (a refusal)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [executable("flux-node"), "--control-plane", cp.grpc_addr, "--admin", f"127.0.0.1:{free_port()}",
         "--cache-dir", str(workdir / "cache"), *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def stats(node: NodeProcess) -> dict:
    return node.get("/stats").json()["discovery"]


def test_enrols_once_and_restarts_without_the_token(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    token = cp.join_token(uses=1)
    node = NodeProcess(tmp_path / "n", cp.grpc_addr, node_id="once-1", join_token=token).start()
    try:
        node.wait_version(cp.version())
        cert = stats(node)["certificate"]
        assert cert["node_id"] == "once-1" and cert["group"] == "default"
    finally:
        node.stop()
    cache = node.cache_dir
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for name in ("node.key", "node.crt", "ca.crt"):
        assert stat.S_IMODE((cache / name).stat().st_mode) == 0o600, name
    # the token is used up; the node needs it no more (given again, it is not used)
    node.join_token = token
    node.start()
    try:
        node.wait_version(cp.version())
        assert stats(node)["certificate"]["serial"] == cert["serial"]
    finally:
        node.stop()
    assert "not used" in node.output()


def test_no_token_and_no_credentials_stops_with_one_line(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    r = run_node(cp, tmp_path / "bare", "--node-id", "bare-1")
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--join-token" in lines[0] and "no credentials" in lines[0], r.stderr
    r = subprocess.run([executable("flux-node"), "--control-plane", cp.grpc_addr, "--join-token", "a.b.c"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "--join-token needs --cache-dir" in r.stderr


@pytest.mark.parametrize("case", ["used-up", "expired", "unknown", "other-group", "malformed"])
def test_bad_join_tokens_stop_the_node_with_one_line(cp: ControlPlaneProcess, tmp_path: pathlib.Path,
                                                     case: str) -> None:  # fmt: skip
    node_id = f"bad-{case}"
    if case == "used-up":
        token = cp.join_token(uses=1)
        NodeProcess(tmp_path / "user", cp.grpc_addr, node_id="bad-first", join_token=token).start().stop()
        expected = "used up"
    elif case == "expired":
        token = cp.join_token(ttl="1s")
        time.sleep(1.2)  # stays: the token's (real-clock) expiry is what is checked
        expected = "expired"
    elif case == "unknown":
        real = JoinToken.parse(cp.join_token())
        token = str(JoinToken("feedfacecafe", real.secret, real.pin))
        expected = "unknown join token"
    elif case == "other-group":
        token = cp.join_token("edge")
        expected = "is for node group 'edge'"
    else:
        token = "not-a-token"
        expected = "a join token is <id>.<secret>.<ca pin>"
    r = run_node(cp, tmp_path / "n", "--node-id", node_id, "--join-token", token)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("flux-node:")]
    assert len(lines) == 1 and expected in lines[0], r.stderr
    if case != "malformed":
        assert node_id in lines[0]
        log = cp.log_path.read_text()
        assert f"refused enrolment of node {node_id} from" in log and expected in log


def test_ca_pin_mismatch_stops_the_node(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    real = JoinToken.parse(cp.join_token())
    forged = JoinToken(real.token_id, real.secret, CertificateAuthority.generate().pin)
    r = run_node(cp, tmp_path / "n", "--node-id", "pin-1", "--join-token", str(forged))
    assert r.returncode == 2 and "CA pin mismatch" in r.stderr, r.stderr
    assert "pin-1" not in cp.log_path.read_text()  # nothing was sent


def test_renews_before_expiry_and_keeps_its_stream(cp: ControlPlaneProcess, client: httpx.Client,
                                                   tmp_path: pathlib.Path) -> None:  # fmt: skip
    node = NodeProcess(tmp_path / "n", cp.grpc_addr, node_id="renew-1").start()
    try:
        first = stats(node)["certificate"]
        wait_until(lambda: stats(node)["certificate"]["renewed"] >= 1, TTL, message="a renewal")
        second = stats(node)["certificate"]
        assert second["serial"] != first["serial"]
        assert (node.cache_dir / "node.crt").read_text().count("BEGIN CERTIFICATE") >= 1
        # past the first certificate's lifetime the node still takes config
        time.sleep(max(0.0, TTL * 0.4))
        version = bump(client)
        node.wait_version(version, timeout=10)
        listed = client.get("/api/v1/nodes/renew-1").json()
        assert listed["connected"] and listed["in_sync"], listed
    finally:
        node.stop()
    assert "renewed the node certificate" in node.output()


def test_revoked_node_is_cut_off_and_keeps_serving_what_it_has(cp: ControlPlaneProcess, client: httpx.Client,
                                                              tmp_path: pathlib.Path) -> None:  # fmt: skip
    node = NodeProcess(tmp_path / "n", cp.grpc_addr, node_id="revoke-1").start()
    try:
        node.wait_version(cp.version())
        held = node.version()
        r = client.delete("/api/v1/nodes/revoke-1")
        assert r.status_code == 200 and r.json()["streams_cut"] == 1, r.text
        wait_until(lambda: "refused node revoke-1" in node.output(), 10, message="the node told it is refused")
        refused = lambda: node.log_path.read_text().count("refused node revoke-1")  # noqa: E731
        before = refused()
        version = bump(client)
        # the node tries again (back-off) while the new version is there, and is refused again
        wait_until(lambda: refused() > before, 15, message="another refusal")
        assert node.version() == held != str(version)  # no more config, but it serves the last one
        assert node.is_ready()
        assert client.get("/api/v1/nodes/revoke-1").status_code == 404
    finally:
        node.stop()


def test_cached_snapshot_without_credentials_still_serves(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    node = NodeProcess(tmp_path / "n", cp.grpc_addr, node_id="cached-1").start()
    node.wait_version(cp.version())
    node.stop()
    for name in ("node.crt", "node.key", "ca.crt"):
        os.unlink(node.cache_dir / name)
    node.join_token = ""  # none
    node.start()
    try:
        assert node.is_ready()
        wait_until(lambda: "serving the cached config" in node.output(), 5, message="the missing credentials said")
    finally:
        node.stop()


def test_workers_share_one_enrolment(cp: ControlPlaneProcess, client: httpx.Client, tmp_path: pathlib.Path) -> None:
    token = cp.join_token(uses=1)
    node = NodeProcess(tmp_path / "n", cp.grpc_addr, node_id="multi-e", workers=2, join_token=token)
    node.start(timeout=30)
    try:

        def both() -> bool:
            ids = {n["id"] for n in client.get("/api/v1/nodes").json()["items"] if n["connected"]}
            return {"multi-e/w0", "multi-e/w1"} <= ids

        wait_until(both, 15, message="both workers connected")
        assert client.delete("/api/v1/nodes/multi-e").json()["streams_cut"] == 2
    finally:
        node.stop()
