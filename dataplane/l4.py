"""TCP, TLS-passthrough and UDP forwarding for `tcp`, `tls` and `udp` listeners (layer 4).

TCP: each client connection gets an endpoint from the listener's cluster (by
client IP for hash balancers) and bytes are piped both ways; a side that
closes its writing half is passed on as a half-close (the other direction goes
on), and a connection with no byte either way for the listener's idle timeout
(`timeouts.idle`, default `TCP_IDLE`) is closed.

TLS passthrough: the node reads the ClientHello (within the listener's header
timeout), picks the cluster of the route whose `hosts` match its server name
(the listener's `cluster` when none does or no name was sent), and forwards
every byte, the ClientHello included, without terminating TLS.

UDP: each client address gets its own upstream socket (a session) that relays
replies back and expires after `UDP_IDLE` seconds of silence.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from functools import partial

import trio
from trio.lowlevel import wait_readable

from dataplane import net
from dataplane.config.runtime import ClusterRuntime, ListenerRuntime
from dataplane.tunnel.sni import MAX_HELLO, NeedMore, sni_from
from fluxcommon.bytepipe import forward

log = logging.getLogger("flux.l4")

UDP_IDLE = 60.0
TCP_IDLE = 3600.0  # a tcp/tls connection idle this long is closed (listener timeouts.idle overrides)
TLS_HELLO_WAIT = 10.0  # the ClientHello must come within this (or the listener's header timeout)


def _cluster_of(svc, listener: str) -> ClusterRuntime | None:  # type: ignore[no-untyped-def]
    cfg = svc.holder.current
    lst = cfg.listeners.get(listener) if cfg is not None else None
    return lst.cluster if lst is not None else None


def _listener_of(svc, listener: str) -> ListenerRuntime | None:  # type: ignore[no-untyped-def]
    cfg = svc.holder.current
    return cfg.listeners.get(listener) if cfg is not None else None


async def _pipe(src: socket.socket, dst: socket.socket, counter: list[int], i: int, seen: list[float]) -> None:
    """One direction (the shared `fluxcommon.bytepipe.forward`): a half-close goes on, the other
    direction keeps flowing; every chunk counts in `counter[i]` and restarts the idle clock."""

    def count(n: int) -> None:
        counter[i] += n
        seen[0] = trio.current_time()

    await forward(partial(net.recv, src), partial(net.send_all, dst), partial(dst.shutdown, socket.SHUT_WR), count)


async def _relay(client: socket.socket, up: socket.socket, counts: list[int], idle: float) -> None:
    """Bytes both ways until both sides closed, or nothing moved for `idle` seconds."""
    seen = [trio.current_time()]
    async with trio.open_nursery() as nursery:
        done = [0]

        async def one_way(src: socket.socket, dst: socket.socket, i: int) -> None:
            await _pipe(src, dst, counts, i, seen)
            done[0] += 1
            if done[0] == 2:
                nursery.cancel_scope.cancel()

        nursery.start_soon(one_way, client, up, 0)
        nursery.start_soon(one_way, up, client, 1)
        while True:
            await trio.sleep_until(seen[0] + idle)
            if trio.current_time() >= seen[0] + idle:
                nursery.cancel_scope.cancel()
                return


async def serve_tcp(  # type: ignore[no-untyped-def]
    svc, sock: socket.socket, peer: tuple[str, int], listener: str, *, passthrough: bool = False
) -> None:
    metrics = svc.metrics
    metrics.downstream_active += 1
    metrics.downstream_total += 1
    started = time.perf_counter()
    up: socket.socket | None = None
    lst = _listener_of(svc, listener)
    cluster = lst.cluster if lst is not None else None
    ep = None
    counts = [0, 0]
    hello = b""
    try:
        if lst is None:
            return
        if passthrough:
            hello, cluster = await _read_hello(lst, sock)
            if cluster is None:
                metrics.count("tls_passthrough_no_route")
                return
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
        if hello:
            await net.send_all(up, hello)
            counts[0] += len(hello)
        await _relay(sock, up, counts, lst.settings.idle_timeout or TCP_IDLE)
    except OSError:
        pass
    finally:
        if ep is not None:
            ep.active -= 1
        if up is not None:
            net.close(up)
        net.close(sock)
        metrics.downstream_active -= 1
        if cluster is not None:
            metrics.request(listener, "", cluster.name, 0, time.perf_counter() - started, counts[0], counts[1])


async def _read_hello(lst: ListenerRuntime, sock: socket.socket) -> tuple[bytes, ClusterRuntime | None]:
    """The ClientHello bytes and the cluster its server name routes to (None: nowhere)."""
    buf = b""
    with trio.move_on_after(lst.settings.header_timeout or TLS_HELLO_WAIT):
        while True:
            data = await net.recv(sock)
            if not data:
                return buf, None
            buf += data
            name = sni_from(buf)
            if isinstance(name, NeedMore) and len(buf) <= MAX_HELLO + 5:
                continue
            server_name = name if isinstance(name, str) else ""
            rule = lst.matcher.match(server_name, "/", "GET", _NO_HEADERS) if server_name else None
            if rule is not None:
                return buf, rule.target.pick_cluster()  # type: ignore[attr-defined]
            return buf, lst.cluster
    return buf, None


_NO_HEADERS: dict[str, str] = {}


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
