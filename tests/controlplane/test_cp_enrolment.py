"""Node trust on a real control plane: join tokens, enrolment, mutual TLS, revocation.

The clients here speak the protocol themselves (the node's own enrolment code, grpc
channels made by hand), so each attack of issue 13 is tried as an attacker would: a
plaintext stream asking as `rogue-1`, TLS without a certificate, the public enrolment
identity, a certificate of another CA, another node's id, another group.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pathlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.discovery import SNAPSHOT_TYPE_URL, DiscoveryClient
from support.processes import ControlPlaneProcess, executable, mariadb_database, mariadb_unreachable, wait_until

from controlplane.pki import CertificateAuthority, key_pem, pem
from dataplane.discovery.credentials import (
    EnrolmentError,
    NodeCredentials,
    channel_options,
    enroll_once,
    fetch_ca,
    renew,
)
from flux.v1 import discovery_pb2, discovery_pb2_grpc
from fluxcommon.trust import JoinToken, enrolment_client_pem, node_identity, pin_hex

_n = iter(range(1_000_000))


def uid(prefix: str) -> str:
    return f"{prefix}-{next(_n)}"


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    doc = {
        "listeners": [
            {"name": "pub", "port": 18080},
            {"name": "edge-pub", "port": 18081, "node_group": "edge"},
        ],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9001}]}],
        "routes": [
            {"name": "r", "listener": "pub", "cluster": "c", "path": "/"},
            {"name": "edge-r", "listener": "edge-pub", "cluster": "c", "path": "/"},
        ],
    }
    with module_controlplane.client() as c:
        assert c.post("/api/v1/apply", json=doc).status_code == 200
    return module_controlplane


@pytest.fixture
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


def token(cp: ControlPlaneProcess, group: str = "default", **kw: object) -> JoinToken:
    return JoinToken.parse(cp.join_token(group, **kw))  # type: ignore[arg-type]


def enrol(cp: ControlPlaneProcess, node_id: str, group: str = "default") -> NodeCredentials:
    return enroll_once(cp.grpc_addr, token(cp, group), node_id, group)


def first_request(node_id: str, group: str = "default") -> discovery_pb2.StreamConfigRequest:
    return discovery_pb2.StreamConfigRequest(
        node=discovery_pb2.Node(id=node_id, group=group), type_url=SNAPSHOT_TYPE_URL
    )


def stream_once(channel: grpc.Channel, node_id: str, group: str = "default") -> list[object]:
    """Open a stream as `node_id` and read what comes within 3 s (raises grpc.RpcError on refusal)."""
    stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
    got: list[object] = []
    call = stub.StreamConfig(iter([first_request(node_id, group)]), timeout=3)
    try:
        for resp in call:
            got.append(resp)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return got


def cp_log(cp: ControlPlaneProcess) -> str:
    return cp.log_path.read_text(errors="replace")


def saved_nodes(cp: ControlPlaneProcess) -> set[str]:
    """The node ids in the control plane's `nodes` table (what its node-status flushes wrote)."""
    with sqlite3.connect(cp.workdir / "flux.db") as conn:
        return {row[0] for row in conn.execute("SELECT node_id FROM nodes")}


# -- the join-token API ------------------------------------------------------------------------


def test_join_token_api(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    r = client.post("/api/v1/nodes/join-tokens", json={"group": "edge", "ttl": "2h", "uses": 10})
    assert r.status_code == 201, r.text
    body = r.json()
    parsed = JoinToken.parse(body["token"])
    assert body["id"] == parsed.token_id and body["group"] == "edge" and body["uses"] == 10
    assert body["ca_pin"] == pin_hex(parsed.pin) == cp.ca_pin
    listed = {t["id"]: t for t in client.get("/api/v1/nodes/join-tokens").json()["items"]}
    assert listed[parsed.token_id]["used"] == 0 and listed[parsed.token_id]["group"] == "edge"
    assert parsed.secret not in client.get("/api/v1/nodes/join-tokens").text
    # defaults: group default, one use, one hour
    d = client.post("/api/v1/nodes/join-tokens", json={}).json()
    assert d["group"] == "default" and d["uses"] == 1
    assert client.delete(f"/api/v1/nodes/join-tokens/{parsed.token_id}").status_code == 200
    assert client.delete(f"/api/v1/nodes/join-tokens/{parsed.token_id}").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"group": "bad group"}, "group"),
        ({"ttl": "0s"}, "ttl"),
        ({"ttl": "400d"}, "ttl"),
        ({"uses": 0}, "uses"),
        ({"uses": 10_000_000}, "uses"),
        ({"secret": "x"}, "secret"),
    ],
)
def test_bad_join_token_requests_name_the_field(client: httpx.Client, body: dict, field: str) -> None:
    r = client.post("/api/v1/nodes/join-tokens", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_join_tokens_need_the_admin_role(cp: ControlPlaneProcess) -> None:
    with cp.client(token="") as anon:
        assert anon.post("/api/v1/nodes/join-tokens", json={}).status_code == 401
        assert anon.delete("/api/v1/nodes/anything").status_code == 401
    with cp.client(token=cp.api_token("read")) as reader:
        assert reader.post("/api/v1/nodes/join-tokens", json={}).status_code == 403
        assert reader.delete("/api/v1/nodes/anything").status_code == 403


def test_join_token_secret_is_stored_hashed(cp: ControlPlaneProcess) -> None:
    t = token(cp)
    db = cp.workdir / "flux.db"
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT secret_sha256 FROM join_tokens WHERE token_id = ?", (t.token_id,)).fetchone()
    assert stored == hashlib.sha256(t.secret.encode()).hexdigest()
    for f in [db, *db.parent.glob("flux.db-*")]:
        assert t.secret.encode() not in f.read_bytes()


def test_node_ca_key_is_sealed_in_the_database(cp: ControlPlaneProcess) -> None:
    with sqlite3.connect(cp.workdir / "flux.db") as conn:
        cert_pem, key_sealed = conn.execute("SELECT cert_pem, key_sealed FROM node_ca").fetchone()
    assert key_sealed.startswith("enc:v1:") and "PRIVATE KEY" not in key_sealed
    ca = x509.load_pem_x509_certificate(cert_pem.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# -- enrolment ---------------------------------------------------------------------------------


def test_enrolment_issues_a_short_lived_certificate_bound_to_id_and_group(cp: ControlPlaneProcess) -> None:
    nid = uid("enrolled")
    creds = enrol(cp, nid, "edge")
    assert (creds.node_id, creds.group) == (nid, "edge")
    leaf = x509.load_pem_x509_certificates(creds.chain_pem)[0]
    assert node_identity(leaf) == ("edge", nid)
    lifetime = creds.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < lifetime <= dt.timedelta(hours=24)  # the default --node-cert-ttl
    assert pin_hex(creds.ca_pin) == cp.ca_pin
    assert f"node {nid} enrolled in group edge" in cp_log(cp)
    with DiscoveryClient(cp.grpc_addr, nid, group="edge", credentials=creds) as node:
        push = node.wait_for_version(cp.version())
        assert push.snapshot.node_group == "edge"


def refused(cp: ControlPlaneProcess, t: JoinToken, node_id: str, group: str = "default") -> str:
    with pytest.raises(EnrolmentError) as exc:
        enroll_once(cp.grpc_addr, t, node_id, group)
    assert exc.value.fatal
    wait_until(lambda: f"refused enrolment of node {node_id} from" in cp_log(cp), 3, message="the refusal logged")
    line = next(x for x in cp_log(cp).splitlines() if f"refused enrolment of node {node_id} from" in x)
    return f"{exc.value} || {line}"


def test_used_up_join_token_is_refused(cp: ControlPlaneProcess) -> None:
    t = token(cp, uses=2)
    enroll_once(cp.grpc_addr, t, uid("first"), "default")
    enroll_once(cp.grpc_addr, t, uid("second"), "default")
    third = uid("third")
    message = refused(cp, t, third)
    assert "used up" in message and message.count(t.token_id) == 2


def test_expired_join_token_is_refused(cp: ControlPlaneProcess) -> None:
    t = token(cp, ttl="1s")
    time.sleep(1.2)  # stays: the token's (real-clock, whole-second) expiry is what is checked
    assert "expired" in refused(cp, t, uid("late"))


def test_unknown_join_token_or_wrong_secret_is_refused(cp: ControlPlaneProcess) -> None:
    real = token(cp)
    assert "unknown join token" in refused(cp, JoinToken("0123456789ab", real.secret, real.pin), uid("unknown"))
    assert "wrong secret" in refused(cp, JoinToken(real.token_id, "x" * 32, real.pin), uid("guess"))


def test_join_token_enrols_only_its_group(cp: ControlPlaneProcess) -> None:
    t = token(cp, "edge")
    assert "is for node group 'edge', not 'default'" in refused(cp, t, uid("wronggroup"), "default")


def test_ca_pin_mismatch_is_refused_by_the_node_before_anything_is_sent(cp: ControlPlaneProcess) -> None:
    real = token(cp)
    other_pin = CertificateAuthority.generate().pin
    nid = uid("pinned")
    with pytest.raises(EnrolmentError, match="CA pin mismatch") as exc:
        enroll_once(cp.grpc_addr, JoinToken(real.token_id, real.secret, other_pin), nid, "default")
    assert exc.value.fatal
    enroll_once(cp.grpc_addr, real, nid, "default")  # and the token is still good
    # the control plane never heard of the first attempt (the secret was not sent): the first
    # line naming the node is that of the enrolment that came after it
    first = next((x for x in cp_log(cp).splitlines() if nid in x), "")
    assert f"node {nid} enrolled in group default" in first, first


def test_fetch_ca_finds_the_pinned_ca(cp: ControlPlaneProcess) -> None:
    t = token(cp)
    ca = x509.load_pem_x509_certificate(fetch_ca(cp.grpc_addr, t.pin))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# -- what the config stream refuses ------------------------------------------------------------


def test_rogue_plaintext_client_gets_nothing(cp: ControlPlaneProcess) -> None:
    """The issue's attack: a plaintext StreamConfigRequest{node: {id: "rogue-1", group: "default"}}."""
    with grpc.insecure_channel(cp.grpc_addr) as channel, pytest.raises(grpc.RpcError) as exc:
        stream_once(channel, "rogue-1")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_without_a_certificate_gets_nothing(cp: ControlPlaneProcess) -> None:
    ca_pem = fetch_ca(cp.grpc_addr, token(cp).pin)
    creds = grpc.ssl_channel_credentials(ca_pem)
    with (
        grpc.secure_channel(cp.grpc_addr, creds, options=channel_options()) as channel,
        pytest.raises(grpc.RpcError) as exc,
    ):
        stream_once(channel, "rogue-1")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_public_enrolment_identity_gets_no_config(cp: ControlPlaneProcess) -> None:
    ca_pem = fetch_ca(cp.grpc_addr, token(cp).pin)
    key, cert = enrolment_client_pem()
    creds = grpc.ssl_channel_credentials(ca_pem, key, cert)
    nid = uid("rogue")
    with grpc.secure_channel(cp.grpc_addr, creds, options=channel_options()) as channel:
        with pytest.raises(grpc.RpcError) as exc:
            stream_once(channel, nid)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as exc2:
            discovery_pb2_grpc.DiscoveryServiceStub(channel).ReportTunnels(
                discovery_pb2.ReportTunnelsRequest(node=discovery_pb2.Node(id=nid)), timeout=3
            )
        assert exc2.value.code() == grpc.StatusCode.UNAUTHENTICATED
    log = cp_log(cp)
    assert f"refused config stream of node {nid} from" in log and "no node certificate" in log


def test_a_certificate_of_another_ca_is_refused(cp: ControlPlaneProcess) -> None:
    foreign = CertificateAuthority.generate("not the control plane's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    issued = foreign.sign_node(csr.public_bytes(serialization.Encoding.PEM), "rogue-2", "default",
                               dt.timedelta(hours=1))  # fmt: skip
    ca_pem = fetch_ca(cp.grpc_addr, token(cp).pin)
    creds = grpc.ssl_channel_credentials(ca_pem, key_pem(key), issued.chain_pem)
    with (
        grpc.secure_channel(cp.grpc_addr, creds, options=channel_options()) as channel,
        pytest.raises(grpc.RpcError) as exc,
    ):
        stream_once(channel, "rogue-2")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # refused in the TLS handshake


def test_a_node_presenting_another_nodes_id_is_refused(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    victim, intruder = uid("victim"), uid("intruder")
    with DiscoveryClient(cp.grpc_addr, victim) as v:
        v.wait_for_version(cp.version())
        before = client.get(f"/api/v1/nodes/{victim}").json()
        creds = enrol(cp, intruder)
        with grpc.secure_channel(cp.grpc_addr, creds.channel_credentials(), options=channel_options()) as ch:
            with pytest.raises(grpc.RpcError) as exc:
                stream_once(ch, victim)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as exc2:
                discovery_pb2_grpc.DiscoveryServiceStub(ch).ReportTunnels(
                    discovery_pb2.ReportTunnelsRequest(node=discovery_pb2.Node(id=victim)), timeout=3
                )
            assert exc2.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # a worker suffix of its own id is fine; of another's is not
            assert stream_once(ch, f"{intruder}/w1")
            with pytest.raises(grpc.RpcError):
                stream_once(ch, f"{victim}/w1")
        after = client.get(f"/api/v1/nodes/{victim}").json()
        assert after["address"] == before["address"] and after["connected"] and after["last_nack"] is None
    assert f"refused config stream of node {victim} from" in cp_log(cp)
    assert f"differs from its certificate's ('{intruder}')" in cp_log(cp)


def test_a_node_asking_for_another_group_gets_its_certificates_group(cp: ControlPlaneProcess) -> None:
    nid = uid("edgy")
    creds = enrol(cp, nid, "edge")
    with DiscoveryClient(cp.grpc_addr, nid, group="default", credentials=creds) as node:
        push = node.wait_for_version(cp.version())
    assert push.snapshot.node_group == "edge"
    assert [listener.name for listener in push.snapshot.listeners] == ["edge-pub"]


# -- revocation --------------------------------------------------------------------------------


def test_revocation_cuts_the_stream_and_refuses_the_certificate(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nid = uid("revoked")
    creds = enrol(cp, nid)
    node = DiscoveryClient(cp.grpc_addr, nid, credentials=creds).start()
    try:
        node.wait_for_version(cp.version())
        wait_until(lambda: client.get(f"/api/v1/nodes/{nid}").status_code == 200, 3, message="node listed")
        r = client.delete(f"/api/v1/nodes/{nid}")
        assert r.status_code == 200 and r.json()["certificates"] == 1 and r.json()["streams_cut"] == 1, r.text
        wait_until(lambda: node.closed, 3, message="the stream cut")
        assert node.error is not None and node.error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        node.close()
    with grpc.secure_channel(cp.grpc_addr, creds.channel_credentials(), options=channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            stream_once(ch, nid)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in exc.value.details()
        with pytest.raises(EnrolmentError, match="revoked"):
            renew(cp.grpc_addr, creds)
    # a node-status flush later, it is still gone: another node connecting now is saved by the next flush
    witness = uid("witness")
    with DiscoveryClient(cp.grpc_addr, witness, credentials=enrol(cp, witness)) as w:
        w.wait_for_version(cp.version())
        wait_until(lambda: saved_nodes(cp) >= {witness}, 5, message="a node-status flush")
    assert nid not in saved_nodes(cp)
    assert client.get(f"/api/v1/nodes/{nid}").status_code == 404
    assert client.delete(f"/api/v1/nodes/{nid}-never").status_code == 404
    # a new join token enrols it again
    again = enrol(cp, nid)
    with DiscoveryClient(cp.grpc_addr, nid, credentials=again) as n2:
        n2.wait_for_version(cp.version())


def test_enrolling_an_id_again_revokes_its_earlier_certificate(cp: ControlPlaneProcess) -> None:
    nid = uid("twice")
    old = enrol(cp, nid)
    old_node = DiscoveryClient(cp.grpc_addr, nid, credentials=old).start()
    try:
        old_node.wait_for_version(cp.version())
        new = enrol(cp, nid)
        wait_until(lambda: old_node.closed, 3, message="the earlier certificate's stream cut")
    finally:
        old_node.close()
    with DiscoveryClient(cp.grpc_addr, nid, credentials=new) as n:
        n.wait_for_version(cp.version())
    with pytest.raises(EnrolmentError, match="enrolled in group 'default'"):
        enroll_once(cp.grpc_addr, token(cp, "edge"), nid, "edge")  # another group: revoke first


# -- renewal -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with ControlPlaneProcess(tmp_path_factory.mktemp("cp-short"), extra_args=("--node-cert-ttl", "12s")) as cp:
        yield cp


def test_renewal_and_expiry(short_cp: ControlPlaneProcess) -> None:
    nid = uid("renewing")
    creds = enrol(short_cp, nid)
    assert creds.not_after - creds.issued_at <= dt.timedelta(seconds=12)
    assert creds.renew_at() - creds.issued_at == dt.timedelta(seconds=8)
    node = DiscoveryClient(short_cp.grpc_addr, nid, credentials=creds).start()
    try:
        node.wait_for_version(short_cp.version())
        # certificate times are whole seconds: a renewal in the same second would not be later
        next_second = creds.issued_at + dt.timedelta(seconds=1)
        wait_until(lambda: dt.datetime.now(next_second.tzinfo) >= next_second, 3, interval=0.01)
        fresh = renew(short_cp.grpc_addr, creds)
        assert fresh.serial != creds.serial and fresh.not_after > creds.not_after
        assert fresh.key_pem == creds.key_pem and (fresh.node_id, fresh.group) == (nid, "default")
        # the stream of the old certificate ends when it expires
        wait_until(lambda: node.closed, 15, message="the stream cut at the certificate's expiry")
        assert node.error is not None and node.error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        node.close()
    assert "the node certificate expired" in cp_log(short_cp)
    with DiscoveryClient(short_cp.grpc_addr, nid, credentials=fresh) as again:
        again.wait_for_version(short_cp.version())
    # an expired certificate is refused in the handshake: a new join token is needed
    with grpc.secure_channel(short_cp.grpc_addr, creds.channel_credentials(), options=channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            stream_once(ch, nid)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


# -- CA from files; the CA across a key rotation -----------------------------------------------


def _write_ca(directory: pathlib.Path, ca: CertificateAuthority) -> tuple[pathlib.Path, pathlib.Path]:
    cert, key = directory / "ca.crt", directory / "ca.key"
    cert.write_bytes(pem(ca.cert))
    key.write_bytes(key_pem(ca.key))
    key.chmod(0o600)
    return cert, key


def test_ca_given_as_files(tmp_path: pathlib.Path) -> None:
    ca = CertificateAuthority.generate("operator CA")
    cert, key = _write_ca(tmp_path, ca)
    cp = ControlPlaneProcess(tmp_path / "cp", extra_args=("--tls-cert", str(cert), "--tls-key", str(key)))
    with cp:
        assert cp.ca_pin == pin_hex(ca.pin)
        assert "(files)" in "\n".join(cp.stdout_lines)
        creds = enrol(cp, "filed")
        leaf = x509.load_pem_x509_certificates(creds.chain_pem)[0]
        leaf.verify_directly_issued_by(ca.cert)
    # a leaf certificate cannot sign nodes: refused at start with one line
    leaf_ca = CertificateAuthority.generate("leaf")
    server_key, server_chain = leaf_ca.issue_server(["x"])
    (tmp_path / "leaf.crt").write_bytes(server_chain)
    (tmp_path / "leaf.key").write_bytes(server_key)
    bad = ControlPlaneProcess(
        tmp_path / "bad", extra_args=("--tls-cert", str(tmp_path / "leaf.crt"), "--tls-key", str(tmp_path / "leaf.key"))
    )
    with pytest.raises(AssertionError, match="is not a CA certificate"):
        bad.start()


def _ca_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
             issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def test_intermediate_ca_given_as_files(tmp_path: pathlib.Path) -> None:
    root_key, mid_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("operator root", root_key, None, root_key)
    mid = _ca_cert("flux intermediate", mid_key, root, root_key)
    (tmp_path / "root.crt").write_bytes(pem(root))
    (tmp_path / "mid.crt").write_bytes(pem(mid) + pem(root))
    (tmp_path / "mid.key").write_bytes(key_pem(mid_key))
    args = ("--tls-cert", str(tmp_path / "mid.crt"), "--tls-key", str(tmp_path / "mid.key"),
            "--tls-ca", str(tmp_path / "root.crt"))  # fmt: skip
    with ControlPlaneProcess(tmp_path / "cp", extra_args=args) as cp:
        assert cp.ca_pin == pin_hex(CertificateAuthority(cert=root, key=root_key, root=root).pin)
        creds = enrol(cp, "via-intermediate")
        chain = x509.load_pem_x509_certificates(creds.chain_pem)
        assert [c.subject for c in chain[1:]] == [mid.subject]
        with DiscoveryClient(cp.grpc_addr, "via-intermediate", credentials=creds) as node:
            node.wait_for_version(cp.version())
        assert renew(cp.grpc_addr, creds).serial != creds.serial


def test_ca_survives_a_secret_key_rotation(tmp_path: pathlib.Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp")
    with cp:
        pin = cp.ca_pin
        creds = enrol(cp, "rotated")
    rotate = subprocess.run(
        [executable("flux-controlplane"), "rotate-secret-key", "--db", cp.db, "--data-dir", str(cp.workdir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rotate.returncode == 0, rotate.stderr
    with cp:  # starts again with the new key
        assert cp.ca_pin == pin
        with DiscoveryClient(cp.grpc_addr, "rotated", credentials=creds) as node:
            node.wait_for_version(cp.version())


# -- several control planes on one database ----------------------------------------------------


@pytest.mark.mysql
@pytest.mark.slow
def test_control_planes_of_one_database_share_the_ca_and_revocations(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)
    with mariadb_database() as url:
        a = ControlPlaneProcess(tmp_path_factory.mktemp("trust-a"), url, token="t-shared", cp_id="trust-a")
        b = ControlPlaneProcess(tmp_path_factory.mktemp("trust-b"), url, token="t-shared", cp_id="trust-b")
        with a, b:
            assert a.ca_pin == b.ca_pin
            creds = enroll_once(b.grpc_addr, JoinToken.parse(a.join_token()), "shared-1", "default")
            node = DiscoveryClient(b.grpc_addr, "shared-1", credentials=creds).start()
            try:
                node.wait_for_version(a.version())
                with a.client() as c:
                    assert c.delete("/api/v1/nodes/shared-1").json()["certificates"] == 1
                wait_until(lambda: node.closed, 5, message="b cut the stream a revoked")
                assert node.error is not None and node.error.code() == grpc.StatusCode.PERMISSION_DENIED
            finally:
                node.close()
            assert "config stream of node shared-1 cut: the node certificate was revoked" in cp_log(b)


def test_fluxctl_join_token_and_revoke(cp: ControlPlaneProcess) -> None:
    env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_ADMIN_TOKEN": cp.admin_token}
    env.pop("FLUX_TOKEN", None)

    def fluxctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([executable("fluxctl"), *args], capture_output=True, text=True, env=env, timeout=30)

    made = fluxctl("nodes", "join-token", "--group", "edge", "--ttl", "10m", "--uses", "2")
    assert made.returncode == 0, made.stderr
    t = JoinToken.parse(made.stdout.strip())
    assert "2 use(s)" in made.stderr and cp.ca_pin in made.stderr
    enroll_once(cp.grpc_addr, t, "ctl-enrolled", "edge")
    gone = fluxctl("nodes", "revoke", "ctl-enrolled")
    assert gone.returncode == 0 and "revoked node ctl-enrolled" in gone.stdout, gone.stderr
    missing = fluxctl("nodes", "revoke", "ctl-never")
    assert missing.returncode == 1 and "not known" in missing.stderr
