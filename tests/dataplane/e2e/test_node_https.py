"""HTTPS at the edge (issue 15): TLS termination with SNI, versions and ALPN, resumption,
client certificates (required, optional, XFCC, an mtls consumer), TLS to upstreams (verified,
refused, mutual) with TLS health checks. Real clients: curl, `openssl s_client`, Python ssl."""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.node import UpstreamProcess
from support.processes import free_port, wait_until
from support.snapshot_node import SnapshotNode, read_response, status_of
from support.tls import TestCA
from support.tls_upstream import TlsUpstream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("https")
    echo = UpstreamProcess("echo").start()
    clients = TestCA("Client CA")
    api, api_key = ca.issue("api.test", ("api.test",))
    wild, wild_key = ca.issue("wildcard", ("*.apps.test",))
    fallback, fallback_key = ca.issue("default.test", ("default.test",))
    up_cert, up_key = ca.issue("backend.test", ("backend.test", "127.0.0.1"))
    node_client, node_client_key = clients.issue("flux-node")
    tls_up = TlsUpstream(up_cert, up_key).start()
    mtls_up = TlsUpstream(up_cert, up_key, client_ca=clients.pem).start()
    port, mtls_port, opt_port, v13_port = free_port(), free_port(), free_port(), free_port()
    listener = {"protocol": "https", "address": "127.0.0.1"}
    doc = {
        "certificates": [
            {"name": "default", "cert": fallback, "key": fallback_key},
            {"name": "api", "cert": api, "key": api_key},
            {"name": "wild", "cert": wild, "key": wild_key},
            {"name": "node-client", "cert": node_client, "key": node_client_key},
        ],
        "listeners": [
            {"name": "web", "port": port, "certificates": ["default", "api", "wild"], **listener},
            {"name": "mtls", "port": mtls_port, "certificates": ["api"], "tls": {"client_ca": clients.pem}, **listener},
            {
                "name": "opt",
                "port": opt_port,
                "certificates": ["api"],
                "tls": {"client_ca": clients.pem, "client_auth": "optional"},
                **listener,
            },
            {"name": "v13", "port": v13_port, "certificates": ["api"], "tls": {"min_version": "1.3"}, **listener},
        ],
        "clusters": [
            {"name": "echo", "endpoints": [echo.endpoint()]},
            {
                "name": "tls-up",
                "endpoints": [tls_up.endpoint()],
                "tls": {"sni": "backend.test", "ca": ca.pem},
                "health_check": {"type": "http", "path": "/healthz", "interval": "1s"},
            },
            {"name": "tls-unverified", "endpoints": [tls_up.endpoint()], "tls": {"sni": "wrong.test", "ca": ca.pem}},
            {
                "name": "tls-mutual",
                "endpoints": [mtls_up.endpoint()],
                "tls": {"sni": "backend.test", "ca": ca.pem, "certificate": "node-client"},
            },
            {
                "name": "tls-no-client-cert",
                "endpoints": [mtls_up.endpoint()],
                "tls": {"sni": "backend.test", "ca": ca.pem},
            },
        ],
        "consumers": [{"name": "alice", "credentials": [{"type": "mtls", "subject": "CN=alice, O=Example"}]}],
        "policies": [{"name": "only-alice", "type": "api_acl", "config": {"allow_consumers": ["alice"]}}],
        "routes": [
            {"name": "up", "path": "/up", "cluster": "tls-up"},
            {"name": "bad", "path": "/unverified", "cluster": "tls-unverified"},
            {"name": "mutual", "path": "/mutual", "cluster": "tls-mutual"},
            {"name": "no-cert", "path": "/no-client-cert", "cluster": "tls-no-client-cert"},
            {
                "name": "alice",
                "listener": "opt",
                "path": "/anything/alice",
                "cluster": "echo",
                "policies": ["only-alice"],
            },
            {"name": "all", "path": "/", "cluster": "echo"},
        ],
    }
    node = SnapshotNode(base / "node", doc).start()
    (base / "ca.pem").write_text(ca.pem)
    for name, issued in (("alice", clients.issue("alice", organization="Example")), ("bob", clients.issue("bob"))):
        (base / f"{name}.pem").write_text(issued[0])
        (base / f"{name}.key").write_text(issued[1])
    other = TestCA("Other CA").issue("alice", organization="Example")
    (base / "stranger.pem").write_text(other[0])
    (base / "stranger.key").write_text(other[1])
    try:
        yield {"node": node, "base": base, "port": port, "mtls": mtls_port, "opt": opt_port, "v13": v13_port,
               "tls_up": tls_up, "mtls_up": mtls_up}  # fmt: skip
    finally:
        node.stop()
        echo.stop()
        tls_up.stop()
        mtls_up.stop()


def client_ctx(gw: dict[str, Any], cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(gw["base"] / "ca.pem"))
    if cert:
        ctx.load_cert_chain(gw["base"] / f"{cert}.pem", gw["base"] / f"{cert}.key")
    return ctx


def https_get(
    gw: dict[str, Any], port: int, name: str, path: str = "/echo", *, cert: str | None = None
) -> tuple[int, dict[str, Any], ssl.SSLSocket]:
    ctx = client_ctx(gw, cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname=name)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    data = read_response(s)
    body = data.partition(b"\r\n\r\n")[2]
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {"raw": body.decode("latin-1")}
    return status_of(data), parsed, s


def served_name(gw: dict[str, Any], port: int, sni: str | None) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as s,
    ):
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_sni_picks_exact_then_wildcard_then_the_first_certificate(gw: dict[str, Any]) -> None:
    port = gw["port"]
    assert served_name(gw, port, "api.test") == "CN=api.test"
    assert served_name(gw, port, "x.apps.test") == "CN=wildcard"
    assert served_name(gw, port, "a.b.apps.test") == "CN=default.test"  # a wildcard covers one label
    assert served_name(gw, port, "unknown.test") == "CN=default.test"
    assert served_name(gw, port, None) == "CN=default.test"  # no SNI


def test_requests_go_upstream_with_x_forwarded_proto_https(gw: dict[str, Any]) -> None:
    status, body, s = https_get(gw, gw["port"], "api.test")
    assert status == 200
    assert body["headers"]["X-Forwarded-Proto"] == "https"
    assert s.selected_alpn_protocol() in (None, "http/1.1")


def test_curl_and_openssl_s_client(gw: dict[str, Any]) -> None:
    port, ca = gw["port"], str(gw["base"] / "ca.pem")
    out = subprocess.run(
        ["curl", "-sS", "--cacert", ca, "--resolve", f"api.test:{port}:127.0.0.1", f"https://api.test:{port}/echo",
         "-w", "\n%{http_code} %{http_version}"],
        capture_output=True, text=True, timeout=15, check=True,
    ).stdout  # fmt: skip
    assert out.rstrip().endswith("200 2")  # curl negotiates h2 by ALPN
    for flag in ("-tls1_2", "-tls1_3"):
        s_client = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "api.test", "-CAfile", ca,
             "-alpn", "http/1.1", flag, "-ign_eof"],
            input="GET /echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
            capture_output=True, text=True, timeout=15,
        )  # fmt: skip
        text = s_client.stdout + s_client.stderr
        assert "Verify return code: 0 (ok)" in text, text
        assert "ALPN protocol: http/1.1" in text and "HTTP/1.1 200" in text, text


def test_min_version_13_refuses_a_tls12_client(gw: dict[str, Any]) -> None:
    ctx = client_ctx(gw)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", gw["v13"]), timeout=5) as raw:
        ctx.wrap_socket(raw, server_hostname="api.test")
    status, _, s = https_get(gw, gw["v13"], "api.test")
    assert status == 200 and s.version() == "TLSv1.3"


def test_sessions_resume(gw: dict[str, Any]) -> None:
    ctx = client_ctx(gw)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # a 1.2 session is there after the handshake
    with socket.create_connection(("127.0.0.1", gw["port"]), timeout=5) as raw:
        session = ctx.wrap_socket(raw, server_hostname="api.test").session
    with socket.create_connection(("127.0.0.1", gw["port"]), timeout=5) as raw:
        assert ctx.wrap_socket(raw, server_hostname="api.test", session=session).session_reused


def test_client_certificate_required(gw: dict[str, Any]) -> None:
    status, body, _ = https_get(gw, gw["mtls"], "api.test", cert="alice")
    assert status == 200
    xfcc = body["headers"]["X-Forwarded-Client-Cert"]
    assert 'Subject="O=Example,CN=alice"' in xfcc and "Hash=" in xfcc  # RFC 4514 order
    for cert in (None, "stranger"):  # no certificate, or one of another CA: the handshake fails
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            status, _, _ = https_get(gw, gw["mtls"], "api.test", cert=cert)
            assert status == 0  # TLS 1.3: the refusal may come with the first read
            raise ssl.SSLError("no response")
    assert gw["node"].metric("flux_node_events_total", event="tls_handshake_failed") >= 1


def test_client_copies_of_xfcc_are_dropped(gw: dict[str, Any]) -> None:
    ctx = client_ctx(gw)
    with socket.create_connection(("127.0.0.1", gw["port"]), timeout=5) as raw:
        s = ctx.wrap_socket(raw, server_hostname="api.test")
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-Client-Cert: Subject=\"CN=admin\"\r\n"
                  b"Connection: close\r\n\r\n")  # fmt: skip
        body = json.loads(read_response(s).partition(b"\r\n\r\n")[2])
    assert "X-Forwarded-Client-Cert" not in body["headers"]


def test_optional_client_certificate_and_the_mtls_consumer(gw: dict[str, Any]) -> None:
    port = gw["opt"]
    status, body, _ = https_get(gw, port, "api.test", "/echo")  # no certificate: served, no identity
    assert status == 200 and "X-Forwarded-Client-Cert" not in body["headers"]
    assert https_get(gw, port, "api.test", "/anything/alice")[0] == 401  # api_acl needs a consumer
    status, body, _ = https_get(gw, port, "api.test", "/anything/alice", cert="alice")
    assert status == 200 and body["headers"]["X-Consumer-Name"] == "alice"
    assert https_get(gw, port, "api.test", "/anything/alice", cert="bob")[0] == 401  # a client, but no consumer

    def logged() -> bool:  # the access log is written in batches
        log = (gw["node"].workdir / "access.log").read_text().splitlines()
        return any('"client_cert":"O=Example,CN=alice"' in line and '"consumer":"alice"' in line for line in log)

    wait_until(logged, 5, message="access log line with the client certificate")


def test_tls_to_the_upstream_is_verified_and_pooled(gw: dict[str, Any]) -> None:
    before = gw["tls_up"].handshakes
    with httpx.Client(verify=ssl.create_default_context(cafile=str(gw["base"] / "ca.pem"))) as c:
        for _ in range(5):
            r = c.get(
                f"https://127.0.0.1:{gw['port']}/up/x",
                headers={"Host": "api.test"},
                extensions={"sni_hostname": "api.test"},
            )
            assert r.status_code == 200 and r.json()["path"] == "/up/x"
    assert gw["tls_up"].sni[-1] == "backend.test"
    assert gw["tls_up"].handshakes - before <= 2  # keep-alive upstream connections stay TLS and are reused


def test_an_upstream_certificate_that_does_not_verify_is_502_with_the_reason(gw: dict[str, Any]) -> None:
    status, body, _ = https_get(gw, gw["port"], "api.test", "/unverified")
    assert status == 502 and "certificate" in body["message"].lower(), body
    assert gw["node"].metric("flux_upstream_errors_total", cluster="tls-unverified", kind="tls") >= 1


def test_mutual_tls_to_the_upstream(gw: dict[str, Any]) -> None:
    status, body, _ = https_get(gw, gw["port"], "api.test", "/mutual")
    assert status == 200 and body["client"] == "commonName=flux-node"
    assert https_get(gw, gw["port"], "api.test", "/no-client-cert")[0] == 502


def test_health_checks_use_the_cluster_tls(gw: dict[str, Any]) -> None:
    def healthy() -> bool:
        clusters = httpx.get(gw["node"].admin + "/clusters", timeout=5).json()["clusters"]
        (ep,) = next(c for c in clusters if c["name"] == "tls-up")["endpoints"]
        return bool(ep["healthy"]) and gw["tls_up"].handshakes > 0

    wait_until(healthy, 10, message="tls-up checked over TLS")


def test_certificate_expiry_is_a_metric(gw: dict[str, Any]) -> None:
    seconds = gw["node"].metric("flux_certificate_expiry_seconds", name="api")
    assert 29 * 86400 < seconds <= 30 * 86400


def test_hot_rotation_through_the_control_plane(tmp_path: pathlib.Path, ca: TestCA) -> None:
    """PUT a new certificate: new handshakes get it within seconds, an open connection keeps working."""
    from support.node import NodeProcess
    from support.processes import ControlPlaneProcess

    echo = UpstreamProcess("echo").start()
    first, first_key = ca.issue("rotating.test", ("rotating.test",), days=10)
    second, second_key = ca.issue("rotating.test", ("rotating.test",), days=20)
    port = free_port()
    with ControlPlaneProcess(tmp_path / "cp") as cp:
        node = NodeProcess(tmp_path / "node", cp.grpc_addr, node_id="tls-1")
        node.start(wait_ready=False)
        try:
            with cp.client() as c:
                r = c.post("/api/v1/apply", json={
                    "certificates": [{"name": "rot", "cert": first, "key": first_key}],
                    "listeners": [{"name": "web", "protocol": "https", "address": "127.0.0.1", "port": port,
                                   "certificates": ["rot"]}],
                    "clusters": [{"name": "echo", "endpoints": [echo.endpoint()]}],
                    "routes": [{"name": "all", "path": "/", "cluster": "echo"}],
                })  # fmt: skip
                assert r.status_code == 200, r.text
                try:
                    node.wait_version(r.json()["version"], 10)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{node.output()}") from None
                ctx = ssl.create_default_context(cadata=ca.pem)
                old = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                      server_hostname="rotating.test")  # fmt: skip
                serial = old.getpeercert()["serialNumber"]
                r = c.put("/api/v1/certificates/rot", json={"name": "rot", "cert": second, "key": second_key})
                assert r.status_code == 200, r.text
                listed = c.get("/api/v1/certificates/rot").json()
                assert 19 < listed["expires_in_days"] <= 20 and listed["key"] == "********"

            def rotated() -> bool:
                with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                     server_hostname="rotating.test") as s:  # fmt: skip
                    return s.getpeercert()["serialNumber"] != serial

            wait_until(rotated, 5, message="new certificate served")
            old.sendall(b"GET /echo HTTP/1.1\r\nHost: rotating.test\r\nConnection: close\r\n\r\n")
            assert status_of(read_response(old)) == 200  # the connection opened before keeps working
            old.close()
        finally:
            node.stop()
            echo.stop()


def test_unusable_certificate_is_pinned_on_its_listener(tmp_path: pathlib.Path, ca: TestCA) -> None:
    """The control plane checks PEM at write time; a snapshot the node still cannot load (a key
    of another certificate, written by hand) fails on the listener that offers it, so the node
    sets that listener aside and applies the rest (dataplane.config.isolation)."""
    from dataplane.config.compiler import CompileError, EndpointRegistry, compile_snapshot
    from dataplane.config.isolation import Fault
    from flux.v1 import config_pb2 as pb

    cert, key = ca.issue("x.test", ("x.test",))
    _, other_key = ca.issue("y.test", ("y.test",))
    snap = pb.Snapshot(
        version="1",
        certificates=[pb.Certificate(name="c", cert_pem=cert, key_pem=other_key)],  # key of another cert
        listeners=[pb.Listener(name="l", protocol=pb.PROTOCOL_HTTPS, port=1, certificates=["c"])],
    )
    with pytest.raises(CompileError, match="certificate 'c'") as caught:
        compile_snapshot(snap, EndpointRegistry(), lambda *a: object())  # type: ignore[arg-type,return-value]
    assert caught.value.fault == Fault("listener", "l")
    snap.listeners[0].ClearField("certificates")
    snap.clusters.add(
        name="up", scheme="https", endpoints=[pb.Endpoint(address="127.0.0.1", port=9)],
        tls=pb.UpstreamTls(certificate="c"),
    )  # fmt: skip
    del snap.listeners[:]
    with pytest.raises(CompileError) as caught:
        compile_snapshot(snap, EndpointRegistry(), lambda *a: object())  # type: ignore[arg-type,return-value]
    assert caught.value.fault == Fault("cluster", "up"), caught.value
    del key
