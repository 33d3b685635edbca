"""Channel binding for the tunnel login: what ties the login's MACs to one TLS connection.

The login MACs (see `fluxcommon.tunnel.protocol.messages`) cover a *channel binding*: the lower-case hex
SHA-256 of the node's TLS certificate (DER) as each side sees it — RFC 5929's
``tls-server-end-point``, with SHA-256 as its hash whatever the certificate's signature
algorithm (both ends are ours; Python's `ssl` has no RFC 5705 exporter, this needs none).

- The agent takes the certificate the node presented in the handshake, verified or not
  (`peer_end_point`); the node takes its own certificate (`own_end_point`).
- A relay that terminates the agent's TLS with a certificate of its own (an agent that does not
  verify the node accepts it) makes the agent bind to *the relay's* certificate: the real node
  computes a different binding and refuses the login, and the relay, lacking the token, cannot
  make a MAC the agent accepts for the node's answer.
- Without TLS (``tls: {force: false}`` and a plain agent) both sides bind to "" (`NO_BINDING`).

`session_tag` is what the node shows of a run id to readers: a short hash, never the run id.
"""

from __future__ import annotations

import hashlib

NO_BINDING = ""
"""The binding of a plain (non-TLS) connection."""


def end_point(cert_der: bytes) -> str:
    """tls-server-end-point of a certificate in DER form (lower-case hex SHA-256)."""
    if not cert_der:
        raise ValueError("no certificate to bind to")
    return hashlib.sha256(cert_der).hexdigest()


def own_end_point(cert_pem: str) -> str:
    """The node's binding: the first certificate of its PEM chain (the one it presents)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return end_point(cert.public_bytes(Encoding.DER))


def peer_end_point(ssl_object: object) -> str:
    """The agent's binding: the certificate the node presented (`SSLObject` or `SSLSocket`)."""
    der = ssl_object.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    if not der:
        raise ValueError("the node presented no TLS certificate")
    return end_point(der)


def session_tag(run_id: str) -> str:
    """A short, stable hash of a run id for status pages (the run id itself stays secret)."""
    return hashlib.sha256(f"flux-tunnel session|{run_id}".encode()).hexdigest()[:12] if run_id else ""
