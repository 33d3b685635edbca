"""Commands the exchange core yields, and the events a front end sends back (see core.py).

Command            what the front end does                           event sent back
-----------------  ------------------------------------------------  ------------------------------
Reply              answer with the node's JSON error                  Replied(bytes_out, keep)
ReplyLocal         answer with a policy's response                    Replied(bytes_out, keep)
Await              await a policy's coroutine                         its result
SendContinue       send "100 Continue" if the body is still to come   None
Attempt            open/take an upstream connection, send the         an UpstreamResponse (its head
                   request and its body, read the response head       arrived), or a Failure
Drop               discard that response (a retry follows)            None
Stream             send the (rewritten) response head and stream      Streamed(...)
                   the body (and trailers) to the client; an
                   upgrade becomes a byte tunnel
Sleep              wait (retry back-off)                              None

Plain classes with __slots__: one is made per request and step, on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dataplane.balancing import EndpointState
    from dataplane.config.runtime import ClusterRuntime
    from dataplane.http.response import ResponseHead
    from dataplane.policies.base import LocalResponse

Header = tuple[bytes, bytes]


class Failure(Exception):
    """One attempt against one endpoint failed before the client saw a byte.

    `kind` names it for metrics and retries (connect_failure, reset, timeout, 5xx, protocol,
    tls, overflow, local); `status` is what the client gets if no attempt succeeds."""

    def __init__(self, kind: str, status: int, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.retryable = retryable


class UpstreamResponse(Protocol):
    """What an upstream codec hands back once a response head arrived."""

    head: ResponseHead

    def discard(self) -> None: ...


class UpstreamRequest:
    """What goes upstream besides the client's own head: target, Host, headers to add and drop."""

    __slots__ = ("add", "grpc_web", "host", "remove", "target", "upgrade")

    def __init__(
        self,
        target: bytes,
        host: bytes | None,
        add: list[Header] | tuple[Header, ...],
        remove: frozenset[bytes],
        upgrade: str | None,
        grpc_web: bool = False,
    ) -> None:
        self.target = target
        self.host = host
        self.add = add
        self.remove = remove
        self.upgrade = upgrade
        self.grpc_web = grpc_web  # the route translates gRPC-Web for its gRPC upstream


class Reply:
    __slots__ = ("close", "headers", "message", "status")

    def __init__(self, status: int, message: str, headers: tuple[Header, ...] = (), close: bool = False) -> None:
        self.status = status
        self.message = message
        self.headers = headers
        self.close = close


class ReplyLocal:
    __slots__ = ("answer",)

    def __init__(self, answer: LocalResponse) -> None:
        self.answer = answer


class Replied:
    __slots__ = ("bytes_out", "keep")

    def __init__(self, bytes_out: int, keep: bool) -> None:
        self.bytes_out = bytes_out
        self.keep = keep


class Await:
    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Any) -> None:
        self.awaitable = awaitable


class SendContinue:
    __slots__ = ()


SEND_CONTINUE = SendContinue()


class Attempt:
    __slots__ = ("cluster", "deadline", "ep", "fresh", "request", "retry_on")

    def __init__(
        self,
        cluster: ClusterRuntime,
        ep: EndpointState,
        request: UpstreamRequest,
        fresh: bool,
        retry_on: frozenset[str] | tuple[()],
        deadline: float,
    ) -> None:
        self.cluster = cluster
        self.ep = ep
        self.request = request
        self.fresh = fresh  # a retry: take a new connection, never an idle one
        self.retry_on = retry_on  # empty on the last attempt
        self.deadline = deadline  # monotonic: the route's total deadline, or the per-try one


class Drop:
    __slots__ = ("response",)

    def __init__(self, response: UpstreamResponse) -> None:
        self.response = response


class Stream:
    __slots__ = ("add", "head", "response", "upgrade")

    def __init__(self, response: UpstreamResponse, head: ResponseHead, add: tuple[Header, ...], upgrade: bool) -> None:
        self.response = response
        self.head = head  # after response policies (status, removed headers)
        self.add = add
        self.upgrade = upgrade  # a 101 the client asked for: pipe bytes both ways


class Streamed:
    __slots__ = ("bytes_in", "bytes_out", "error", "keep", "status")

    def __init__(self, status: int, bytes_in: int, bytes_out: int, keep: bool, error: str = "") -> None:
        self.status = status
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.keep = keep
        self.error = error  # "aborted: ..." when the response could not be sent whole


class Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
