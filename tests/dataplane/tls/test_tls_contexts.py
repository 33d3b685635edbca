"""Server and upstream TLS contexts of a config version (dataplane.tls.contexts) and client
identities (dataplane.tls.identity): SNI choice, rotation, refusals naming what, XFCC."""

from __future__ import annotations

import pytest
from support.tls import TestCA

from dataplane.tls.contexts import ServerTls, TlsConfigError, UpstreamTls, cert_info
from dataplane.tls.identity import ClientIdentity, subject_key
from flux.v1 import config_pb2 as pb

CA = TestCA()


def _cert(name: str, *sans: str, snis: tuple[str, ...] = ()) -> pb.Certificate:
    cert, key = CA.issue(sans[0] if sans else name, sans)
    return pb.Certificate(name=name, cert_pem=cert, key_pem=key, snis=snis)


def _listener(*certs: str, **tls: object) -> pb.Listener:
    return pb.Listener(name="l", protocol=pb.PROTOCOL_HTTPS, certificates=list(certs), tls=pb.ListenerTls(**tls))


CERTS = {c.name: c for c in (_cert("a", "a.test"), _cert("w", "*.w.test"), _cert("d", "d.test"),
                             _cert("s", "ignored.test", snis=("chosen.test",)))}  # fmt: skip


def test_context_for_exact_wildcard_default() -> None:
    tls = ServerTls.build(_listener("d", "a", "w", "s"), CERTS)
    assert tls.context_for("a.test") is tls.exact["a.test"]
    assert tls.context_for("A.TEST.") is tls.exact["a.test"]
    assert tls.context_for("x.w.test") is tls.wildcard[".w.test"]
    assert tls.context_for("y.x.w.test") is tls.default  # one label only
    assert tls.context_for("w.test") is tls.default
    assert tls.context_for(None) is tls.default and tls.context_for("") is tls.default
    assert "chosen.test" in tls.exact and "ignored.test" not in tls.exact  # snis win over SANs


def test_rotation_builds_new_contexts_with_the_same_choices() -> None:
    tls = ServerTls.build(_listener("d", "a"), CERTS)
    again = tls.rotated()
    assert again.default is not tls.default and set(again.exact) == set(tls.exact)


@pytest.mark.parametrize(
    ("listener", "match"),
    [
        (_listener(), "at least one certificate"),
        (_listener("nope"), "unknown certificate 'nope'"),
        (_listener("a", min_version="1.1"), "tls.min_version"),
        (_listener("a", ciphers="NOPE"), "tls.ciphers"),
        (_listener("a", client_ca="junk"), "tls.client_ca"),
    ],
)
def test_bad_settings_name_the_field(listener: pb.Listener, match: str) -> None:
    with pytest.raises(TlsConfigError, match=match):
        ServerTls.build(listener, CERTS)


def test_a_key_of_another_certificate_is_refused() -> None:
    bad = pb.Certificate(name="bad", cert_pem=CERTS["a"].cert_pem, key_pem=CERTS["d"].key_pem)
    with pytest.raises(TlsConfigError, match="certificate 'bad'"):
        ServerTls.build(_listener("bad"), {"bad": bad})


def test_cert_info_names_and_expiry() -> None:
    info = cert_info(CERTS["a"])
    assert info.names == ("a.test",) and 29 * 86400 < info.expires_in <= 30 * 86400


def test_upstream_tls_key_changes_with_the_settings() -> None:
    one = UpstreamTls.build(pb.Cluster(name="c", tls=pb.UpstreamTls(sni="x.test", ca=CA.pem)), CERTS)
    two = UpstreamTls.build(pb.Cluster(name="c", tls=pb.UpstreamTls(sni="x.test", ca=CA.pem)), CERTS)
    three = UpstreamTls.build(pb.Cluster(name="c", tls=pb.UpstreamTls(sni="y.test", ca=CA.pem)), CERTS)
    assert one.key == two.key != three.key
    with pytest.raises(TlsConfigError, match=r"tls\.certificate"):
        UpstreamTls.build(pb.Cluster(name="c", tls=pb.UpstreamTls(certificate="missing")), CERTS)


def test_client_identity_and_xfcc() -> None:
    from cryptography import x509

    cert_pem, _ = CA.issue("alice", ("alice.test",), organization='Ex"ample', uris=("spiffe://flux/alice",))
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER
    )
    ident = ClientIdentity.from_der(der)
    xfcc = ident.xfcc().decode()
    assert xfcc.startswith(f"Hash={ident.sha256};") and 'Subject="O=Ex\\\\\\"ample,CN=alice"' in xfcc
    assert "URI=spiffe://flux/alice" in xfcc and "DNS=alice.test" in xfcc
    assert subject_key("CN=alice,O=Example") == subject_key("O=Example,CN=alice")
