"""TLS over a trio stream for bulk tunnel traffic: `ssl.SSLObject` on memory BIOs, thin shell.

trio's `SSLStream` hands back one TLS record (at most 16 KiB) per `receive_some`, each through
its general retry machinery; a tunnel link moving hundreds of MB/s spent most of its CPU there.
This stream drains every record already buffered in one call (up to `max_bytes`), so a 256 KiB
socket read costs one trip through Python instead of sixteen, and writes go out as one
`send_all` per call however many records they make. `receive_into` decrypts straight into the
caller's buffer and reads the transport into one of its own when the transport can
(`BulkSocketStream.receive_into`); `send_parts` writes a list of pieces without joining them.

The reader and the writer of a link run concurrently: `SSLObject.read` may produce bytes to send
(TLS 1.3 key updates, alerts), so both sides flush the outgoing BIO under one lock, in order.
TLS failures surface as `trio.BrokenResourceError` with the `ssl.SSLError` as its cause (the
handshake raises the `ssl.SSLError` itself, as trio's does). No renegotiation, no half-close:
`send_eof` is not offered (TLS has none); `aclose` sends close_notify when it can.
"""

from __future__ import annotations

import ssl

import trio

from fluxcommon.tunnel.transport.gate import SendGate
from fluxcommon.tunnel.transport.readbuffer import ReadBuffer
from fluxcommon.tunnel.transport.sockstream import receive_into, receive_size

RECORD = 16 * 1024  # TLS's largest record payload: OpenSSL cuts writes into records of this size


class TLSStream(trio.abc.Stream):
    """Client or server TLS over `transport` (call `do_handshake` first)."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._send_lock = SendGate()  # no schedule point when free (see gate.py)
        self._raw = ReadBuffer()  # TLS bytes read from the transport (receive_into)
        self._plain = ReadBuffer()  # plaintext for receive_some
        self._transport_eof = False
        self._peer_closed = False
        self._closed = False
        self._sending = False  # a caller's send is under way (a second one: BusyResourceError, as in trio)

    # -- helpers ---------------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Send what the SSL object has written, in order, one sender at a time (a checkpoint
        when there is nothing to send, as every stream call is one)."""
        if not self._outgoing.pending:
            await trio.lowlevel.checkpoint()
            return
        async with self._send_lock:
            while self._outgoing.pending:
                await self.transport_stream.send_all(self._outgoing.read())

    async def _fill(self) -> None:
        """Read more TLS bytes from the transport into the incoming BIO (EOF noted)."""
        raw = self._raw  # kept between reads: no bytes object per read
        n = await receive_into(self.transport_stream, raw.view)
        if n:
            self._incoming.write(raw.view[:n])
        raw.record(n)
        if not n:
            self._transport_eof = True
            self._incoming.write_eof()

    # -- the handshake -------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if self._transport_eof:
                    raise trio.BrokenResourceError("connection closed during the TLS handshake") from None
                await self._fill()
                continue
            except ssl.SSLError:
                await self._flush_quietly()  # the alert tells the peer why (bad certificate, ...)
                raise
            await self._flush()
            return

    def getpeercert(self, binary_form: bool = False) -> object:
        return self.ssl_object.getpeercert(binary_form)

    # -- trio.abc.Stream -----------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buf = self._plain
        view = buf.view if max_bytes is None else buf.view[: receive_size(max_bytes, 0)]
        n = await self.receive_into(view)
        data = bytes(view[:n])
        buf.record(n)
        return data

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """Decrypt what has arrived into `buffer` (at least one byte, or 0 at the end of stream).

        Every record already buffered is read in one call, straight into `buffer`: no bytes
        object per record and no join.
        """
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        view = memoryview(buffer).cast("B")
        limit = len(view)
        read = self.ssl_object.read
        while True:
            got = 0
            try:
                while got < limit and not self._peer_closed:
                    n = read(limit - got, view[got:])
                    if not n:
                        self._peer_closed = True
                        break
                    got += n
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # the peer's close_notify: a clean end of stream
                self._peer_closed = True
            except ssl.SSLError as exc:
                await self._flush_quietly()  # the alert, if OpenSSL wrote one
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            if self._outgoing.pending:  # a key update or alert to answer
                await self._flush()
            if got:
                await trio.lowlevel.checkpoint_if_cancelled()
                return got
            if self._peer_closed:
                await trio.lowlevel.checkpoint()
                return 0
            if self._transport_eof:
                raise trio.BrokenResourceError("the peer closed the connection without a TLS close_notify")
            await self._fill()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass

    def _begin_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._begin_send()
        try:
            if data:
                try:
                    self.ssl_object.write(data)
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            await self._flush()
        finally:
            self._sending = False

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """`send_all` of the parts joined, without joining them.

        Each `SSLObject.write` call ends in a record of its own, so writing a 12-byte frame
        header by itself would cost a record (and a decryption at the peer) per frame. Parts
        are written whole-record by whole-record straight from their memory; only what is left
        between record boundaries (headers, the tail of a payload, the head of the next) is
        gathered in a small buffer first: at most one record's worth per part is copied.
        """
        self._begin_send()
        try:
            self._write_parts(parts)
            await self._flush()
        finally:
            self._sending = False

    def _write_parts(self, parts: list[bytes | memoryview]) -> None:
        write = self.ssl_object.write
        carry = bytearray()
        try:
            for part in parts:
                if carry:
                    fill = RECORD - len(carry)
                    if len(part) < fill:
                        carry += part
                        continue
                    view = memoryview(part)
                    carry += view[:fill]
                    write(carry)
                    carry.clear()
                    part = view[fill:]
                n = len(part)
                whole = n - n % RECORD
                if whole:
                    write(part if whole == n else memoryview(part)[:whole])
                if whole < n:
                    carry += memoryview(part)[whole:]
            if carry:
                write(carry)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        self._begin_send()
        try:
            await self.transport_stream.wait_send_all_might_not_block()
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Send close_notify (best effort, at most 1 s), then close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            try:
                self.ssl_object.unwrap()
            except ssl.SSLError:  # SSLWantReadError: the peer's close_notify is not awaited
                pass
            with trio.move_on_after(1):
                await self._flush_quietly()
        finally:
            await self.transport_stream.aclose()
