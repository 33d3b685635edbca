"""The trio socket layer (`dataplane.net`) and what it shares with the reactor (`dataplane.sockbase`)."""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from dataplane import net, reactor, sockbase


def test_one_connect_error_for_both_layers() -> None:
    assert net.ConnectError is reactor.ConnectError is sockbase.ConnectError
    assert issubclass(sockbase.ConnectError, OSError)


def test_numeric_addresses_resolve_without_a_lookup() -> None:
    info = sockbase.numeric_addr("127.0.0.1", 80)
    assert info is not None and info[0] == socket.AF_INET and info[4] == ("127.0.0.1", 80)
    v6 = sockbase.numeric_addr("::1", 81)
    assert v6 is not None and v6[0] == socket.AF_INET6 and v6[4][:2] == ("::1", 81)
    assert sockbase.numeric_addr("localhost", 80) is None


def test_connect_by_name_and_to_a_listener() -> None:
    async def main() -> None:
        srv = net.listen_socket("127.0.0.1", 0)
        port = srv.getsockname()[1]
        try:
            for host in ("127.0.0.1", "localhost"):
                sock = await net.connect(host, port, 2.0)
                conn, _peer = await net.accept(srv)
                await net.send_all(sock, b"ping")
                assert await net.recv(conn) == b"ping"
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                net.close(sock)
                assert await net.recv(conn) == b""
                net.close(conn)
        finally:
            net.close(srv)

    trio.run(main)


def test_connect_failures_are_connect_errors() -> None:
    async def main() -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        with pytest.raises(net.ConnectError) as info:
            await net.connect("127.0.0.1", port, 2.0)
        assert info.value.errno == errno.ECONNREFUSED
        with pytest.raises(net.ConnectError) as info:
            await net.connect("no-such-host.invalid", 80, 2.0)
        assert info.value.errno == errno.EHOSTUNREACH

    trio.run(main)
