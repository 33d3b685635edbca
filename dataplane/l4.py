"""TCP and UDP forwarding for `tcp` / `udp` listeners (layer 4, no parsing).

TCP: each client connection gets an endpoint from the listener's cluster (by
client IP for hash balancers) and bytes are piped both ways until either side
closes. UDP: each client address gets its own upstream socket (a session)
that relays replies back and expires after `UDP_IDLE` seconds of silence.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import trio
from trio.lowlevel import wait_readable

from dataplane import net
from dataplane.config.runtime import ClusterRuntime

log = logging.getLogger("flux.l4")

UDP_IDLE = 60.0


def _cluster_of(svc, listener: str) -> ClusterRuntime | None:  # type: ignore[no-untyped-def]
    cfg = svc.holder.current
    lst = cfg.listeners.get(listener) if cfg is not None else None
    return lst.cluster if lst is not None else None


async def _pipe(src: socket.socket, dst: socket.socket, counter: list[int], i: int) -> None:
    try:
        while True:
            data = await net.recv(src)
            if not data:
                break
            counter[i] += len(data)
            await net.send_all(dst, data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


async def serve_tcp(svc, sock: socket.socket, peer: tuple[str, int], listener: str) -> None:  # type: ignore[no-untyped-def]
    metrics = svc.metrics
    metrics.downstream_active += 1
    metrics.downstream_total += 1
    started = time.perf_counter()
    up: socket.socket | None = None
    cluster = _cluster_of(svc, listener)
    ep = None
    counts = [0, 0]
    try:
        if cluster is None:
            return
        ep = cluster.balancer.pick(peer[0])
        if ep is None:
            metrics.upstream_error(cluster.name, "no_endpoint")
            return
        ep.active += 1
        try:
            up = await net.connect(ep.address, ep.port, cluster.connect_timeout)
        except net.ConnectError as exc:
            svc.passive_health(cluster, ep, False)
            metrics.upstream_error(cluster.name, "connect_failure")
            log.warning("tcp %s -> %s: %s", listener, ep.key, exc)
            return
        svc.passive_health(cluster, ep, True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, sock, up, counts, 0)
            nursery.start_soon(_pipe, up, sock, counts, 1)
    finally:
        if ep is not None:
            ep.active -= 1
        if up is not None:
            net.close(up)
        net.close(sock)
        metrics.downstream_active -= 1
        if cluster is not None:
            metrics.request(listener, "", cluster.name, 0, time.perf_counter() - started, counts[0], counts[1])


async def serve_udp(svc, sock: socket.socket, listener_name: Callable[[], str]) -> None:  # type: ignore[no-untyped-def]
    sessions: dict[tuple[str, int], tuple[socket.socket, list[float]]] = {}

    async def relay_back(client: tuple[str, int], up: socket.socket, seen: list[float]) -> None:
        """Replies from the upstream to the client; ends after UDP_IDLE s without traffic either way."""
        try:
            while True:
                with trio.move_on_at(seen[0] + UDP_IDLE):
                    await wait_readable(up)
                    try:
                        data = up.recv(65535)
                    except (BlockingIOError, ConnectionRefusedError):
                        continue
                    seen[0] = trio.current_time()
                    try:
                        sock.sendto(data, client)
                    except OSError:
                        pass
                    continue
                if trio.current_time() >= seen[0] + UDP_IDLE:
                    return
        finally:
            sessions.pop(client, None)
            net.close(up)

    async with trio.open_nursery() as nursery:
        while True:
            try:
                data, client = sock.recvfrom(65535)
            except BlockingIOError:
                await wait_readable(sock)
                continue
            except OSError:
                continue
            session = sessions.get(client)
            if session is None:
                cluster = _cluster_of(svc, listener_name())
                ep = cluster.balancer.pick(client[0]) if cluster is not None else None
                if ep is None:
                    continue
                family = socket.AF_INET6 if ":" in ep.address else socket.AF_INET
                up = socket.socket(family, socket.SOCK_DGRAM)
                up.setblocking(False)
                try:
                    up.connect((ep.address, ep.port))
                except OSError:
                    up.close()
                    continue
                session = (up, [trio.current_time()])
                sessions[client] = session
                nursery.start_soon(relay_back, client, up, session[1])
            up, seen = session
            seen[0] = trio.current_time()
            try:
                up.send(data)
            except OSError:
                pass
