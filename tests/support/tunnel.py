"""Helpers for tunnel end-to-end tests: the `flux-tunnel` agent as a child process, and small
real servers behind it (TCP/UDP echo, TLS, PROXY protocol), a TCP forwarder that can cut a
connection half-open, and a private CA for mutual TLS. For attacks: `RawAgent` (our own protocol
code sending what flux-tunnel never would), `TlsRelay` (a man in the middle terminating TLS
with its own certificate) and `FakeNode` (a node without the token that accepts any login).

Every server here runs in threads of the test process on a free loopback port and is
stopped by `close()` (they are context managers too). Nothing here talks to the control
plane or the node: tests do that with `support.processes` / `support.node`.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fluxcommon.proxy_protocol import NEED_MORE, ProxyHeader, parse
from fluxcommon.tunnel.protocol.binding import peer_end_point
from fluxcommon.tunnel.protocol.control import (
    ClientSession,
    LoginFailed,
    LoginSucceeded,
    ProxyAccepted,
    ProxyRejected,
)
from fluxcommon.tunnel.protocol.frames import ProtocolError
from fluxcommon.tunnel.protocol.messages import PROTOCOL_VERSION, Login, LoginOk, NewProxy, parse_message
from fluxcommon.tunnel.protocol.mux import ControlMessage, Mux
from support.processes import executable, free_port, wait_until
from tunnelclient.config_dump import to_toml

# -- the agent ------------------------------------------------------------------------------


class AgentProcess:
    """`flux-tunnel -c FILE` as a child process, with its admin endpoint on a free port.

    `config` is a frpc-style document (frp field names, nested dicts or dotted keys, lists of
    `proxies`/`visitors` tables); `webServer.port` is added. The file is written as TOML to
    `workdir/NAME.toml`; `write()` rewrites it (for `/api/reload`).
    """

    def __init__(self, workdir: pathlib.Path, name: str, config: dict[str, Any]) -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.admin_port = free_port()
        self.path = self.workdir / f"{name}.toml"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write(config)

    def write(self, config: dict[str, Any]) -> None:
        doc = {**config, "webServer": {"addr": "127.0.0.1", "port": self.admin_port}}
        doc.setdefault("log", {"level": "debug"})
        self.config = doc
        self.path.write_text(to_toml(doc), encoding="utf-8")

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> AgentProcess:
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [executable("flux-tunnel"), "-c", str(self.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        wait_until(self._admin_up, 10, message=f"agent {self.name} admin endpoint")
        return self

    def _admin_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"flux-tunnel {self.name} exited with {self.proc.returncode}\n{self.output()}")
        return httpx.get(self.admin + "/healthz", timeout=2).status_code == 200

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.admin + "/api/status", timeout=3)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def proxy(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.status()["proxies"] if p["name"] == name), None)

    def wait_proxy(self, name: str, status: str = "running", timeout: float = 10.0) -> dict[str, Any]:
        """Wait until proxy `name` (its name on the node: ``user.name``) has `status`; return it."""

        def check() -> dict[str, Any] | None:
            p = self.proxy(name)
            return p if p is not None and p["status"] == status else None

        try:
            return wait_until(check, timeout, interval=0.05, message=f"proxy {name} {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstatus: {self.status()}\n{self.output()}") from None

    def wait_state(self, state: str, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return wait_until(
                lambda: (s := self.status())["state"] == state and s,
                timeout,
                interval=0.05,
                message=f"agent {self.name} {state}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None

    def reload(self) -> httpx.Response:
        return httpx.get(self.admin + "/api/reload", timeout=5)

    def output(self) -> str:
        try:
            return f"---- agent {self.name} log (tail):\n" + self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> AgentProcess:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tcp_proxy(name: str, local_port: int, remote_port: int = 0, **extra: Any) -> dict[str, Any]:
    """A ``[[proxies]]`` table of type tcp."""
    return {
        "name": name,
        "type": "tcp",
        "localIP": "127.0.0.1",
        "localPort": local_port,
        "remotePort": remote_port,
        **extra,
    }


# -- small servers --------------------------------------------------------------------------


class _Server:
    """A listening socket served by a thread; `close()` stops it and closes open connections."""

    kind = socket.SOCK_STREAM

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, self.kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        if self.kind == socket.SOCK_STREAM:
            self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.closed = threading.Event()
        self.conns: set[socket.socket] = set()
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.conns.add(conn)
                self.accepted += 1
            threading.Thread(target=self._run, args=(conn, addr), daemon=True).start()

    def _run(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        try:
            self.handle(conn, addr)
        except OSError:
            pass
        finally:
            with self._lock:
                self.conns.discard(conn)
            conn.close()

    def handle(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            for conn in list(self.conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


class TcpEchoServer(_Server):
    """Echoes every byte; with `greeting`, sends it first (to tell servers apart)."""

    def __init__(self, greeting: bytes = b"", port: int = 0) -> None:
        self.greeting = greeting
        super().__init__(port)

    def handle(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        if self.greeting:
            conn.sendall(self.greeting)
        _echo(conn)


class ProxyProtocolEchoServer(_Server):
    """Reads a PROXY protocol header (v1 or v2), records it in `headers`, then echoes."""

    def __init__(self) -> None:
        self.headers: list[ProxyHeader] = []
        super().__init__()

    def handle(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
            result = parse(data)
            if result is not NEED_MORE:
                break
        header, used = result  # type: ignore[misc]
        self.headers.append(header)
        if data[used:]:
            conn.sendall(data[used:])
        _echo(conn)


class TlsEchoServer(_Server):
    """A TLS server with a self-signed certificate for `server_name`; answers ``hello NAME`` then echoes."""

    def __init__(self, server_name: str, cert_pem: str, key_pem: str, directory: pathlib.Path) -> None:
        self.server_name = server_name
        cert, key = directory / f"{server_name}.crt", directory / f"{server_name}.key"
        cert.write_text(cert_pem)
        key.write_text(key_pem)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.handshakes = 0
        super().__init__()

    def handle(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        conn.settimeout(10)
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            self.handshakes += 1
            tls.sendall(f"hello {self.server_name}\n".encode())
            _echo(tls)


class UdpEchoServer:
    """Answers every datagram with ``PREFIX + datagram``."""

    def __init__(self, prefix: bytes = b"echo:") -> None:
        self.prefix = prefix
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            self.received += 1
            self.sock.sendto(self.prefix + data, addr)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpEchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a forwarder that can cut a connection half-open ----------------------------------------


class FreezableForwarder:
    """Listens on a free port and forwards each connection to `target` (host, port).

    `freeze()` turns the network into a black hole: the connections open now keep their
    sockets but no byte passes either way any more, and no FIN or RST is passed on
    either (bytes and closes are swallowed), as when a link dies silently. Connections
    accepted while frozen are held the same way. `unfreeze()` lets new connections through
    again; the frozen ones stay dead (closed for good by `close()`).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.frozen = False
        self.accepted = 0
        self._dead: list[socket.socket] = []  # sockets of frozen connections, kept open
        self._live: list[list[Any]] = []  # [client, upstream, dead flag]
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                if self.frozen:
                    self._dead.append(client)
                    threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            entry: list[Any] = [client, upstream, False]
            with self._lock:
                self._live.append(entry)
            threading.Thread(target=self._pump, args=(entry, client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(entry, upstream, client), daemon=True).start()

    def _swallow(self, sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def _pump(self, entry: list[Any], src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if entry[2]:  # frozen: swallow bytes and the close
                    if not data:
                        return
                    continue
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            if not entry[2]:
                for s in (src, dst):
                    try:
                        s.close()
                    except OSError:
                        pass

    def freeze(self) -> None:
        with self._lock:
            self.frozen = True
            for entry in self._live:
                entry[2] = True
                self._dead += entry[:2]
            self._live = []

    def unfreeze(self) -> None:
        with self._lock:
            self.frozen = False

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        with self._lock:
            socks = self._dead + [s for entry in self._live for s in entry[:2]]
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


# -- TCP clients ----------------------------------------------------------------------------


def tcp_roundtrip(port: int, payload: bytes, *, greeting: int = 0, timeout: float = 5.0) -> bytes:
    """Connect to 127.0.0.1:`port`, send `payload`, read `greeting` + len(payload) bytes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        return recv_exact(s, greeting + len(payload))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def wait_tcp_echo(port: int, timeout: float = 10.0, greeting: int = 0) -> bytes:
    """Wait until a round trip through 127.0.0.1:`port` works; returns the bytes read."""

    def attempt() -> bytes:
        return tcp_roundtrip(port, b"ping", greeting=greeting, timeout=2)

    return wait_until(attempt, timeout, interval=0.1, message=f"echo through port {port}")


def transfer(port: int, data: bytes, *, timeout: float = 60.0, on_sent: Callable[[], None] | None = None) -> bytes:
    """Send `data` through an echo at `port` while reading it back (both ways at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        error: list[BaseException] = []

        def send() -> None:
            try:
                s.sendall(data)
                if on_sent:
                    on_sent()
            except BaseException as exc:  # reported by the reader
                error.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = recv_exact(s, len(data))
        sender.join(timeout)
        if error:
            raise error[0]
        return got


def udp_roundtrip(port: int, payload: bytes, *, expect_prefix: bytes = b"echo:", tries: int = 20) -> bytes:
    """Send `payload` to 127.0.0.1:`port` until the echo comes back (UDP may drop while a path opens)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.25)
        for _ in range(tries):
            s.sendto(payload, ("127.0.0.1", port))
            deadline = time.monotonic() + 0.25
            while time.monotonic() < deadline:
                try:
                    data, _ = s.recvfrom(65535)
                except TimeoutError:
                    break
                if data == expect_prefix + payload:
                    return data
        raise AssertionError(f"no UDP echo of {payload[:20]!r} through port {port}")


# -- a private CA ---------------------------------------------------------------------------


class TestCA:
    """A throw-away certificate authority issuing server and client certificates (PEM)."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "flux test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, common_name: str, *, server: bool = True) -> tuple[str, str]:
        """(certificate PEM, key PEM) for `common_name` (also its DNS SAN), for a server or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


# -- attackers ------------------------------------------------------------------------------


def _client_tls() -> ssl.SSLContext:
    """TLS to a node without verifying it (what an agent without trustedCaFile does)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


class RawAgent:
    """A hand-made agent on our own protocol code over TLS, for what flux-tunnel never sends:
    another user's proxy names, a run id read elsewhere. Logs in on `login()`; `new_proxy`
    answers the node's verdict. Close it (or use it as a context manager)."""

    def __init__(self, port: int, name: str, token: str, *, run_id: str = "") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = _client_tls().wrap_socket(raw)
        self.mux = Mux("client")
        self.session = ClientSession(
            self.mux, name=name, token=token, run_id=run_id, channel_binding=peer_end_point(self.sock)
        )
        self.run_id = ""

    def _until(self, wanted: tuple[type, ...], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.mux.data_to_send()
            if out:
                self.sock.sendall(out)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the node closed the connection")
            for event in self.mux.receive_data(data):
                for ev in self.session.handle_event(event, time.time()):
                    if isinstance(ev, wanted):
                        return ev
        raise AssertionError(f"no {wanted} from the node")

    def login(self) -> LoginSucceeded | LoginFailed:
        self.session.start(time.time())
        result = self._until((LoginSucceeded, LoginFailed))
        if isinstance(result, LoginSucceeded):
            self.run_id = result.run_id
        return result  # type: ignore[no-any-return]

    def new_proxy(self, name: str, proxy_type: str, options: dict[str, Any]) -> ProxyAccepted | ProxyRejected:
        self.session.new_proxy(name, proxy_type, options)
        return self._until((ProxyAccepted, ProxyRejected))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump_until_closed(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class TlsRelay(_Server):
    """A man in the middle: terminates the agent's TLS with its own certificate and opens its own
    TLS connection to the real node (not verifying it), passing the plaintext both ways. It holds
    no token; an agent that does not verify the node completes its handshake with it."""

    def __init__(self, target: tuple[str, int], directory: pathlib.Path, name: str = "relay.example.test") -> None:
        cert, key = _self_signed_pair(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "relay.crt").write_text(cert)
        (directory / "relay.key").write_text(key)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(directory / "relay.crt"), str(directory / "relay.key"))
        self.target = target
        self.handshakes = 0
        super().__init__()

    def handle(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        conn.settimeout(None)
        try:
            agent_side = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            return  # an agent that verifies the node refuses the relay's certificate
        self.handshakes += 1
        node_side = _client_tls().wrap_socket(socket.create_connection(self.target, timeout=5))
        node_side.settimeout(None)
        t = threading.Thread(target=_pump_until_closed, args=(node_side, agent_side), daemon=True)
        t.start()
        _pump_until_closed(agent_side, node_side)
        t.join(5)


class FakeNode(_Server):
    """A node without the token (or a relay that does not pass the login on): it accepts every
    LOGIN with a LOGIN_OK it cannot prove, and records what the agent sends afterwards."""

    def __init__(self, directory: pathlib.Path) -> None:
        cert, key = _self_signed_pair("fake-node.example.test")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "fake.crt").write_text(cert)
        (directory / "fake.key").write_text(key)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(directory / "fake.crt"), str(directory / "fake.key"))
        self.logins: list[str] = []
        self.after_login: list[str] = []  # control messages received after LOGIN_OK
        super().__init__()

    def handle(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        conn.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            return
        mux = Mux("server")
        with tls:
            while data := tls.recv(65536):
                try:
                    events = mux.receive_data(data)
                except ProtocolError:
                    return
                for event in events:
                    if not isinstance(event, ControlMessage):
                        continue
                    msg = parse_message(event.message, from_agent=True)
                    if isinstance(msg, Login):
                        self.logins.append(msg.name)
                        mux.send_control(
                            LoginOk("fake-run", PROTOCOL_VERSION, 10.0, 30.0, "ab" * 16, "00" * 32).to_wire()
                        )
                    else:
                        self.after_login.append(msg.TYPE + (f" {msg.name}" if isinstance(msg, NewProxy) else ""))
                out = mux.data_to_send()
                if out:
                    tls.sendall(out)


def _self_signed_pair(name: str) -> tuple[str, str]:
    from fluxcommon.tlsutil import self_signed

    return self_signed(name, (name,))
