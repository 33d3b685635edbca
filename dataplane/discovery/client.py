"""DiscoveryClient: subscribes to the control plane's config stream from trio.

grpcio has no trio support, so each stream runs the synchronous stub in a
worker thread (with its own CapacityLimiter, so trio's default thread limit
never starves it) and hands responses to trio through a memory channel.
ACKs and NACKs go back through a thread-safe queue that feeds the request
iterator. Cancelling the trio side cancels the call, which ends the thread.

On any stream failure the client moves to the next control-plane address and
retries with exponential back-off and jitter, forever. It always reports the
version it runs, so a control plane that already sent it does not resend.

The stream runs over mutual TLS with the node's credentials
(dataplane.discovery.credentials), asked for at every connection attempt: a node
without any keeps serving what it has, says so, and looks again every few seconds.
`reconnect(serial)` reopens the stream at once when the certificate changed (renewal).

With a `load` reporter (dataplane.discovery.load) the stream also carries the node's
request counters about once a second while they move (`load_report` on a request with no
nonce), which config canaries compare between canary nodes and the rest.

With a `tracer` (tracing on), a snapshot that comes with the control plane's trace context
(`traceparent` on the response: the write that made the version, its push) is applied in a
span "apply config version N" (kind CONSUMER), a child of the push: the write, the push and
every node's apply form one trace. A snapshot pushed without one is applied untraced.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence

import grpc
import trio

from dataplane.config.isolation import Failure
from dataplane.discovery.credentials import NodeCredentials, channel_options
from dataplane.discovery.load import LoadReporter
from flux.v1 import config_pb2, discovery_pb2, discovery_pb2_grpc
from fluxcommon.tracing.context import parse_traceparent, parse_tracestate
from fluxcommon.tracing.otlp import CONSUMER
from fluxcommon.tracing.tracer import Span, Tracer

log = logging.getLogger("flux.node.discovery")

SNAPSHOT_TYPE_URL = "type.googleapis.com/flux.v1.Snapshot"

ApplyFn = Callable[[config_pb2.Snapshot], Awaitable[str | None]]
"""Applies a snapshot; returns None on success or the reason it was refused."""

CredentialsFn = Callable[[], NodeCredentials | None]
NO_CREDENTIALS_RETRY = 5.0
LOAD_REPORT_INTERVAL = 1.0  # seconds between load reports while traffic flows
_TRUST_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


class _StreamEnded(Exception):
    pass


class DiscoveryClient:
    def __init__(
        self,
        addresses: list[str],
        node: discovery_pb2.Node,
        apply: ApplyFn,
        *,
        failing: Callable[[], Sequence[Failure]] = lambda: (),
        version: str = "",
        credentials: CredentialsFn = lambda: None,
        load: LoadReporter | None = None,
        tracer: Tracer | None = None,
        backoff_base: float = 0.25,
        backoff_max: float = 10.0,
    ) -> None:
        if not addresses:
            raise ValueError("at least one control-plane address is needed")
        self.addresses = addresses
        self.node = node
        self.apply = apply
        self.failing = failing  # resources the node set aside in the version it applied
        self.version = version
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connected_to: str | None = None
        self.streams_opened = 0
        self.snapshots_received = 0
        self.nacks_sent = 0
        self.credentials = credentials
        self.serial_in_use: str | None = None  # the certificate of the stream open now
        self._calls: list[grpc.Future] = []
        self._quick_retry = False
        self._said_no_credentials = False
        self._said_expired = ""
        self._limiter = trio.CapacityLimiter(2)
        self.load = load
        self.load_reports_sent = 0
        self.tracer = tracer

    def reconnect(self, serial: str) -> None:
        """Reopen the stream now if it runs on another certificate than `serial` (renewed)."""
        if self.serial_in_use is None or self.serial_in_use == serial:
            return
        log.info("reopening the config stream with the renewed certificate")
        self._quick_retry = True
        for call in self._calls:
            call.cancel()

    async def run(self) -> None:
        attempt = 0
        index = 0
        while True:
            creds = self.credentials()
            if creds is None:
                if not self._said_no_credentials:
                    log.error(
                        "node %s has no credentials for the config stream (never enrolled): serving what it has; "
                        "start it with --join-token TOKEN (from `fluxctl nodes join-token`) to connect",
                        self.node.id,
                    )  # fmt: skip
                    self._said_no_credentials = True
                await trio.sleep(NO_CREDENTIALS_RETRY)
                continue
            self._said_no_credentials = False
            if creds.expired() and self._said_expired != creds.serial:
                self._said_expired = creds.serial
                log.error(
                    "node %s: its certificate expired at %s, control planes refuse it: enrol again "
                    "(--join-token with a new token from `fluxctl nodes join-token`)",
                    self.node.id, creds.not_after.isoformat(timespec="seconds"),
                )  # fmt: skip
            address = self.addresses[index % len(self.addresses)]
            received_before = self.snapshots_received
            try:
                await self._stream(address, creds)
                if not self._quick_retry:
                    log.warning("config stream from %s ended; reconnecting", address)
            except _StreamEnded as exc:
                if self._quick_retry:
                    pass
                elif str(exc).startswith(_TRUST_CODES):
                    log.error("control plane at %s refused node %s: %s", address, self.node.id, exc)
                else:
                    log.warning("config stream from %s failed: %s", address, exc)
            except Exception:  # never let the config stream take the node down
                log.exception("config stream from %s broke; reconnecting", address)
            finally:
                self.connected_to = None
                self.serial_in_use = None
            if self._quick_retry:  # reopened on purpose: at once, same control plane
                self._quick_retry = False
                attempt = 0
                continue
            if self.snapshots_received > received_before:
                attempt = 0  # the stream worked: start back-off afresh
            index += 1
            delay = min(self.backoff_max, self.backoff_base * 2**attempt)
            attempt += 1
            delay *= random.uniform(0.5, 1.5)
            await trio.sleep(delay)

    def _request(self, nonce: str = "", error: str | None = None) -> discovery_pb2.StreamConfigRequest:
        req = discovery_pb2.StreamConfigRequest(
            version_info=self.version, node=self.node, type_url=SNAPSHOT_TYPE_URL, response_nonce=nonce
        )
        if error is not None:
            req.error_detail.code = 3  # INVALID_ARGUMENT
            req.error_detail.message = error
        return req

    async def _stream(self, address: str, creds: NodeCredentials) -> None:
        outbox: queue.SimpleQueue[discovery_pb2.StreamConfigRequest | None] = queue.SimpleQueue()
        outbox.put(self._request())
        send, receive = trio.open_memory_channel[object](8)
        token = trio.lowlevel.current_trio_token()
        calls: list[grpc.Future] = []  # the live call, so the trio side can cancel it
        self._calls = calls
        self.serial_in_use = creds.serial

        def requests() -> Iterator[discovery_pb2.StreamConfigRequest]:
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        def watch(state: grpc.ChannelConnectivity) -> None:  # called from a grpc thread
            if state == grpc.ChannelConnectivity.READY:
                self.connected_to = address

        def pump() -> None:
            # Everything grpc does, including creating and closing the channel (which can take
            # a long time when the address refuses), happens in this thread, never in trio's.
            channel = grpc.secure_channel(
                address, creds.channel_credentials(), options=CHANNEL_OPTIONS + channel_options()
            )
            channel.subscribe(watch, try_to_connect=True)
            try:
                call = discovery_pb2_grpc.DiscoveryServiceStub(channel).StreamConfig(requests())
                calls.append(call)
                for response in call:
                    trio.from_thread.run(send.send, response, trio_token=token)
            except grpc.RpcError as exc:
                detail = f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)
                try:
                    trio.from_thread.run(send.send, _StreamEnded(detail), trio_token=token)
                except (trio.RunFinishedError, trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            except (trio.RunFinishedError, trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                outbox.put(None)
                channel.unsubscribe(watch)
                channel.close()
                try:
                    trio.from_thread.run_sync(send.close, trio_token=token)
                except trio.RunFinishedError:
                    pass

        self.streams_opened += 1
        ended: _StreamEnded | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_thread, pump)
                if self.load is not None:
                    nursery.start_soon(self._report_load, self.load, outbox)
                first = True
                async for item in receive:
                    if isinstance(item, _StreamEnded):
                        ended = item  # raised outside the nursery, not wrapped in a group
                        break
                    if first:
                        self.connected_to = address
                        log.info("config stream open to %s", address)
                        first = False
                    await self._handle(item, outbox)  # type: ignore[arg-type]
                nursery.cancel_scope.cancel()
        finally:
            receive.close()
            for call in calls:
                call.cancel()  # returns at once; the pump thread closes the channel
            outbox.put(None)
        if ended is not None:
            raise ended

    async def _report_load(
        self, load: LoadReporter, outbox: queue.SimpleQueue[discovery_pb2.StreamConfigRequest | None]
    ) -> None:
        """Put the request counters on the stream every LOAD_REPORT_INTERVAL while they move."""
        load.forget()  # a new stream: its control plane has none of our counters yet
        while True:
            await trio.sleep(LOAD_REPORT_INTERVAL)
            report = load.report()
            if report is not None:
                req = discovery_pb2.StreamConfigRequest(version_info=self.version, node=self.node, load_report=report)
                outbox.put(req)
                self.load_reports_sent += 1

    async def _pump_thread(self, pump: Callable[[], None]) -> None:
        await trio.to_thread.run_sync(pump, limiter=self._limiter, abandon_on_cancel=True)

    async def _handle(
        self,
        resp: discovery_pb2.StreamConfigResponse,
        outbox: queue.SimpleQueue[discovery_pb2.StreamConfigRequest | None],
    ) -> None:
        self.snapshots_received += 1
        span = self._apply_span(resp)
        error: str | None = None
        snapshot = config_pb2.Snapshot()
        if len(resp.resources) != 1 or not resp.resources[0].Unpack(snapshot):
            error = f"expected one {SNAPSHOT_TYPE_URL} resource, got {[r.type_url for r in resp.resources]}"
        else:
            if snapshot.version != resp.version_info:
                snapshot.version = resp.version_info
            error = await self.apply(snapshot)
        if error is None:
            self.version = resp.version_info
            ack = self._request(resp.nonce)
            for f in self.failing():
                err = ack.resource_errors.add(kind=f.kind, name=f.name, message=f.message[:4000])
                err.kept_previous = f.kept_previous
            outbox.put(ack)
        else:
            self.nacks_sent += 1
            log.error("rejected config version %s: %s", resp.version_info, error)
            outbox.put(self._request(resp.nonce, error))
        if span is not None:
            span.set("flux.config.outcome", "nack" if error is not None else "ack")
            if error is not None:
                span.error(error)
            else:
                failing = self.failing()
                if failing:
                    span.set("flux.config.failing_resources", [f"{f.kind}/{f.name}" for f in failing])
            span.end()

    def _apply_span(self, resp: discovery_pb2.StreamConfigResponse) -> Span | None:
        """The span of applying `resp`, a child of the control plane's push (None: not traced)."""
        tracer = self.tracer
        if tracer is None or not resp.traceparent:
            return None
        parent = parse_traceparent(resp.traceparent)
        if parent is None:
            return None
        parent = dataclasses.replace(parent, tracestate=parse_tracestate(resp.tracestate))
        return tracer.start_span(
            f"apply config version {resp.version_info}", CONSUMER, parent,
            {"flux.config.version": resp.version_info, "flux.node.id": self.node.id, "flux.node.group": self.node.group,
             "flux.control_plane.id": resp.control_plane_id},
            remote=True,
        )  # fmt: skip
