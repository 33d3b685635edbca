"""JSON error responses the node answers itself (404 no route, 502, 503, 504, 4xx)."""

from __future__ import annotations

import json

from dataplane.http.headers import reason

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "no_route", 405: "method_not_allowed",
    407: "proxy_auth_required",
    408: "request_timeout", 413: "body_too_large", 414: "uri_too_long", 417: "expectation_failed", 429: "rate_limited",
    431: "headers_too_large", 500: "internal_error", 501: "not_implemented", 502: "bad_gateway",
    503: "unavailable", 504: "upstream_timeout",
}  # fmt: skip


def error_body(status: int, message: str, request_id: bytes = b"", code: str | None = None) -> bytes:
    """The JSON body of the node's own answer (HTTP/2 sends it without the HTTP/1.1 head)."""
    return json.dumps(
        {
            "error": code or CODES.get(status, "error"),
            "message": message,
            "status": status,
            "request_id": request_id.decode("latin-1"),
        }
    ).encode()


def error_response(
    status: int,
    message: str,
    request_id: bytes = b"",
    *,
    close: bool = False,
    head_only: bool = False,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    code: str | None = None,
) -> bytes:
    body = json.dumps(
        {
            "error": code or CODES.get(status, "error"),
            "message": message,
            "status": status,
            "request_id": request_id.decode("latin-1"),
        }
    ).encode()
    parts = [
        b"HTTP/1.1 %d %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        % (status, reason(status), len(body))
    ]
    if request_id:
        parts.append(b"X-Request-Id: " + request_id + b"\r\n")
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
