"""TlsRSock: an `ssl.SSLSocket` on the reactor, for https clients and TLS upstreams.

OpenSSL reads and writes the socket itself (in C, no memory BIO copies); this class only
turns its "want read" / "want write" answers into reactor waits. Two differences from a
plain `RSock`:

- A short read says nothing about the kernel buffer (one call returns at most one TLS
  record's plaintext), so `readable` turns False only when OpenSSL says it wants to read.
  Plaintext OpenSSL already decrypted is read before any wait, so edge-triggered readiness
  never strands it.
- A write OpenSSL could not finish must be retried with the same bytes: `try_send` returns
  0 in that case and callers go on with `send_all` on the same buffer, as they do after a
  short plain send.

The handshake runs in `handshake()`, under the caller's deadline (the connection's header
timeout for clients, the connect timeout for upstreams).
"""

from __future__ import annotations

import select
import ssl

from dataplane.reactor import RECV_SIZE, RSock

_WANT_READ = ssl.SSLWantReadError
_WANT_WRITE = ssl.SSLWantWriteError


class TlsRSock(RSock):
    __slots__ = ()

    sock: ssl.SSLSocket

    async def handshake(self) -> None:
        sock = self.sock
        while True:
            try:
                sock.do_handshake()
                return
            except _WANT_READ:
                self.readable = False
                await self._wait(1)
            except _WANT_WRITE:
                self.writable = False
                await self._wait(2)

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        while True:
            if not self.readable:
                await self._wait(1)
            edges = self.edges
            try:
                data = self.sock.recv(size)
            except _WANT_READ:
                self.readable = False
                continue
            except _WANT_WRITE:
                self.writable = False
                await self._wait(2)
                continue
            self.recv_edges = edges
            return data

    def try_recv(self, size: int = RECV_SIZE) -> bytes | None:
        if not self.readable:
            return None
        edges = self.edges
        try:
            data = self.sock.recv(size)
        except _WANT_READ:
            self.readable = False
            return None
        except _WANT_WRITE:
            return None
        self.recv_edges = edges
        return data

    def try_send(self, data: bytes) -> int:
        try:
            return self.sock.send(data)
        except (_WANT_WRITE, _WANT_READ):
            return 0  # the caller goes on with send_all(data): OpenSSL wants the same bytes again

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                sent = sock.send(view)
            except _WANT_WRITE:
                self.writable = False
                await self._wait(2)
                continue
            except _WANT_READ:
                self.readable = False
                await self._wait(1)
                continue
            view = view[sent:]

    def quiet(self) -> bool:
        """For an idle pooled connection: no plaintext, TLS record or EOF waits on it."""
        if self.sock.pending():
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return not poller.poll(0)

    def peer_der(self) -> bytes | None:
        """The peer's certificate (DER) when it sent one and it verified."""
        try:
            return self.sock.getpeercert(binary_form=True)
        except (ValueError, OSError):
            return None

    @property
    def alpn(self) -> str | None:
        return self.sock.selected_alpn_protocol()
