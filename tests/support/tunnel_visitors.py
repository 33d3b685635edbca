"""Real processes and networks for the secret-proxy (stcp/sudp/xtcp) tests and the tunnel bench.

- `TunnelStack`: `flux-controlplane` + one `flux-node` serving a `tunnels` resource.
- `AgentProcess`: `flux-tunnel -c FILE.toml` (frpc.toml names) with its admin endpoint
  (`/api/status`), optionally inside a network namespace.
- `TcpEcho` / `TcpSource` / `UdpEcho`: local services on threads, on sockets made in any namespace.
- Network namespaces (`ip netns`, veth, a bridge, iptables MASQUERADE), entered per thread
  with setns(2) so the test process itself can open sockets and HTTP clients inside them:
  `isolated_pair()` (two namespaces that reach the node and not each other) and `nat_pair()`
  (two hosts, each behind its own MASQUERADE router, on a bridged "internet" with the node).

Every wait is bounded. Namespace names and subnets are random, so concurrent runs do not meet.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import random
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from support.node import NodeProcess
from support.processes import ControlPlaneProcess, executable, free_port, wait_until

T = TypeVar("T")

# -- control plane + node -----------------------------------------------------------------


class TunnelStack:
    """A control plane and one node serving the tunnel server `name` on `bind_address:port`."""

    def __init__(self, workdir: pathlib.Path, *, bind_address: str = "0.0.0.0", name: str = "edge") -> None:
        self.workdir = pathlib.Path(workdir)
        self.bind_address = bind_address
        self.name = name
        self.token = "tt-" + secrets.token_hex(8)
        self.port = free_port()
        self.cp = ControlPlaneProcess(self.workdir / "cp")
        self.node: NodeProcess | None = None

    def start(self, **tunnel: Any) -> TunnelStack:
        self.cp.start()
        spec = {
            "name": self.name,
            "bind_address": self.bind_address,
            "bind_port": self.port,
            "token": self.token,
            "allow_ports": "20000-60000",
            **tunnel,
        }
        with self.cp.client() as c:
            r = c.post("/api/v1/apply", json={"tunnels": [spec]})
        assert r.status_code == 200, r.text
        self.node = NodeProcess(self.workdir / "node", self.cp.grpc_addr, node_id="tunnel-node")
        self.node.start()
        wait_until(self._serving, 15, message=f"tunnel server {self.name!r} on port {self.port}")
        return self

    def _serving(self) -> bool:
        assert self.node is not None
        body = self.node.get("/tunnels").json()
        return any(t["name"] == self.name and t["bind"].endswith(f":{self.port}") for t in body["tunnels"])

    def tunnel(self) -> dict[str, Any]:
        assert self.node is not None
        return next(t for t in self.node.get("/tunnels").json()["tunnels"] if t["name"] == self.name)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the node's /metrics (0 when absent)."""
        assert self.node is not None
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in self.node.get("/metrics").text.splitlines():
            head, _, value = line.rpartition(" ")
            if head == name or head == f"{name}{{{want}}}":
                return float(value)
        return 0.0

    def output(self) -> str:
        return (self.node.output() if self.node else "") + "\n" + self.cp.output()[-3000:]

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.cp.stop()

    def __enter__(self) -> TunnelStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- agents ---------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def toml_tables(kind: str, items: list[dict[str, Any]]) -> str:
    """`[[kind]]` sections from dicts (dotted keys such as "transport.useEncryption" allowed)."""
    out = []
    for item in items:
        out.append(f"[[{kind}]]")
        out += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        out.append("")
    return "\n".join(out)


class AgentProcess:
    """`flux-tunnel` with a generated frpc.toml-style config; `netns` runs it in a namespace.

    The admin endpoint listens on 127.0.0.1 of the agent's namespace; `status()` reaches it
    from a thread that entered that namespace.
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        user: str,
        *,
        server_addr: str,
        server_port: int,
        token: str,
        proxies: list[dict[str, Any]] = (),  # type: ignore[assignment]
        visitors: list[dict[str, Any]] = (),  # type: ignore[assignment]
        netns: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.netns = netns
        # A fresh namespace has every port free; in ours, ask the OS.
        self.admin_port = free_port() if netns is None else random.randint(20000, 40000)
        head = {
            "user": user,
            "serverAddr": server_addr,
            "serverPort": server_port,
            "auth.token": token,
            "loginFailExit": False,
            "webServer.addr": "127.0.0.1",
            "webServer.port": self.admin_port,
            "log.level": "info",
            **(extra or {}),
        }
        text = "\n".join(f"{k} = {toml_value(v)}" for k, v in head.items()) + "\n\n"
        text += toml_tables("proxies", list(proxies)) + toml_tables("visitors", list(visitors))
        self.config_path = self.workdir / f"{user}.toml"
        self.config_path.write_text(text)
        self.log_path = self.workdir / f"{user}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        cmd = [executable("flux-tunnel"), "-c", str(self.config_path)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        return self

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.admin_port}/api/status"
        r = in_netns(self.netns, lambda: httpx.get(url, timeout=2.0))
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def visitor(self, name: str) -> dict[str, Any]:
        return next(v for v in self.status()["visitors"] if v["name"] == name)

    def proxy(self, name: str) -> dict[str, Any]:
        wire = f"{self.user}.{name}"
        return next(p for p in self.status()["proxies"] if p["name"] == wire)

    def wait(self, predicate: Callable[[dict[str, Any]], Any], timeout: float = 10.0, message: str = "") -> Any:
        def check() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"flux-tunnel {self.user} exited with {self.proc.returncode}\n{self.output()}")
            return predicate(self.status())

        try:
            return wait_until(check, timeout, interval=0.05, message=message or f"agent {self.user}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None

    def wait_online(self, timeout: float = 10.0) -> None:
        """Logged in, every proxy running and every visitor answered (ready or refused)."""

        def ok(s: dict[str, Any]) -> bool:
            return (
                s["state"] == "online"
                and all(p["status"] == "running" for p in s["proxies"])
                and all(v["status"] in ("ready", "refused") for v in s["visitors"])
            )

        self.wait(ok, timeout, f"agent {self.user} online with its proxies and visitors")

    def output(self) -> str:
        try:
            return f"---- flux-tunnel {self.user} (tail):\n" + self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- local services -------------------------------------------------------------------------


def tcp_listener(host: str = "127.0.0.1", port: int = 0, netns: str | None = None) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1024)
        return s

    return in_netns(netns, make)


def udp_socket(host: str = "127.0.0.1", port: int = 0, netns: str | None = None) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, port))
        return s

    return in_netns(netns, make)


def tcp_client(netns: str | None = None) -> socket.socket:
    """A TCP socket in `netns` (connect it from any thread)."""
    return in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))


class TcpEcho:
    """Echoes every byte back, one thread per connection; `greeting` goes first if set."""

    def __init__(self, sock: socket.socket | None = None, greeting: bytes = b"") -> None:
        self.sock = sock or tcp_listener()
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.accepted = 0
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            if self.greeting:
                conn.sendall(self.greeting)
            while data := conn.recv(262144):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


class TcpSource:
    """Sends zeros to every connection until the peer goes away; `ended` counts those that did."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or tcp_listener()
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.ended = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        block = b"\0" * 65536
        with contextlib.suppress(OSError), conn:
            while True:
                conn.sendall(block)
        self.ended += 1

    def close(self) -> None:
        self.sock.close()


class UdpEcho:
    """Answers every datagram with `prefix + datagram`."""

    def __init__(self, sock: socket.socket | None = None, prefix: bytes = b"echo:") -> None:
        self.sock = sock or udp_socket()
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
                self.received += 1
                self.sock.sendto(self.prefix + data, addr)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(262144, n - len(buf)))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def echo_roundtrip(
    addr: tuple[str, int], payload: bytes, *, netns: str | None = None, timeout: float = 10.0, greeting: bytes = b""
) -> bytes:
    """Connect, (read `greeting`), send `payload` while reading it back; the bytes read back."""
    sock = tcp_client(netns)
    sock.settimeout(timeout)
    with sock:
        sock.connect(addr)
        if greeting:
            assert recv_exactly(sock, len(greeting)) == greeting
        writer = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        writer.start()
        got = recv_exactly(sock, len(payload))
        writer.join(timeout)
        return got


def closed_within(addr: tuple[str, int], within: float, *, netns: str | None = None) -> float:
    """Connect to `addr` and return how long until the other end closes (fail after `within`)."""
    sock = tcp_client(netns)
    sock.settimeout(within)
    t0 = time.monotonic()
    with sock:
        sock.connect(addr)
        with contextlib.suppress(ConnectionResetError):
            sock.sendall(b"anyone there?")
            try:
                data = sock.recv(100)
            except TimeoutError:
                raise AssertionError(f"{addr} still open after {within}s") from None
            assert data == b"", f"expected a close, got {data!r}"
    return time.monotonic() - t0


# -- network namespaces ---------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """`fn()` in `netns` (None: here). The network namespace is per thread: a thread enters it.

    Sockets keep the namespace they were made in, so a socket made here can be used anywhere.
    """
    if netns is None:
        return fn()
    result: list[Any] = []

    def run() -> None:
        try:
            fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            finally:
                os.close(fd)
            result.append((True, fn()))
        except BaseException as exc:  # handed to the caller
            result.append((False, exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    if not result:
        raise TimeoutError(f"call in netns {netns} did not finish")
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _run(*cmd: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    if netns:
        cmd = ("ip", "netns", "exec", netns, *cmd)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def netns_unavailable(*, iptables: bool = False) -> str | None:
    """None when we may make namespaces (and use iptables' nat table in them); else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if iptables and shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install iptables)"
    name = "fxprobe-" + secrets.token_hex(3)
    try:
        r = _run("ip", "netns", "add", name, check=False)
        if r.returncode != 0:
            return f"ip netns add is not allowed here: {r.stderr.strip()}"
        try:
            _run("ip", "link", "set", "lo", "up", netns=name)
            if iptables:
                r = _run("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "MASQUERADE",
                         netns=name, check=False)  # fmt: skip
                if r.returncode != 0:
                    return f"iptables MASQUERADE is not allowed in a namespace here: {r.stderr.strip()}"
        finally:
            _run("ip", "netns", "del", name, check=False)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces unusable: {exc}"
    return None


def _free_subnet() -> int:
    """A random x with 10.x.0.0/16 unused by the root namespace's addresses and routes."""
    used = _run("ip", "-4", "-o", "addr").stdout + _run("ip", "-4", "route").stdout
    for _ in range(50):
        x = random.randint(100, 250)
        if f" 10.{x}." not in used and f"\n10.{x}." not in "\n" + used:
            return x
    raise RuntimeError("no free 10.x.0.0/16 subnet for test namespaces")


class Netns:
    """Namespaces, veth pairs and rules made for one test; `close()` removes every one."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.names: list[str] = []
        self.root_links: list[str] = []

    def add(self, role: str) -> str:
        name = f"fx{role}-{self.tag}"
        _run("ip", "netns", "add", name)
        self.names.append(name)
        _run("ip", "link", "set", "lo", "up", netns=name)
        return name

    def veth(self, a: str | None, a_name: str, b: str | None, b_name: str) -> None:
        """A veth pair `a_name` in namespace `a` (None: root) and `b_name` in `b`, both up."""
        tmp_a, tmp_b = f"fxa{secrets.token_hex(4)}", f"fxb{secrets.token_hex(4)}"
        _run("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp, ns, final in ((tmp_a, a, a_name), (tmp_b, b, b_name)):
            if ns is None:
                _run("ip", "link", "set", tmp, "name", final)
                self.root_links.append(final)
            else:
                _run("ip", "link", "set", tmp, "netns", ns)
                _run("ip", "link", "set", tmp, "name", final, netns=ns)
            _run("ip", "link", "set", final, "up", netns=ns)

    def addr(self, ns: str | None, dev: str, cidr: str) -> None:
        _run("ip", "addr", "add", cidr, "dev", dev, netns=ns)

    def run(self, ns: str | None, *cmd: str) -> None:
        _run(*cmd, netns=ns)

    def close(self) -> None:
        for link in self.root_links:
            _run("ip", "link", "del", link, check=False)
        for name in self.names:
            _run("ip", "netns", "del", name, check=False)
        self.names, self.root_links = [], []


@dataclass
class Site:
    """An agent's place: its namespace and the node's address as seen from there."""

    netns: str
    node_addr: str
    addr: str  # the host's own address in its namespace


@contextlib.contextmanager
def isolated_pair() -> Iterator[tuple[Site, Site]]:
    """Two namespaces, each on its own veth to the root namespace (where the node is).

    Each has an address on a /30 shared with the root namespace and no other route, so it
    reaches the node (and services in the root namespace) and never the other one, whatever
    the root namespace's forwarding setting: a direct connection between them cannot exist.
    """
    nets = Netns()
    try:
        x = _free_subnet()
        sites = []
        for i, role in enumerate(("a", "b")):
            ns = nets.add(role)
            root_dev = f"fx{role}{nets.tag}"
            nets.veth(None, root_dev, ns, "eth0")
            base = 4 * i
            nets.addr(None, root_dev, f"10.{x}.0.{base + 1}/30")
            nets.addr(ns, "eth0", f"10.{x}.0.{base + 2}/30")
            sites.append(Site(ns, f"10.{x}.0.{base + 1}", f"10.{x}.0.{base + 2}"))
        yield sites[0], sites[1]
    finally:
        nets.close()


@contextlib.contextmanager
def nat_pair(*, drop_unsolicited: bool = True) -> Iterator[tuple[Site, Site]]:
    """Two hosts, each behind its own NAT router (iptables MASQUERADE), and the node.

        root ns (node)  10.X.0.1 --+
                                   |  bridge "br0" in namespace "inet" (the internet)
        nat1  wan 10.X.0.11  ------+------  nat2  wan 10.X.0.12
        nat1  lan 10.X.1.1                  nat2  lan 10.X.2.1
        host1     10.X.1.2 (default via nat1)    host2 10.X.2.2 (default via nat2)

    Only the routers' namespaces forward; the root namespace needs no route and no rule (its
    side of the bridge is on-link). Yields the two hosts' sites.

    `drop_unsolicited`: the routers drop unsolicited inbound TCP on their public side, as a
    NAT gateway's firewall does (RFC 5382 REQ-4: a NAT must not answer an unsolicited SYN for
    6 s, so a hole-punching peer's own outbound SYN can still open the mapping). Without it a
    bare Linux router answers such a SYN with a RST at once, and the RST puts the peer's fresh
    mapping into CLOSE, which makes TCP simultaneous open through it fail nearly every time.
    """
    nets = Netns()
    try:
        x = _free_subnet()
        inet = nets.add("i")
        _run("ip", "link", "add", "br0", "type", "bridge", netns=inet)
        _run("ip", "link", "set", "br0", "up", netns=inet)
        root_dev = f"fxi{nets.tag}"
        nets.veth(None, root_dev, inet, "up0")
        nets.addr(None, root_dev, f"10.{x}.0.1/24")
        _run("ip", "link", "set", "up0", "master", "br0", netns=inet)
        sites = []
        for i in (1, 2):
            router, host = nets.add(f"n{i}"), nets.add(f"h{i}")
            nets.veth(router, "wan", inet, f"p{i}")
            _run("ip", "link", "set", f"p{i}", "master", "br0", netns=inet)
            nets.addr(router, "wan", f"10.{x}.0.{10 + i}/24")
            nets.veth(router, "lan", host, "eth0")
            nets.addr(router, "lan", f"10.{x}.{i}.1/24")
            nets.addr(host, "eth0", f"10.{x}.{i}.2/24")
            nets.run(host, "ip", "route", "add", "default", "via", f"10.{x}.{i}.1")
            nets.run(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            nets.run(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", f"10.{x}.{i}.0/24", "-o", "wan",
                     "-j", "MASQUERADE")  # fmt: skip
            if drop_unsolicited:
                nets.run(router, "iptables", "-A", "INPUT", "-i", "wan", "-p", "tcp", "-m", "conntrack",
                         "--ctstate", "NEW,INVALID", "-j", "DROP")  # fmt: skip
            sites.append(Site(host, f"10.{x}.0.1", f"10.{x}.{i}.2"))
        yield sites[0], sites[1]
    finally:
        nets.close()
