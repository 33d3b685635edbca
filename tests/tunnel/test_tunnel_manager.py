"""The node's tunnel manager across snapshots (issue 14 item 1): a tunnel change the node cannot
apply is refused whole and the running tunnel server keeps serving; re-applying the good
settings changes nothing; a server whose TLS identity changes takes the old one's listening
socket over, so the control port never closes; `/tunnels` says whether it listens.

Real sockets, one trio run per test, no control plane: snapshots are built by hand.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from support.processes import free_port

from dataplane.tunnel.manager import TunnelConfigError, TunnelManager
from flux.v1 import config_pb2 as pb

BAD_PEM = "-----BEGIN CERTIFICATE-----..."  # the README's placeholder, as a new user applied it


def snapshot(port: int, **tunnel: object) -> pb.Snapshot:
    spec = pb.Tunnel(name="edge", bind_address="127.0.0.1", bind_port=port, tokens=["t"], tls_force=True)
    for key, value in tunnel.items():
        setattr(spec, key, value)
    return pb.Snapshot(version="1", tunnels=[spec])


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port` now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def run_with_manager(body: Callable[[TunnelManager], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            manager = TunnelManager(lambda: None)
            manager.bind(nursery)
            try:
                await body(manager)
            finally:
                for server in list(manager.servers.values()):
                    server.stop()
                nursery.cancel_scope.cancel()

    trio.run(main)


async def apply(manager: TunnelManager, snap: pb.Snapshot) -> None:
    manager.commit(manager.prepare(snap))
    await trio.testing.wait_all_tasks_blocked()  # the new server's task starts accepting


async def still_accepts(port: int) -> bool:
    return await trio.to_thread.run_sync(accepts, port)


def test_a_refused_tunnel_change_keeps_the_running_server() -> None:
    port = free_port()

    async def body(manager: TunnelManager) -> None:
        await apply(manager, snapshot(port))
        assert await still_accepts(port)
        with pytest.raises(TunnelConfigError, match="bad TLS settings"):
            manager.prepare(snapshot(port, tls_client_ca_pem=BAD_PEM))
        assert await still_accepts(port), "the refused change closed the running tunnel server"
        described = manager.describe()["tunnels"][0]
        assert described["listening"] is True and described["bind"] == f"127.0.0.1:{port}"
        await apply(manager, snapshot(port))  # re-applying the good settings: nothing to do, still open
        assert await still_accepts(port)
        assert manager.describe()["tunnels"][0]["listening"] is True

    run_with_manager(body)


def test_a_port_conflict_in_a_later_tunnel_keeps_every_running_server() -> None:
    port, taken = free_port(), socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)

    async def body(manager: TunnelManager) -> None:
        await apply(manager, snapshot(port))
        other = pb.Tunnel(name="other", bind_address="127.0.0.1", bind_port=taken.getsockname()[1], tokens=["t"])
        snap = snapshot(port, tls_force=False)  # a rebind of edge (TLS settings changed) ...
        snap.tunnels.append(other)  # ... and a new tunnel on a port in use
        with pytest.raises(TunnelConfigError, match="cannot listen"):
            manager.prepare(snap)
        assert await still_accepts(port)
        assert list(manager.servers) == ["edge"] and manager.servers["edge"].spec.tls_force is True

    try:
        run_with_manager(body)
    finally:
        taken.close()


def test_a_new_tls_identity_takes_over_the_control_port_without_closing_it() -> None:
    port = free_port()

    async def body(manager: TunnelManager) -> None:
        await apply(manager, snapshot(port))
        old = manager.servers["edge"]
        plan = manager.prepare(snapshot(port, tls_force=False))  # needs a new server on the same port
        assert await still_accepts(port), "prepare() closed the control port before the swap"
        manager.commit(plan)
        await trio.testing.wait_all_tasks_blocked()
        new = manager.servers["edge"]
        assert new is not old and new.spec.tls_force is False
        assert await still_accepts(port)
        assert manager.describe()["tunnels"][0]["listening"] is True

    run_with_manager(body)


def test_a_discarded_plan_leaves_the_running_server_alone() -> None:
    port = free_port()

    async def body(manager: TunnelManager) -> None:
        await apply(manager, snapshot(port))
        plan = manager.prepare(snapshot(port, tls_force=False))
        manager.discard(plan)  # e.g. the rest of the snapshot did not compile
        assert await still_accepts(port)
        assert manager.servers["edge"].spec.tls_force is True
        await apply(manager, snapshot(port))
        assert await still_accepts(port)

    run_with_manager(body)


def test_a_taken_vhost_https_port_refuses_the_change_and_a_kept_one_is_taken_over() -> None:
    port, https, taken = free_port(), free_port(), socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)

    async def body(manager: TunnelManager) -> None:
        await apply(manager, snapshot(port, vhost_https_port=https))
        assert await still_accepts(https)
        with pytest.raises(TunnelConfigError, match=r"vhost_https_port: cannot listen on 127\.0\.0\.1:\d+"):
            manager.prepare(snapshot(port, vhost_https_port=taken.getsockname()[1]))
        assert await still_accepts(port) and await still_accepts(https)
        await apply(manager, snapshot(port, vhost_https_port=https, tls_force=False))  # new server, same ports
        assert manager.servers["edge"].spec.tls_force is False
        assert await still_accepts(port) and await still_accepts(https)
        assert manager.servers["edge"].error is None

    try:
        run_with_manager(body)
    finally:
        taken.close()
