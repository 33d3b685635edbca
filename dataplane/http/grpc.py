"""gRPC at the edge (sans-IO): statuses for the node's own answers, grpc-timeout, gRPC-Web.

- A request is gRPC when its content-type is `application/grpc[+proto|+json|...]`; the node
  answers such requests itself (no route, a policy refusing, no healthy endpoint, a timeout)
  with a trailers-only response: HTTP 200 and `grpc-status` / `grpc-message` (RFC 3986
  percent-encoded, as gRPC wants).
- `grpc-timeout` (`100m`, `5S`, ... ; units H M S m u n) bounds the exchange like a route's
  timeout does.
- gRPC-Web (`application/grpc-web[+proto]`, and `-text` with base64 bodies): requests go to a
  gRPC upstream as `application/grpc`; the response body passes through and its trailers
  become a final message with the 0x80 flag (`name: value\\r\\n` lines), base64 for -text.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

# https://grpc.github.io/grpc/core/md_doc_statuscodes.html
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 7, 8, 12, 13, 14, 16

_BY_HTTP = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    405: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: RESOURCE_EXHAUSTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}

_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def is_grpc(content_type: str | None) -> bool:
    return bool(content_type) and content_type.startswith("application/grpc")  # type: ignore[union-attr]


def is_grpc_web(content_type: str | None) -> bool:
    return bool(content_type) and content_type.startswith("application/grpc-web")  # type: ignore[union-attr]


def status_for(http_status: int) -> int:
    """The gRPC status the node's own HTTP answer `http_status` stands for."""
    return _BY_HTTP.get(http_status, UNKNOWN if http_status >= 400 else OK)


def message_header(message: str) -> bytes:
    """`grpc-message`: percent-encoded UTF-8 (spaces and printable ASCII but '%' kept)."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def trailers_only(http_status: int, message: str) -> list[tuple[bytes, bytes]]:
    """Headers of a trailers-only gRPC response for the node's own answer."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(status_for(http_status)).encode()),
        (b"grpc-message", message_header(message)),
    ]


def parse_timeout(value: str | None) -> float | None:
    """Seconds of a `grpc-timeout` value, None when absent or malformed."""
    if not value or len(value) > 9 or value[-1] not in _UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _UNITS[value[-1]]


class GrpcWebCodec:
    """Translation of one gRPC-Web exchange (request body in, response body and trailers out)."""

    __slots__ = ("_pending_in", "_pending_out", "text")

    def __init__(self, content_type: str) -> None:
        self.text = content_type.startswith("application/grpc-web-text")
        self._pending_in = b""
        self._pending_out = b""

    @staticmethod
    def upstream_content_type(content_type: str) -> bytes:
        """application/grpc-web[-text][+proto] -> application/grpc[+proto]."""
        rest = content_type[len("application/grpc-web") :]
        if rest.startswith("-text"):
            rest = rest[len("-text") :]
        return ("application/grpc" + rest).encode("latin-1")

    def response_content_type(self) -> bytes:
        return b"application/grpc-web-text+proto" if self.text else b"application/grpc-web+proto"

    def request_chunk(self, data: bytes) -> bytes:
        """Client bytes -> gRPC bytes (base64 decoded in groups of 4 for -text)."""
        if not self.text:
            return data
        data = self._pending_in + data
        whole = len(data) - len(data) % 4
        self._pending_in = data[whole:]
        return base64.b64decode(data[:whole]) if whole else b""

    def response_chunk(self, data: bytes) -> bytes:
        """gRPC bytes -> client bytes (base64 for -text, in groups of 3 bytes)."""
        if not self.text:
            return data
        data = self._pending_out + data
        whole = len(data) - len(data) % 3
        self._pending_out = data[whole:]
        return base64.b64encode(data[:whole]) if whole else b""

    def trailer_frame(self, trailers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> bytes:
        """The last message: flag 0x80, length, `name: value\\r\\n` lines (and what -text held back)."""
        block = b"".join(n.lower() + b": " + v + b"\r\n" for n, v in trailers)
        frame = b"\x80" + len(block).to_bytes(4, "big") + block
        if not self.text:
            return frame
        tail, self._pending_out = self._pending_out + frame, b""
        return base64.b64encode(tail)  # one padding, at the very end: the body is one base64 text
