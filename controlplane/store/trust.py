"""The node CA, join tokens and issued node certificates in the database.

- `load_or_create_ca`: the CA is made by the first control plane that starts on a database
  and kept in `node_ca` with its private key sealed (controlplane.secretbox), so every
  control plane sharing the database signs with, and is pinned by, the same CA.
- `TrustStore.create_join_token` / `enroll`: a join token is kept as the SHA-256 of its
  secret; `enroll` checks it (known, not expired, uses left, the node's group is the
  token's), takes one use, signs the node's certificate and records it, in one transaction.
- `renew`, `certificate_state`, `revoke_node`, `revoked_among`: every certificate issued is
  a row; revoking a node stamps all of its rows, and each control plane cuts the streams of
  revoked certificates it serves (controlplane.discovery.authn).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from controlplane.pki import CertificateAuthority, NodeCertificate, key_pem, pem
from controlplane.secretbox import SecretBox
from controlplane.store.models import JoinTokenRow, NodeCaRow, NodeCertificateRow, NodeRow
from fluxcommon.trust import JoinToken, secret_digest

log = logging.getLogger("flux.trust")

MAX_TOKEN_TTL = dt.timedelta(days=365)
MAX_TOKEN_USES = 1_000_000


class EnrolmentRefused(Exception):
    """Why a join token or a certificate is not accepted; one line, safe to show the node."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def load_or_create_ca(engine: Engine, box: SecretBox) -> tuple[CertificateAuthority, bool]:
    """The database's node CA, made (and sealed) if it has none; (ca, created)."""
    with Session(engine) as s:
        row = s.get(NodeCaRow, 1)
        if row is not None:
            key = box.open(row.key_sealed, "the node CA's private key")
            return CertificateAuthority.from_pem(row.cert_pem.encode(), str(key).encode()), False
    ca = CertificateAuthority.generate()
    try:
        with Session(engine) as s:
            s.add(NodeCaRow(id=1, cert_pem=pem(ca.cert).decode(), key_sealed=box.seal(key_pem(ca.key).decode())))
            s.commit()
    except IntegrityError:  # another control plane made it first: use theirs
        return load_or_create_ca(engine, box)
    return ca, True


def _why_refused(row: JoinTokenRow | None, token_id: str, secret: str, group: str) -> str:
    if row is None:
        return f"unknown join token {token_id!r}"
    if not secrets.compare_digest(row.secret_sha256, secret_digest(secret)):
        return f"wrong secret for join token {token_id!r}"
    if _aware(row.expires_at) <= _now():
        return f"join token {token_id!r} expired at {_aware(row.expires_at).isoformat(timespec='seconds')}"
    if row.node_group != group:
        return f"join token {token_id!r} is for node group {row.node_group!r}, not {group!r} (--group)"
    return f"join token {token_id!r} is used up ({row.uses} use(s))"


@dataclass(frozen=True)
class IssuedToken:
    token: JoinToken
    group: str
    uses: int
    expires_at: dt.datetime


@dataclass(frozen=True)
class CertificateState:
    node_id: str
    group: str
    revoked: bool


class TrustStore:
    """Join tokens and node certificates of one database, signed by `ca`."""

    def __init__(self, engine: Engine, ca: CertificateAuthority, node_cert_lifetime: dt.timedelta) -> None:
        self.engine = engine
        self.ca = ca
        self.lifetime = node_cert_lifetime

    # -- join tokens -----------------------------------------------------------------------

    def create_join_token(self, group: str, ttl: dt.timedelta, uses: int, created_by: str = "") -> IssuedToken:
        token = JoinToken(secrets.token_hex(6), secrets.token_urlsafe(24), self.ca.pin)
        expires = _now() + ttl
        with Session(self.engine) as s:
            s.add(
                JoinTokenRow(
                    token_id=token.token_id,
                    secret_sha256=secret_digest(token.secret),
                    node_group=group,
                    uses=uses,
                    expires_at=expires,
                    created_by=created_by[:255],
                )
            )
            s.commit()
        log.info("join token %s for group %s created by %s (%d use(s), until %s)",
                 token.token_id, group, created_by or "?", uses, expires.isoformat(timespec="seconds"))  # fmt: skip
        return IssuedToken(token, group, uses, expires)

    def list_join_tokens(self) -> list[dict[str, object]]:
        with Session(self.engine) as s:
            rows = s.execute(select(JoinTokenRow).order_by(JoinTokenRow.created_at)).scalars().all()  # type: ignore[arg-type]
        now = _now()
        return [
            {
                "id": r.token_id,
                "group": r.node_group,
                "uses": r.uses,
                "used": r.used,
                "expires_at": _aware(r.expires_at).isoformat(),
                "expired": _aware(r.expires_at) <= now,
                "created_by": r.created_by,
                "created_at": _aware(r.created_at).isoformat(),
            }
            for r in rows
        ]

    def delete_join_token(self, token_id: str) -> bool:
        with Session(self.engine) as s:
            gone = s.execute(delete(JoinTokenRow).where(JoinTokenRow.token_id == token_id)).rowcount  # type: ignore[attr-defined]
            s.commit()
        return bool(gone)

    # -- enrolment and renewal -------------------------------------------------------------

    def enroll(self, token_id: str, secret: str, node_id: str, group: str, csr_pem: bytes) -> NodeCertificate:
        """Check the token, take one use, sign and record the node's certificate (one
        transaction). Raises EnrolmentRefused (or pki.CertificateError for a bad CSR)."""
        with Session(self.engine) as s:
            # The conditional UPDATE first: it takes the write lock before anything is read (SQLite),
            # and no two enrolments can take the last use.
            taken = s.execute(
                update(JoinTokenRow)
                .where(
                    JoinTokenRow.token_id == token_id,
                    JoinTokenRow.secret_sha256 == secret_digest(secret),
                    JoinTokenRow.used < JoinTokenRow.uses,
                    JoinTokenRow.expires_at > _now(),
                    JoinTokenRow.node_group == group,
                )
                .values(used=JoinTokenRow.used + 1)
            ).rowcount  # type: ignore[attr-defined]
            if taken != 1:
                row = s.execute(select(JoinTokenRow).where(JoinTokenRow.token_id == token_id)).scalars().first()
                raise EnrolmentRefused(_why_refused(row, token_id, secret, group))
            earlier = (
                s.execute(
                    select(NodeCertificateRow.node_group).where(
                        NodeCertificateRow.node_id == node_id,
                        NodeCertificateRow.revoked_at.is_(None),  # type: ignore[union-attr]
                        NodeCertificateRow.not_after > _now(),
                    )
                )
                .scalars()
                .first()
            )
            if earlier is not None and earlier != group:
                raise EnrolmentRefused(
                    f"node id {node_id!r} is enrolled in group {earlier!r}: revoke it first "
                    f"(DELETE /api/v1/nodes/{node_id}) or choose another --node-id"
                )
            issued = self.ca.sign_node(csr_pem, node_id, group, self.lifetime)
            superseded = self._revoke(s, node_id)
            self._record(s, issued, token_id)
            s.commit()
        if superseded:
            log.warning("node %s enrolled again (join token %s): its %d earlier certificate(s) are revoked",
                        node_id, token_id, superseded)  # fmt: skip
        return issued

    def renew(self, serial: str, node_id: str, group: str, csr_pem: bytes) -> NodeCertificate:
        state = self.certificate_state(serial)
        if state is None or state.revoked:
            raise EnrolmentRefused("certificate revoked" if state else "unknown certificate")
        issued = self.ca.sign_node(csr_pem, node_id, group, self.lifetime)
        with Session(self.engine) as s:
            self._record(s, issued, "")
            s.commit()
        return issued

    @staticmethod
    def _record(s: Session, issued: NodeCertificate, token_id: str) -> None:
        s.add(
            NodeCertificateRow(
                serial=issued.serial,
                node_id=issued.node_id,
                node_group=issued.group,
                not_after=issued.not_after,
                join_token=token_id,
            )
        )

    # -- certificate state and revocation --------------------------------------------------

    def certificate_state(self, serial: str) -> CertificateState | None:
        with Session(self.engine) as s:
            row = s.get(NodeCertificateRow, serial)
        if row is None:
            return None
        return CertificateState(row.node_id, row.node_group, row.revoked_at is not None)

    def revoked_among(self, serials: list[str]) -> set[str]:
        """Which of `serials` are revoked or unknown now (chunks of 500)."""
        found: dict[str, bool] = {}
        with Session(self.engine) as s:
            for i in range(0, len(serials), 500):
                chunk = serials[i : i + 500]
                q = select(NodeCertificateRow.serial, NodeCertificateRow.revoked_at).where(
                    NodeCertificateRow.serial.in_(chunk)  # type: ignore[attr-defined]
                )
                for serial, revoked_at in s.execute(q):
                    found[serial] = revoked_at is not None
        return {x for x in serials if found.get(x, True)}

    @staticmethod
    def _revoke(s: Session, node_id: str) -> int:
        return int(
            s.execute(
                update(NodeCertificateRow)
                .where(NodeCertificateRow.node_id == node_id, NodeCertificateRow.revoked_at.is_(None))  # type: ignore[union-attr]
                .values(revoked_at=_now())
            ).rowcount  # type: ignore[attr-defined]
        )

    def revoke_node(self, node_id: str) -> int:
        """Revoke every certificate of `node_id` and forget its status rows (its workers' too);
        how many certificates."""
        with Session(self.engine) as s:
            count = self._revoke(s, node_id)
            s.execute(
                delete(NodeRow).where(
                    or_(NodeRow.node_id == node_id, NodeRow.node_id.startswith(node_id + "/w", autoescape=True))
                )
            )  # type: ignore[attr-defined]
            s.commit()
        return count

    def known_node(self, node_id: str) -> bool:
        with Session(self.engine) as s:
            cert = s.execute(select(NodeCertificateRow.serial).where(NodeCertificateRow.node_id == node_id)).first()
            status = s.execute(select(NodeRow.id).where(NodeRow.node_id == node_id)).first()
        return cert is not None or status is not None

    def prune(self, older_than: dt.timedelta = dt.timedelta(days=7)) -> int:
        """Forget certificates expired for a while, and join tokens expired or used up for a while."""
        cutoff = _now() - older_than
        with Session(self.engine) as s:
            n = s.execute(delete(NodeCertificateRow).where(NodeCertificateRow.not_after < cutoff)).rowcount  # type: ignore[attr-defined]
            s.execute(delete(JoinTokenRow).where(JoinTokenRow.expires_at < cutoff))
            s.commit()
        return int(n or 0)


def reseal_ca_key(s: Session, reseal: Callable[[Any, str], Any]) -> int:
    """For controlplane.store.encryption: the CA key sealed under the current key (0 or 1 changed)."""
    row = s.get(NodeCaRow, 1)
    if row is None:
        return 0
    sealed = reseal(row.key_sealed, "node CA key")
    if sealed == row.key_sealed:
        return 0
    row.key_sealed = sealed
    s.add(row)
    s.flush()
    return 1
