"""Secrets at rest (issue 12, part 7) and keyed fingerprints (part 6), against the real
`flux-controlplane` on SQLite and on MariaDB.

- The data folder is 0700, flux.db and its -wal/-shm and secret.key are 0600, and an
  earlier version's open modes are tightened at start.
- No value that a read masks is in the database in plaintext: not in the SQLite file nor
  its WAL, not in any row, not in any history document; every kind with secrets is written.
- `flux-controlplane rotate-secret-key` (a child process) re-encrypts everything in one go.
- A database of an earlier schema (config stored as resource rows and history documents,
  plaintext or sealed) is migrated to the history documents alone and sealed on the first
  start, idempotently.
- A key that did not write the database stops the start with one clear line.
- API key fingerprints are keyed HMACs, not prefixes of the unsalted SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import re
import secrets
import stat
import subprocess
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import inspect, select, text
from sqlmodel import Session
from support.legacy_store import LegacyStore
from support.processes import ControlPlaneProcess, ProcessStartError, executable
from support.tls import es256_pair, self_signed

from controlplane.secretbox import (
    BLOB_PREFIX,
    KEY_FILE,
    SecretBox,
    SecretKey,
    SecretKeyError,
    is_sealed_blob,
    key_id_of,
    load_secret_key,
    write_key_file,
)
from controlplane.spec import KINDS, ConfigSet
from controlplane.spec._types import Resource
from controlplane.store import encryption
from controlplane.store.db import make_engine, migrate
from controlplane.store.legacy_rows import TABLE_NAMES
from controlplane.store.models import ConfigHistoryRow
from controlplane.store.sealing import secret_values

# -- what is written -------------------------------------------------------------------------


def _pem_body_line(pem: str) -> str:
    """A line of the base64 body: what a plaintext PEM would leave in the raw bytes."""
    return max(pem.strip().splitlines()[1:-1], key=len)


class Sample:
    """One resource of every kind that has secrets, with fresh random secret values."""

    def __init__(self) -> None:
        tag = secrets.token_hex(6)
        self.api_key = f"sar-apikey-{tag}"
        self.hs_secret = f"sar-hs-secret-{tag}-0123456789abcdef"
        self.es_private, self.es_public = es256_pair()
        self.password = f"sar-password-{tag}"
        self.tunnel_token = f"sar-tunnel-token-{tag}"
        self.tunnel_tokens = [f"sar-tunnel-extra-{tag}-1", f"sar-tunnel-extra-{tag}-2"]
        self.tunnel_token_v2 = f"sar-tunnel-token-v2-{tag}"
        self.tunnel_user_token = f"sar-tunnel-user-{tag}"
        self.cert, self.cert_key = self_signed("secret.example.com")
        self.client_secret = f"sar-oauth-secret-{tag}"
        self.registry_password = f"sar-registry-password-{tag}"
        self.registry_token = f"sar-registry-token-{tag}"
        self.webhook_auth = f"Bearer sar-webhook-{tag}"

    def document(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "consumers": [
                {
                    "name": "sar-alice",
                    "credentials": [
                        {"type": "api_key", "key": self.api_key},
                        {"type": "jwt", "issuer": "sar-hs", "secret": self.hs_secret},
                        {
                            "type": "jwt",
                            "issuer": "sar-es",
                            "algorithm": "ES256",
                            "public_key": self.es_public,
                            "private_key": self.es_private,
                        },
                        {"type": "basic_auth", "username": "sar-alice", "password": self.password},
                    ],
                }
            ],
            "tunnels": [
                {
                    "name": "sar-tun",
                    "node_group": "sar",
                    "bind_port": 17100,
                    "token": self.tunnel_token,
                    "tokens": self.tunnel_tokens,
                    "users": [{"name": "sar-office", "token": self.tunnel_user_token}],
                }
            ],
            "certificates": [
                {"name": "sar-cert", "snis": ["secret.example.com"], "cert": self.cert, "key": self.cert_key}
            ],
            "policies": [
                {
                    "name": "sar-oauth",
                    "type": "oauth2",
                    "config": {
                        "introspection_url": "https://idp.example.com/introspect",
                        "client_id": "gw",
                        "client_secret": self.client_secret,
                    },
                }
            ],
            "registries": [
                {
                    "name": "sar-etcd",
                    "type": "etcd",
                    "address": "127.0.0.1:9",
                    "username": "flux",
                    "password": self.registry_password,
                    "token": self.registry_token,
                    "interval": "60s",
                }
            ],
            "alerts": [
                {
                    "name": "sar-alert",
                    "kind": "min_healthy",
                    "threshold": 1,
                    "webhook": "http://127.0.0.1:9/hook",
                    "headers": {"Authorization": self.webhook_auth, "X-Team": "edge"},
                }
            ],
        }

    def needles(self) -> list[str]:
        """Strings none of which may be in the database in the clear."""
        return [
            self.api_key,
            hashlib.sha256(self.api_key.encode()).hexdigest(),  # key_sha256 is sealed too
            self.hs_secret,
            _pem_body_line(self.es_private),
            self.password,
            "pbkdf2_sha256$",  # any basic-auth password hash
            self.tunnel_token,
            *self.tunnel_tokens,
            self.tunnel_token_v2,
            self.tunnel_user_token,
            _pem_body_line(self.cert_key),
            self.client_secret,
            self.registry_password,
            self.registry_token,
            self.webhook_auth,
        ]

    def specs(self) -> list[tuple[str, Resource]]:
        """The stored form of every resource (as the store keeps it in memory)."""
        return [
            (plural, KINDS[plural].spec.model_validate(raw).keep_secrets_from(None))
            for plural, items in self.document().items()
            for raw in items
        ]


# -- looking at the raw database -------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def raw_rows(url: str) -> tuple[str, list[bytes]]:
    """Every value of every table as text (history documents apart, as stored)."""
    engine = make_engine(url)
    try:
        parts: list[str] = []
        with engine.connect() as conn:
            for table in inspect(engine).get_table_names():
                if table == "config_history":
                    continue
                for row in conn.execute(text(f"SELECT * FROM {table}")):
                    parts.append(repr(tuple(row)))
            docs = [bytes(d) for d in conn.execute(text("SELECT document FROM config_history")).scalars()]
    finally:
        engine.dispose()
    return "\n".join(parts), docs


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def sqlite_bytes(cp: ControlPlaneProcess) -> bytes:
    db = pathlib.Path(cp.db.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def assert_nothing_in_plaintext(cp: ControlPlaneProcess, sample: Sample) -> None:
    rows, docs = raw_rows(cp.db)
    for needle in sample.needles():
        assert needle not in rows, f"{needle!r} is in a row in plaintext"
    assert "enc:v1:" in rows
    assert docs, "no history"
    for doc in docs:
        assert doc.startswith(BLOB_PREFIX), "a history document is not sealed"
        with pytest.raises(zlib.error):
            zlib.decompress(doc)
        for needle in sample.needles():
            assert needle.encode() not in doc
    if cp.db.startswith("sqlite"):
        raw = sqlite_bytes(cp)
        for needle in sample.needles():
            assert needle.encode() not in raw, f"{needle!r} is in flux.db or its WAL in plaintext"


def sealed_key_ids(url: str) -> set[str | None]:
    """The ids of the keys that sealed the values and documents of the database."""
    rows, docs = raw_rows(url)
    ids = {key_id_of(m) for m in re.findall(r"enc:v1:[A-Za-z0-9_=-]+", rows)}
    for doc in docs:
        ids.add(doc[len(BLOB_PREFIX) : len(BLOB_PREFIX) + 4].hex() if is_sealed_blob(doc) else "plaintext")
    return ids


# -- the control plane ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cp' / 'flux.db'}"
    return str(request.getfixturevalue("mariadb_url"))


def write_sample(c: httpx.Client, sample: Sample) -> None:
    r = c.post("/api/v1/apply", json=sample.document())
    assert r.status_code == 200 and r.json()["committed"], r.text
    tunnel = c.get("/api/v1/tunnels/sar-tun").json()
    r = c.put("/api/v1/tunnels/sar-tun", json={**tunnel, "token": sample.tunnel_token_v2})
    assert r.status_code == 200, r.text


def assert_secrets_work(c: httpx.Client, sample: Sample) -> None:
    """The secrets read back exactly: tokens signed with them verify with the originals."""
    r = c.post("/api/v1/auth/token", json={"consumer": "sar-alice", "issuer": "sar-hs"})
    assert r.status_code == 200, r.text
    assert jwt.decode(r.json()["token"], sample.hs_secret, algorithms=["HS256"])["sub"] == "sar-alice"
    r = c.post("/api/v1/auth/token", json={"consumer": "sar-alice", "issuer": "sar-es"})
    assert r.status_code == 200, r.text
    assert jwt.decode(r.json()["token"], sample.es_public, algorithms=["ES256"])["iss"] == "sar-es"
    tunnel = c.get("/api/v1/tunnels/sar-tun").json()
    assert tunnel["token"] == "********"
    # A masked read written back keeps every stored secret: nothing changes.
    for kind, name in [("consumers", "sar-alice"), ("tunnels", "sar-tun"), ("certificates", "sar-cert"),
                       ("policies", "sar-oauth"), ("registries", "sar-etcd"), ("alerts", "sar-alert")]:  # fmt: skip
        before = c.get("/api/v1/config").json()["version"]
        r = c.put(f"/api/v1/{kind}/{name}", json=c.get(f"/api/v1/{kind}/{name}").json())
        assert r.status_code == 200, (kind, r.text)
        assert c.get("/api/v1/config").json()["version"] == before, f"{kind}/{name} changed by its own read"


def start_log(cp: ControlPlaneProcess) -> str:
    """stderr of the latest start."""
    return cp.log_path.read_text(encoding="utf-8").rsplit("---- start #", 1)[-1]


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- tests --------------------------------------------------------------------------------


def test_secret_paths_cover_everything_masked_on_read() -> None:
    """Each spec's `secret_paths` names at least every value its `masked()` hides, so a new
    secret field that is masked but not sealed fails here (and in the database tests)."""
    sample = Sample()
    written = {plural for plural, _ in sample.specs()}
    masking = {p for p, kind in KINDS.items() if kind.spec.masked is not Resource.masked}
    assert masking <= written, f"add a resource with secrets to Sample for: {sorted(masking - written)}"
    for plural, spec in sample.specs():
        stored = spec.model_dump(mode="json")
        shown = set(_strings(spec.masked()))
        hidden = {s for s in _strings(stored) if s not in shown}
        sealed = {s for _, v in secret_values(type(spec).secret_paths, stored) for s in _strings(v)}
        assert hidden, plural
        assert hidden <= sealed, f"{plural}: masked on read but not sealed: {sorted(hidden - sealed)}"


def test_data_folder_and_database_files_are_private(tmp_path: pathlib.Path) -> None:
    workdir = tmp_path / "cp"
    workdir.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)
    with ControlPlaneProcess(workdir, token="") as cp:  # no FLUX_ADMIN_TOKEN: admin.token is made
        assert mode(workdir) == 0o700
        assert "now 0700" in start_log(cp)
        for name in ("flux.db", "flux.db-wal", "flux.db-shm", KEY_FILE, "admin.token"):
            assert mode(workdir / name) == 0o600, name
    # A database folder that does not exist yet is made 0700 (SQLite in its own folder).
    fresh = tmp_path / "elsewhere" / "db"
    with ControlPlaneProcess(tmp_path / "data", f"sqlite:///{fresh / 'flux.db'}"):
        assert mode(fresh) == 0o700
        assert mode(fresh / "flux.db") == 0o600 and mode(fresh / "flux.db-wal") == 0o600


def test_open_modes_of_an_earlier_version_are_tightened(tmp_path: pathlib.Path) -> None:
    workdir = tmp_path / "cp"
    workdir.mkdir()
    engine = make_engine(f"sqlite:///{workdir / 'flux.db'}")
    migrate(engine)
    engine.dispose()
    (workdir / "flux.db-wal").write_bytes(b"")  # an empty WAL is a valid one
    for path, m in [(workdir, 0o755), (workdir / "flux.db", 0o644), (workdir / "flux.db-wal", 0o644)]:
        os.chmod(path, m)
    with ControlPlaneProcess(workdir) as cp:
        assert mode(workdir) == 0o700
        assert mode(workdir / "flux.db") == 0o600 and mode(workdir / "flux.db-wal") == 0o600
        assert mode(workdir / "flux.db-shm") == 0o600
        log = start_log(cp)
        assert "was open to other users (mode 0755): now 0700" in log
        assert "flux.db was readable by other users (mode 0644): now 0600" in log


def test_no_secret_is_stored_in_plaintext(db_url: str, tmp_path: pathlib.Path) -> None:
    sample = Sample()
    with ControlPlaneProcess(tmp_path / "cp", db_url) as cp, cp.client() as c:
        write_sample(c, sample)
        assert_nothing_in_plaintext(cp, sample)  # while it runs: the WAL is still there
        assert_secrets_work(c, sample)
        fingerprint = c.get("/api/v1/consumers/sar-alice").json()["credentials"][0]["fingerprint"]
        cp.restart()  # now everything is read back from the sealed rows and history
        assert_secrets_work(c, sample)
        assert c.get("/api/v1/consumers/sar-alice").json()["credentials"][0]["fingerprint"] == fingerprint
        r = c.post("/api/v1/config/rollback", json={"version": c.get("/api/v1/config").json()["version"] - 1})
        assert r.status_code == 200, r.text
        assert_nothing_in_plaintext(cp, sample)


def test_api_key_fingerprints_are_keyed(tmp_path: pathlib.Path) -> None:
    sample = Sample()
    key_hash = hashlib.sha256(sample.api_key.encode()).hexdigest()
    with ControlPlaneProcess(tmp_path / "cp") as cp, cp.client() as c:
        write_sample(c, sample)
        consumer = c.get("/api/v1/consumers/sar-alice").json()
        fingerprint = consumer["credentials"][0]["fingerprint"]
        assert re.fullmatch(r"hmac-sha256:[0-9a-f]{16}", fingerprint), fingerprint
        assert fingerprint.removeprefix("hmac-sha256:") not in key_hash  # no prefix, no part of it
        # Written back by its fingerprint (shortened too), the key is kept; the old unkeyed
        # form names no key.
        consumer["credentials"][0]["fingerprint"] = fingerprint[:-6]
        assert c.put("/api/v1/consumers/sar-alice", json=consumer).status_code == 200
        consumer["credentials"][0]["fingerprint"] = "sha256:" + key_hash[:12]
        r = c.put("/api/v1/consumers/sar-alice", json=consumer)
        assert r.status_code == 422 and "fingerprint matches no stored key" in r.text, r.text
        # The config digest shown to readers is keyed as well (and the same in the history).
        cfg = c.get("/api/v1/config").json()
        assert cfg["digest"] == c.get("/api/v1/config/history").json()["items"][0]["digest"]
    # Another install (another key) shows other fingerprints of the same key.
    with ControlPlaneProcess(tmp_path / "other") as other, other.client() as c:
        write_sample(c, sample)
        assert c.get("/api/v1/consumers/sar-alice").json()["credentials"][0]["fingerprint"] != fingerprint


def test_config_digest_is_keyed() -> None:
    cfg = ConfigSet({plural: {} for plural in KINDS}).with_changes(Sample().specs(), [])
    assert re.fullmatch(r"[0-9a-f]{64}", cfg.digest())
    assert cfg.digest() != hashlib.sha256(cfg.canonical_json()).hexdigest()


def rotate(cp: ControlPlaneProcess, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [executable("flux-controlplane"), "rotate-secret-key", "--db", cp.db, "--data-dir", str(cp.workdir), *args]
    full_env = {**os.environ, **cp.shared_secret_key(), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=full_env, cwd=cp.workdir)


def test_rotate_secret_key_re_encrypts_everything(db_url: str, tmp_path: pathlib.Path) -> None:
    sample = Sample()
    cp = ControlPlaneProcess(tmp_path / "cp", db_url)
    with cp, cp.client() as c:
        write_sample(c, sample)
        old_ids = sealed_key_ids(cp.db)
        assert len(old_ids) == 1
        running = rotate(cp)
        assert running.returncode == 2 and "is running on this database" in running.stderr, running
    key_file = cp.workdir / KEY_FILE
    if db_url.startswith("sqlite"):
        old_key = key_file.read_text()
        done = rotate(cp)  # a new random key, into the key file
        assert done.returncode == 0, done.stderr
        assert mode(key_file) == 0o600 and key_file.read_text() != old_key
        assert (cp.workdir / f"{KEY_FILE}.old").read_text() == old_key
        new_id = SecretKey.parse(key_file.read_text(), "key file").id
        env: dict[str, str] = {}
    else:
        assert rotate(cp).returncode == 2  # the key is FLUX_SECRET_KEY: --new-key is needed
        new_key = base64.b64encode(os.urandom(32)).decode()
        done = rotate(cp, "--new-key", new_key)
        assert done.returncode == 0, done.stderr
        assert "set FLUX_SECRET_KEY to the new key" in done.stdout
        new_id = SecretKey.parse(new_key, "new").id
        env = {"FLUX_SECRET_KEY": new_key}
    assert re.search(rf"rotated the secret key of .*: {next(iter(old_ids))} -> {new_id}", done.stdout), done.stdout
    assert re.search(r"re-encrypted \d+ secret field value\(s\) and [1-9]\d* history document\(s\)", done.stdout)
    assert sealed_key_ids(cp.db) == {new_id}
    assert_nothing_in_plaintext(cp, sample)
    if env:
        with pytest.raises(ProcessStartError, match="was encrypted with secret key"):
            cp.start()  # with the old key
        cp.extra_env.update(env)
    with cp, cp.client() as c:
        assert_secrets_work(c, sample)


def earlier_version_database(db_url: str, sample: Sample, *, current_in_history: bool, box: SecretBox | None) -> None:
    """A database of an earlier version (schema 0014): the config stored twice, as resource rows
    and as history documents (tests/support/legacy_store.py); with `box` None, secrets and
    history in the clear and no install secret yet, as versions before the secret key wrote it."""
    engine = make_engine(db_url)
    old = LegacyStore(engine, box)
    first = ConfigSet().with_changes(sample.specs(), [])
    tunnel = first.get("tunnels", "sar-tun")
    second = first.with_put("tunnels", tunnel.model_copy(update={"token": sample.tunnel_token_v2}))  # type: ignore[union-attr]
    old.apply(first)
    old.apply(second, history=current_in_history)  # False: only the rows hold the current version
    engine.dispose()


@pytest.mark.parametrize("current_in_history", [True, False], ids=["with-history", "rows-only"])
def test_plaintext_database_of_an_earlier_version_is_sealed_on_start(
    db_url: str, tmp_path: pathlib.Path, current_in_history: bool
) -> None:
    sample = Sample()
    earlier_version_database(db_url, sample, current_in_history=current_in_history, box=None)
    rows, docs = raw_rows(db_url)
    assert sample.tunnel_token_v2 in rows and sample.client_secret in rows  # the test is not vacuous
    assert len(docs) == (2 if current_in_history else 1) and sample.tunnel_token.encode() in zlib.decompress(docs[0])

    cp = ControlPlaneProcess(tmp_path / "cp", db_url)
    with cp, cp.client() as c:
        # Migration 0015 wrote the current document from the rows if the history lacked it
        # (plaintext, as the rows were), then dropped the rows; the start sealed every document.
        assert re.search(r"encrypted \d+ secret field value\(s\) and 2 history document\(s\) left in plaintext",
                         start_log(cp)), start_log(cp)  # fmt: skip
        assert not table_names(db_url) & set(TABLE_NAMES), "resource tables left"
        assert_nothing_in_plaintext(cp, sample)
        assert_secrets_work(c, sample)
        history = c.get("/api/v1/config/history").json()["items"]
        assert c.get("/api/v1/config").json()["digest"] == history[0]["digest"]  # digests keyed again
        assert c.get("/api/v1/tunnels/sar-tun").json()["token"] == "********"
        r = c.post("/api/v1/config/rollback", json={"version": 1})  # an old document, opened
        assert r.status_code == 200, r.text
        _, sealed_docs = raw_rows(db_url)
        cp.restart()
        assert "left in plaintext" not in start_log(cp)  # idempotent: nothing more to do
        assert raw_rows(db_url)[1] == sealed_docs
        assert_secrets_work(c, sample)


def test_sealed_rows_of_an_earlier_version_without_history_are_migrated_with_the_key(
    db_url: str, tmp_path: pathlib.Path
) -> None:
    """Rows sealed under the key (an earlier version that was started since secrets at rest),
    the history lacking the current version: the start hands the key to migration 0015, which
    writes the current document sealed from them."""
    sample = Sample()
    cp = ControlPlaneProcess(tmp_path / "cp", db_url)
    shared = cp.shared_secret_key()
    if shared:
        key = SecretKey.parse(shared["FLUX_SECRET_KEY"], "FLUX_SECRET_KEY")
    else:
        cp.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = SecretKey.generate()
        write_key_file(cp.workdir / KEY_FILE, key)
    earlier_version_database(db_url, sample, current_in_history=False, box=SecretBox(key))
    rows, docs = raw_rows(db_url)
    assert "enc:v1:" in rows and len(docs) == 1
    with cp, cp.client() as c:
        assert "left in plaintext" not in start_log(cp)
        assert not table_names(db_url) & set(TABLE_NAMES), "resource tables left"
        assert_nothing_in_plaintext(cp, sample)
        assert_secrets_work(c, sample)
        history = c.get("/api/v1/config/history").json()["items"]
        assert [h["author"] for h in history] == ["migration 0015", "legacy"]
        assert c.get("/api/v1/config").json()["digest"] == history[0]["digest"]
        r = c.post("/api/v1/config/rollback", json={"version": 1})
        assert r.status_code == 200, r.text
        assert_nothing_in_plaintext(cp, sample)


def test_a_key_that_did_not_write_the_database_stops_the_start(db_url: str, tmp_path: pathlib.Path) -> None:
    sample = Sample()
    cp = ControlPlaneProcess(tmp_path / "cp", db_url)
    with cp, cp.client() as c:
        write_sample(c, sample)
    cp.extra_env["FLUX_SECRET_KEY"] = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(ProcessStartError) as err:
        cp.start()
    assert cp.proc is not None and cp.proc.returncode == 2
    errors = [line for line in start_log(cp).splitlines() if " ERROR " in line]
    assert len(errors) == 1, start_log(cp)
    assert "secret key from FLUX_SECRET_KEY: the database's install secret was encrypted with secret key" in errors[0]
    assert "Traceback" not in str(err.value)
    cp.extra_env["FLUX_SECRET_KEY"] = "not-a-key"
    with pytest.raises(ProcessStartError, match="FLUX_SECRET_KEY: not a base64-encoded 32-byte key"):
        cp.start()


# -- in-process: the box, the key file, an interrupted rotation --------------------------------


def test_sealed_values_round_trip_and_name_their_key() -> None:
    a, b = SecretKey.generate(), SecretKey.generate()
    box = SecretBox(a)
    for value in ["s3cret", "", "enc:v1:looks-sealed", 12, ["x", "y"], {"k": "v"}, "ü" * 300]:
        sealed = box.seal(value)
        assert sealed.startswith("enc:v1:") and key_id_of(sealed) == a.id
        assert box.open(sealed) == value
    assert box.open_blob(box.seal_blob(b"\x78\x9c doc")) == b"\x78\x9c doc"
    wrong_key = f"encrypted with secret key {a.id}, but this control plane has key {b.id}"
    with pytest.raises(SecretKeyError, match=wrong_key):
        SecretBox(b).open(box.seal("x"))
    assert SecretBox(b, old=[a]).open(box.seal("x")) == "x"  # during a rotation
    tampered = bytearray(box.seal_blob(b"doc"))
    tampered[-1] ^= 1
    with pytest.raises(SecretKeyError, match="does not decrypt"):
        box.open_blob(bytes(tampered))
    assert SecretKey.parse(a.encoded().rstrip("="), "k") == a  # URL-safe, padding optional
    assert SecretKey.parse(base64.b64encode(a.material).decode(), "k") == a
    assert "material" not in repr(a) and a.encoded() not in repr(a)


def test_an_interrupted_rotation_is_settled_on_start(tmp_path: pathlib.Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'flux.db'}")
    migrate(engine)
    loaded, _ = encryption.start(engine, load_secret_key(tmp_path))
    old = loaded.key
    pending = tmp_path / f"{KEY_FILE}.new"

    # Stopped before its commit: the new key is dropped, the old one still opens everything.
    write_key_file(pending, SecretKey.generate())
    loaded, _ = encryption.start(engine, load_secret_key(tmp_path))
    assert loaded.key == old and not pending.exists()

    # Stopped after its commit, before the rename: the new key is adopted.
    new = SecretKey.generate()
    write_key_file(pending, new)
    encryption.seal_database(engine, SecretBox(new, old=[old]))
    loaded, _ = encryption.start(engine, load_secret_key(tmp_path))
    assert loaded.key == new and not pending.exists()
    assert SecretKey.parse((tmp_path / KEY_FILE).read_text(), "k") == new
    assert SecretKey.parse((tmp_path / f"{KEY_FILE}.old").read_text(), "k") == old
    with Session(engine) as s:
        assert s.execute(select(ConfigHistoryRow)).first() is None
    engine.dispose()
