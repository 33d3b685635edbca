"""Optional per-proxy payload transforms: encryption (frp's useEncryption) and compression (useCompression).

These wrap the bytes of one work stream, end to end between the agent and the node, on top of
whatever protects the connection (TLS or nothing). Each transform is incremental: feed bytes
split anywhere and get the output they complete. No sockets, no clock; randomness only for the
per-stream salt, which tests may pass in.

Encrypted stream layout (each direction separately; version 1)::

    +---------+----------------+   then chunks:   +-------+-----------------+---------------------+
    | 0x01    | salt, 16 bytes |                  | flags | length (u24 BE) | ciphertext + 16-byte|
    +---------+----------------+                  +-------+-----------------+ GCM tag (length)    |
                                                                            +---------------------+

- key = HKDF-SHA256(token, salt, info="flux-tunnel/1 payload", 16 bytes) -> AES-128-GCM; a fresh
  random salt per stream and direction gives each a fresh key, so the nonce is a plain chunk
  counter (4 zero bytes + u64).
- flags: bit 0 marks the final chunk (empty plaintext, sent by `finish`); other bits are 0.
  The 4-byte chunk header is the AEAD's associated data, so flags and length are authenticated.
- plaintext per chunk: 1..16384 bytes (0 only in the final chunk). A wrong token, tampering,
  reordering, a chunk after the final one or a stream that ends without it
  (`Decryptor.finish`) raises `TransformError` (a `ProtocolError`).

Compression is raw DEFLATE (zlib, wbits=-15), sync-flushed after every `compress` call so the
peer can decode each piece at once (interactive traffic); `finish` ends the stream. Inflating is
pull-based (`max_length`, `needs_input`), so a small input cannot force a huge output at once.
`Outbound` / `Inbound` chain both in frp's order: compress, then encrypt.
"""

from __future__ import annotations

import os
import struct
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fluxcommon.tunnel.protocol.frames import ProtocolError

ENCRYPTION_VERSION = 1
SALT_SIZE = 16
MAX_CHUNK = 16 * 1024
TAG_SIZE = 16
_FINAL = 0x01
_CHUNK_HEAD = struct.Struct("!I")  # flags << 24 | length
_NONCE = struct.Struct("!4xQ")
_INFO = b"flux-tunnel/1 payload"


class TransformError(ProtocolError):
    """Encrypted or compressed stream bytes that cannot be decoded."""


def derive_key(token: str, salt: bytes) -> bytes:
    """The 16-byte AES key of one stream direction."""
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=salt, info=_INFO).derive(token.encode())


class Encryptor:
    """Application bytes -> encrypted stream bytes (header, then chunks)."""

    __slots__ = ("_aead", "_counter", "_finished", "_head")

    def __init__(self, token: str, *, salt: bytes | None = None) -> None:
        salt = os.urandom(SALT_SIZE) if salt is None else salt
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes")
        self._aead = AESGCM(derive_key(token, salt))
        self._head = bytes((ENCRYPTION_VERSION,)) + salt
        self._counter = 0
        self._finished = False

    def _chunk(self, flags: int, plain: bytes) -> bytes:
        head = _CHUNK_HEAD.pack(flags << 24 | (len(plain) + TAG_SIZE))
        sealed = self._aead.encrypt(_NONCE.pack(self._counter), plain, head)
        self._counter += 1
        return head + sealed

    def _take_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError("encryptor already finished")
        out = [self._take_head()]
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            out.append(self._chunk(0, bytes(view[start : start + MAX_CHUNK])))
        return b"".join(out)

    def finish(self) -> bytes:
        """The final chunk, which tells the peer the stream ended here and was not cut."""
        if self._finished:
            return b""
        self._finished = True
        return self._take_head() + self._chunk(_FINAL, b"")


class Decryptor:
    """Encrypted stream bytes, split anywhere -> application bytes."""

    __slots__ = ("_aead", "_buf", "_counter", "_token", "finished")

    def __init__(self, token: str) -> None:
        self._token = token
        self._aead: AESGCM | None = None
        self._buf = bytearray()
        self._counter = 0
        self.finished = False

    def update(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        if self._aead is None:
            if len(buf) < 1 + SALT_SIZE:
                if buf and buf[0] != ENCRYPTION_VERSION:
                    raise TransformError(f"unsupported payload encryption version {buf[0]}")
                return b""
            if buf[0] != ENCRYPTION_VERSION:
                raise TransformError(f"unsupported payload encryption version {buf[0]}")
            self._aead = AESGCM(derive_key(self._token, bytes(buf[1 : 1 + SALT_SIZE])))
            del buf[: 1 + SALT_SIZE]
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            if self.finished:
                raise TransformError("encrypted data after the final chunk")
            word = _CHUNK_HEAD.unpack_from(buf, pos)[0]
            flags, length = word >> 24, word & 0xFFFFFF
            if flags & ~_FINAL or not TAG_SIZE <= length <= MAX_CHUNK + TAG_SIZE:
                raise TransformError("malformed encrypted chunk header")
            if (flags & _FINAL) != (length == TAG_SIZE):
                raise TransformError("empty encrypted chunk that is not the final one (or a final one with data)")
            if len(buf) - pos - 4 < length:
                break
            head = bytes(buf[pos : pos + 4])
            sealed = bytes(buf[pos + 4 : pos + 4 + length])
            try:
                out.append(self._aead.decrypt(_NONCE.pack(self._counter), sealed, head))
            except InvalidTag:
                raise TransformError("encrypted chunk failed authentication (wrong token or tampered data)") from None
            self._counter += 1
            pos += 4 + length
            if flags & _FINAL:
                self.finished = True
        del buf[:pos]
        if self.finished and buf:
            raise TransformError("encrypted data after the final chunk")
        return b"".join(out)

    def finish(self) -> None:
        """The stream ended; raise unless it ended with the final chunk."""
        if not self.finished:
            raise TransformError("encrypted stream cut short (no final chunk)")


class Compressor:
    """Application bytes -> raw DEFLATE, flushed at every call."""

    __slots__ = ("_z",)

    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15)

    def compress(self, data: bytes) -> bytes:
        if not data:
            return b""
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class Decompressor:
    """Raw DEFLATE, split anywhere -> application bytes, at most `max_length` per call."""

    __slots__ = ("_more", "_tail", "_z")

    def __init__(self) -> None:
        self._z = zlib.decompressobj(-15)
        self._tail = b""
        self._more = False

    @property
    def needs_input(self) -> bool:
        """False while `decompress(b"")` may still return output held back by `max_length`."""
        return not self._tail and not self._more

    @property
    def eof(self) -> bool:
        return self._z.eof

    def decompress(self, data: bytes, max_length: int | None = None) -> bytes:
        if data and self._z.eof:
            raise TransformError("compressed data after the end of the stream")
        pending = self._tail + data if self._tail else data
        try:
            if max_length is None:
                out = self._z.decompress(pending)
            else:
                if max_length < 1:
                    raise ValueError("max_length must be at least 1")
                out = self._z.decompress(pending, max_length)
        except zlib.error as exc:
            raise TransformError(f"bad compressed data: {exc}") from None
        if self._z.unused_data:
            raise TransformError("compressed data after the end of the stream")
        self._tail = self._z.unconsumed_tail
        self._more = max_length is not None and len(out) == max_length and not self._z.eof
        return out


class Outbound:
    """What one side applies before sending a proxy's stream bytes: compress, then encrypt."""

    __slots__ = ("_compressor", "_encryptor")

    def __init__(self, token: str | None = None, *, compress: bool = False, salt: bytes | None = None) -> None:
        self._encryptor = Encryptor(token, salt=salt) if token is not None else None
        self._compressor = Compressor() if compress else None

    def update(self, data: bytes) -> bytes:
        if self._compressor is not None:
            data = self._compressor.compress(data)
        if self._encryptor is not None:
            return self._encryptor.update(data) if data else b""
        return data

    def finish(self) -> bytes:
        tail = self._compressor.finish() if self._compressor is not None else b""
        if self._encryptor is not None:
            return (self._encryptor.update(tail) if tail else b"") + self._encryptor.finish()
        return tail


class Inbound:
    """The reverse of `Outbound`: decrypt, then inflate, pull-based like `Decompressor`."""

    __slots__ = ("_decompressor", "_decryptor", "_plain")

    def __init__(self, token: str | None = None, *, compress: bool = False) -> None:
        self._decryptor = Decryptor(token) if token is not None else None
        self._decompressor = Decompressor() if compress else None
        self._plain = bytearray()  # held back by max_length when not compressed

    @property
    def needs_input(self) -> bool:
        if self._decompressor is not None:
            return self._decompressor.needs_input
        return not self._plain

    def update(self, data: bytes, max_length: int | None = None) -> bytes:
        if self._decryptor is not None:
            data = self._decryptor.update(data)
        if self._decompressor is not None:
            return self._decompressor.decompress(data, max_length)
        if max_length is None and not self._plain:
            return data
        self._plain += data
        n = len(self._plain) if max_length is None else max_length
        out = bytes(self._plain[:n])
        del self._plain[:n]
        return out

    def finish(self) -> None:
        """The stream ended: raise unless it ended cleanly (final chunk, end of DEFLATE stream)."""
        if self._decryptor is not None:
            self._decryptor.finish()
        if self._decompressor is not None and not self._decompressor.eof:
            raise TransformError("compressed stream cut short")
