"""In-process benchmark of the node's HTTP hot path, free of machine noise from other processes.

One trio run holds N minimal keep-alive clients and a minimal upstream (trio
tasks), and the real proxy connection handler (`dataplane.http.proxy`, on the
reactor) with a compiled one-route config; all talk over loopback TCP.
It reports microseconds of this process's CPU per proxied request, the number
that decides how far one worker goes. Use `--profile` for a cProfile listing.

    .venv/bin/python bench/node_hotpath.py [--requests 20000] [--clients 32] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import socket
import time

import trio
from trio.lowlevel import wait_readable

from dataplane import net
from dataplane.accesslog import AccessLog
from dataplane.config.compiler import EndpointRegistry, compile_snapshot
from dataplane.config.runtime import ConfigHolder
from dataplane.http.proxy import ProxyServices, serve_http
from dataplane.metrics import Metrics
from dataplane.reactor import Reactor
from dataplane.upstream.pool import PoolRegistry
from flux.v1 import config_pb2 as pb

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 02:43:13 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n"
)


async def upstream(lsock: socket.socket) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await net.accept(lsock)
            nursery.start_soon(_answer, conn)


async def _answer(conn: socket.socket) -> None:
    try:
        while True:
            data = await net.recv(conn)
            if not data:
                return
            n = data.count(b"\r\n\r\n")
            await net.send_all(conn, RESPONSE * n)
    except OSError:
        return


async def client(port: int, count: int, done: list[int]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(count):
        await net.send_all(sock, request)
        got = b""
        while not got.endswith(b"hello world\n"):
            await wait_readable(sock)
            got += sock.recv(65536)
        done[0] += 1
    sock.close()


async def main(requests: int, clients: int, access_log: bool) -> tuple[float, float, int]:
    up = net.listen_socket("127.0.0.1", 0)
    up_port = up.getsockname()[1]
    front = net.listen_socket("127.0.0.1", 0)
    port = front.getsockname()[1]
    snap = pb.Snapshot(
        version="1",
        listeners=[pb.Listener(name="web", protocol=pb.PROTOCOL_HTTP, address="127.0.0.1", port=port)],
        clusters=[pb.Cluster(name="app", endpoints=[pb.Endpoint(address="127.0.0.1", port=up_port, weight=1)])],
        routes=[pb.Route(name="all", listener="web", path="/", cluster="app")],
    )
    reactor = Reactor()
    pools = PoolRegistry(reactor)
    holder = ConfigHolder()
    holder.current = compile_snapshot(snap, EndpointRegistry(), pools.get).config
    log = AccessLog(None if not access_log else _devnull())
    svc = ProxyServices(
        holder=holder, metrics=Metrics(), access_log=log, passive_health=lambda *a: None, reactor=reactor
    )
    done = [0]
    async with trio.open_nursery() as nursery:
        await nursery.start(reactor.run)
        nursery.start_soon(upstream, up)
        nursery.start_soon(svc.run_reaper)
        if access_log:
            nursery.start_soon(log.run)

        async def accept_loop() -> None:
            lsock = reactor.wrap(front)
            while True:
                sock, peer = await lsock.accept()
                reactor.spawn(serve_http(svc, reactor.wrap(sock), peer, "web"))

        reactor.spawn(accept_loop())
        per_client = requests // clients
        await trio.sleep(0.05)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        async with trio.open_nursery() as load:
            for _ in range(clients):
                load.start_soon(client, port, per_client, done)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        nursery.cancel_scope.cancel()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, done[0]


def _devnull() -> int:
    import os

    return os.open(os.devnull, os.O_WRONLY)


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    from dataplane.worker import _tune_gc

    _tune_gc()  # as the node does
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    wall, cpu, n = trio.run(main, args.requests, args.clients, not args.no_access_log)
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
    print(
        f"{n} requests in {wall:.2f}s: {n / wall:,.0f} req/s in one process holding clients, proxy and "
        f"upstream; {cpu / n * 1e6:.1f} us CPU per request (all three)"
    )


if __name__ == "__main__":
    run()
