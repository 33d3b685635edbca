"""The tunnel against a direct connection and against `ssh -R`, on this machine, in one run.

    .venv/bin/python bench/tunnel_bench.py [--seconds 3] [--rounds 3] [--setup 2000] [--concurrent 1000]

Starts a control plane and one flux-node serving a tunnel server, one flux-tunnel agent
(TLS to the node, the agent's default) with three proxies to local services, and a
private OpenSSH server (a child process on a free port, temporary host key, a temporary
key in its own authorized_keys, cipher aes128-gcm@openssh.com) with `ssh -R` forwarding a
port to the same local service. The local services (bulk sink and source, echo, UDP echo)
run in a child process of their own so the load generator does not share its interpreter.

Measured, each the median of `--rounds` rounds alternating the paths:

- bulk TCP throughput, upload (client -> local service) and download, through
  direct | tunnel (TLS) | tunnel (TLS + useEncryption) | ssh -R (aes128-gcm);
- connection set-up latency: connect, one echoed byte, close; p50 and p99;
- `--concurrent` tunnelled connections opened and held at once, each echoing twice;
- UDP packets per second through a udp proxy (64-byte datagrams, at most 64 in flight).

Targets (issue 5): tunnel throughput at least 50% of ssh -R with encryption on both,
1,000 concurrent tunnelled connections with no errors, set-up p99 under 5 ms on loopback.
Needs openssh-server and openssh-client (Debian); run as root (sshd's privilege separation
directory /run/sshd is created when missing). Every loop is bounded by time or count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CHUNK = 256 * 1024
UPLOAD, DOWNLOAD, ECHO = b"U", b"D", b"E"


# -- the local services (child process: `tunnel_bench.py --serve`) ---------------------------


def _serve_tcp_conn(conn: socket.socket) -> None:
    with contextlib.suppress(OSError), conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        if mode == UPLOAD:  # read to EOF, answer the byte count
            buf = bytearray(CHUNK)
            total = 0
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(total.to_bytes(8, "big"))
        elif mode == DOWNLOAD:  # send until the client goes away
            block = b"\0" * CHUNK
            while True:
                conn.sendall(block)
        elif mode == ECHO:
            while data := conn.recv(65536):
                conn.sendall(data)


def serve() -> None:
    """TCP (first byte U/D/E picks the job) and UDP echo on free ports; prints them, runs until stdin closes."""
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4096)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def accept() -> None:
        while True:
            conn, _ = tcp.accept()
            threading.Thread(target=_serve_tcp_conn, args=(conn,), daemon=True).start()

    def udp_echo() -> None:
        while True:
            data, addr = udp.recvfrom(65535)
            with contextlib.suppress(OSError):
                udp.sendto(data, addr)

    threading.stack_size(256 * 1024)
    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=udp_echo, daemon=True).start()
    print(f"tcp {tcp.getsockname()[1]} udp {udp.getsockname()[1]}", flush=True)
    sys.stdin.read()


# -- measurements ---------------------------------------------------------------------------


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def upload(port: int, seconds: float) -> float:
    """Bytes/s the service counted from one connection sending for `seconds` (until its answer)."""
    block = os.urandom(CHUNK)
    with _connect(port, timeout=seconds + 30) as s:
        s.sendall(UPLOAD)
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        total = int.from_bytes(_recv_exactly(s, 8), "big")
        return total / (time.perf_counter() - t0)


def download(port: int, seconds: float) -> float:
    buf = bytearray(CHUNK)
    with _connect(port, timeout=seconds + 30) as s:
        s.sendall(DOWNLOAD)
        got = s.recv_into(buf)  # the first bytes: the stream is up
        t0 = time.perf_counter()
        end = t0 + seconds
        total = 0
        while (now := time.perf_counter()) < end:
            n = s.recv_into(buf)
            if not n:
                raise ConnectionError("download ended early")
            total += n
        del got
        return total / (now - t0)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed early")
        out += chunk
    return out


def setup_latency(port: int, count: int, budget: float) -> list[float]:
    """Seconds per connection: connect, one byte echoed through the service, close."""
    times: list[float] = []
    end = time.monotonic() + budget
    for _ in range(count):
        if time.monotonic() > end:
            break
        t0 = time.perf_counter()
        with _connect(port) as s:
            s.sendall(ECHO + b"x")
            if s.recv(1) != b"x":
                raise ConnectionError("bad echo")
            times.append(time.perf_counter() - t0)
    return times


@dataclass
class HeldResult:
    opened: int = 0
    echoed: int = 0
    errors: list[str] = field(default_factory=list)
    open_seconds: float = 0.0


async def _hold(port: int, n: int, wait: float) -> HeldResult:
    res = HeldResult()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    limit = asyncio.Semaphore(200)  # connects in flight at once (no SYN-backlog storms)

    async def open_one(i: int) -> None:
        async with limit:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), wait)
                w.write(ECHO + i.to_bytes(4, "big"))
                got = await asyncio.wait_for(r.readexactly(4), wait)
                if got != i.to_bytes(4, "big"):
                    raise ConnectionError("wrong echo")
                conns.append((r, w))
                res.opened += 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                res.errors.append(f"open {i}: {exc!r}")

    async def again(i: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(b"again!")
            if await asyncio.wait_for(r.readexactly(6), wait) != b"again!":
                raise ConnectionError("wrong echo")
            res.echoed += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
            res.errors.append(f"second echo {i}: {exc!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(open_one(i) for i in range(n)))
    res.open_seconds = time.perf_counter() - t0
    await asyncio.sleep(1.0)  # all held at once
    await asyncio.gather(*(again(i, r, w) for i, (r, w) in enumerate(conns)))
    for _, w in conns:
        w.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True), 10)
    return res


def hold_connections(port: int, n: int, timeout: float = 20.0) -> HeldResult:
    return asyncio.run(_hold(port, n, timeout))


def udp_rate(port: int, seconds: float, window: int = 64, size: int = 64) -> tuple[float, float]:
    """(answered datagrams per second, share lost) with at most `window` datagrams in flight."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect(("127.0.0.1", port))
    s.settimeout(0.2)
    payload = os.urandom(size)
    sent = got = 0
    inflight = 0
    # warm up: the first datagram opens the node's and the agent's peer state
    for _ in range(20):
        s.send(payload)
        try:
            s.recv(65535)
            break
        except TimeoutError:
            continue
    t0 = time.perf_counter()
    end = t0 + seconds
    with s:
        while time.perf_counter() < end:
            while inflight < window:
                s.send(payload)
                sent += 1
                inflight += 1
            try:
                s.recv(65535)
                got += 1
                inflight -= 1
            except TimeoutError:
                inflight = 0  # the rest are lost
        elapsed = time.perf_counter() - t0
        s.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            while inflight > 0:
                s.recv(65535)
                got += 1
                inflight -= 1
    return got / elapsed, (1 - got / sent) if sent else 0.0


# -- the processes --------------------------------------------------------------------------


class Services:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 4:
            raise RuntimeError(f"services did not start: {line}")
        self.tcp, self.udp = int(line[1]), int(line[3])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait(5)


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), _connect(port, timeout=1) as s:
            s.sendall(ECHO + b"?")
            if s.recv(1) == b"?":
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what or port} did not answer within {timeout}s")


SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
Ciphers aes128-gcm@openssh.com
LogLevel ERROR
"""


@contextlib.contextmanager
def ssh_forward(workdir: pathlib.Path, service_port: int) -> Iterator[int]:
    """A private sshd and `ssh -R` forwarding a free port on it to `service_port`; yields that port."""
    from support.processes import free_port

    sshd_bin, ssh_bin, keygen = (
        shutil.which("sshd") or "/usr/sbin/sshd",
        shutil.which("ssh"),
        shutil.which("ssh-keygen"),
    )
    if not (os.path.exists(sshd_bin) and ssh_bin and keygen):
        raise RuntimeError("needs openssh-server and openssh-client (apt-get install openssh-server openssh-client)")
    d = workdir / "ssh"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port, remote = free_port(), free_port()
    (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=d))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = open(d / "sshd.log", "w")  # noqa: SIM115 - the child owns it
    sshd = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log)
    ssh = None
    try:
        time.sleep(0.3)
        cmd = [
            ssh_bin, "-N", "-T", "-p", str(port), "-i", str(d / "client_key"),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ExitOnForwardFailure=yes", "-o", "Compression=no", "-o", "LogLevel=ERROR",
            "-c", "aes128-gcm@openssh.com",
            "-R", f"127.0.0.1:{remote}:127.0.0.1:{service_port}", "root@127.0.0.1",
        ]  # fmt: skip
        ssh = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _wait_port(remote, 15, ssh, "ssh -R")
        yield remote
    finally:
        for p in (ssh, sshd):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        log.close()


@contextlib.contextmanager
def tunnel(workdir: pathlib.Path, services: Services) -> Iterator[dict[str, object]]:
    """Control plane, node, and an agent with proxies plain (TLS), enc (TLS + useEncryption), udp."""
    from support.processes import free_port
    from support.tunnel_visitors import AgentProcess, TunnelStack

    stack = TunnelStack(workdir / "flux", bind_address="127.0.0.1")
    agent = None
    try:
        stack.start()

        def allowed_port(kind: int = socket.SOCK_STREAM) -> int:  # the stack allows 20000-60000
            for _ in range(200):
                port = free_port(kind=kind)
                if 20000 <= port <= 60000:
                    return port
            raise RuntimeError("no free port in 20000-60000")

        ports = {"plain": allowed_port(), "enc": allowed_port(), "udp": allowed_port(socket.SOCK_DGRAM)}
        agent = AgentProcess(
            workdir / "agent", "bench", server_addr="127.0.0.1", server_port=stack.port, token=stack.token,
            proxies=[
                {"name": "plain", "type": "tcp", "localPort": services.tcp, "remotePort": ports["plain"]},
                {"name": "enc", "type": "tcp", "localPort": services.tcp, "remotePort": ports["enc"],
                 "transport.useEncryption": True},
                {"name": "udp", "type": "udp", "localPort": services.udp, "remotePort": ports["udp"]},
            ],
            extra={"log.level": "warning"},
        ).start()  # fmt: skip
        agent.wait_online(20)
        for name in ("plain", "enc"):
            _wait_port(ports[name], 10, what=f"tunnel proxy {name}")
        yield {"ports": ports, "stack": stack, "agent": agent}
    finally:
        if agent is not None:
            agent.stop()
        stack.stop()


# -- report ---------------------------------------------------------------------------------


def _mb(rate: float) -> str:
    return f"{rate / 1e6:8.1f} MB/s"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rounds(rounds: int, fns: dict[str, Callable[[], float]]) -> dict[str, float]:
    got: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in order:
            got[name].append(fns[name]())
    return {k: statistics.median(v) for k, v in got.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per throughput sample")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setup", type=int, default=2000, help="connections for the set-up latency")
    ap.add_argument("--concurrent", type=int, default=1000)
    ap.add_argument("--udp-seconds", type=float, default=3.0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by every child
    if want < 4 * args.concurrent:
        print(f"warning: only {want} file descriptors (ulimit -n); {args.concurrent} connections need ~4x that")

    results: list[tuple[str, str, str, str]] = []  # (what, value, ratio, verdict)
    services = Services()
    try:
        with tempfile.TemporaryDirectory(prefix="flux-tunnel-bench-") as tmp:
            work = pathlib.Path(tmp)
            with tunnel(work, services) as t, ssh_forward(work, services.tcp) as ssh_port:
                ports = t["ports"]
                assert isinstance(ports, dict)
                paths = {"direct": services.tcp, "tunnel TLS": ports["plain"],
                         "tunnel TLS+useEncryption": ports["enc"], "ssh -R aes128-gcm": ssh_port}  # fmt: skip
                print(f"bulk TCP, {args.rounds} rounds x {args.seconds:g} s per path and direction ...", flush=True)
                up = _rounds(args.rounds, {k: (lambda p=p: upload(p, args.seconds)) for k, p in paths.items()})
                down = _rounds(args.rounds, {k: (lambda p=p: download(p, args.seconds)) for k, p in paths.items()})
                ssh_up, ssh_down = up["ssh -R aes128-gcm"], down["ssh -R aes128-gcm"]
                for name in paths:
                    for label, val, ssh in (("upload", up[name], ssh_up), ("download", down[name], ssh_down)):
                        ratio = f"{val / ssh:5.2f}x ssh" if name != "ssh -R aes128-gcm" else ""
                        verdict = ""
                        if name == "tunnel TLS":  # the target: TLS vs ssh; +useEncryption encrypts twice
                            verdict = "PASS" if val >= 0.5 * ssh else "FAIL"
                        results.append((f"throughput {label:8s} {name}", _mb(val), ratio, verdict))

                print(f"set-up latency, {args.setup} connections per path ...", flush=True)
                lat = {}
                for name, port in (("tunnel TLS", ports["plain"]), ("direct", services.tcp),
                                   ("ssh -R aes128-gcm", ssh_port)):  # fmt: skip
                    setup_latency(port, 50, 10)  # warm up
                    lat[name] = setup_latency(port, args.setup, 60)
                for name, values in lat.items():
                    p50, p99 = _pct(values, 0.5) * 1e3, _pct(values, 0.99) * 1e3
                    verdict = ("PASS" if p99 < 5.0 else "FAIL") if name == "tunnel TLS" else ""
                    results.append((f"set-up {name} ({len(values)} conns)", f"p50 {p50:.2f} ms p99 {p99:.2f} ms",
                                    "", verdict))  # fmt: skip

                print(f"{args.concurrent} concurrent tunnelled connections ...", flush=True)
                held = hold_connections(ports["plain"], args.concurrent)
                ok = held.opened == args.concurrent and held.echoed == args.concurrent and not held.errors
                results.append((
                    f"concurrent {args.concurrent} via tunnel",
                    f"{held.opened} open, {held.echoed} echoed twice, {len(held.errors)} errors",
                    f"opened in {held.open_seconds:.2f} s", "PASS" if ok else "FAIL",
                ))  # fmt: skip
                for e in held.errors[:5]:
                    print("  error:", e)

                print("UDP packet rate ...", flush=True)
                u_direct, loss_d = udp_rate(services.udp, args.udp_seconds)
                u_tun, loss_t = udp_rate(ports["udp"], args.udp_seconds)
                results.append(("udp 64 B, 64 in flight, direct", f"{u_direct:8.0f} pkt/s", f"loss {loss_d:.1%}", ""))
                results.append(("udp 64 B, 64 in flight, tunnel", f"{u_tun:8.0f} pkt/s",
                                f"{u_tun / u_direct:5.2f}x direct, loss {loss_t:.1%}", ""))  # fmt: skip
    finally:
        services.stop()

    print()
    print(f"{'measurement':52s} {'value':36s} {'ratio':28s} verdict")
    print("-" * 126)
    for what, value, ratio, verdict in results:
        print(f"{what:52s} {value:36s} {ratio:28s} {verdict}")
    failed = [r for r in results if r[3] == "FAIL"]
    print(f"\n{len(failed)} target(s) missed" if failed else "\nall targets met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
