"""The batch span exporter: finished spans leave the process by OTLP/HTTP, off the request path.

Producers (a node's exchanges, the control plane's handlers) call `submit(item)`: one length
check and a `deque.append` of an object that becomes a `SpanData` later (`item.to_span()`). When
the queue holds OTEL_BSP_MAX_QUEUE_SIZE items, new ones are dropped and counted
(`dropped["queue_full"]`). A thread of its own wakes every OTEL_BSP_SCHEDULE_DELAY (or as soon as
a batch's worth is waiting), turns up to OTEL_BSP_MAX_EXPORT_BATCH_SIZE items into spans,
encodes them (`fluxcommon.tracing.otlp`) and POSTs them with httpx.

A failed export (the collector down, slow, or answering an error) never reaches the traffic:
429/502/503/504 and connection errors are retried with back-off within OTEL_BSP_EXPORT_TIMEOUT,
then the batch is dropped and counted (`dropped["export_failed"]`; spans a collector refuses in
a partial success: `dropped["rejected"]`), and logged at most once a minute. `shutdown` exports
what is queued, within its timeout.

A thread rather than a trio or asyncio task: one implementation for the node (trio) and the
control plane (asyncio), and encoding a batch (a few milliseconds) never holds an event loop for
longer than the interpreter's switch interval.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx

from fluxcommon.tracing.otlp import AttrValue, SpanData, encode_request, rejected_spans
from fluxcommon.tracing.settings import TracingSettings

log = logging.getLogger("flux.tracing")

RETRYABLE = frozenset({429, 502, 503, 504})
LOG_EVERY = 60.0  # seconds between two log lines about failed exports
DROP_REASONS = ("queue_full", "export_failed", "rejected", "encode_error")


class Exportable(Protocol):
    def to_span(self) -> SpanData: ...


class BatchExporter:
    """A bounded queue of finished spans and the thread that exports them."""

    def __init__(
        self,
        settings: TracingSettings,
        resource: Mapping[str, AttrValue],
        scope: tuple[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.resource = dict(resource)
        self.scope = scope
        self.queue: deque[Exportable] = deque()
        self.max_queue = settings.max_queue_size
        self.batch_size = settings.max_export_batch_size
        self.exported = 0
        self.dropped_full = 0  # written by producers only (one int, no lock)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)  # written by the export thread only
        self.exports_failed = 0
        self.last_error = ""
        self._clock = clock
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._stopping = False
        self._shutdown_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self._last_log = -LOG_EVERY
        self._unlogged = 0

    # -- producers (any thread; the hot path) -------------------------------------------------

    def submit(self, item: Exportable) -> None:
        queue = self.queue
        n = len(queue)
        if n >= self.max_queue:
            self.dropped_full += 1
            return
        queue.append(item)
        if n + 1 == self.batch_size:
            self._wake.set()

    def drops(self) -> dict[str, int]:
        """Spans dropped so far, by reason."""
        return {**self.dropped, "queue_full": self.dropped_full}

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="flux-span-exporter", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is queued (within `timeout` seconds), then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._shutdown_deadline = self._clock() + timeout
        self._wake.set()
        self._stopped.set()  # cuts a back-off short
        thread.join(timeout + 1.0)
        self._thread = None

    # -- the export thread --------------------------------------------------------------------

    def _run(self) -> None:
        delay = max(self.settings.schedule_delay, 0.001)
        try:
            while True:
                self._wake.wait(delay)
                self._wake.clear()
                stopping = self._stopping
                self._export_queued()
                if stopping:
                    return
        finally:
            if self._client is not None:
                self._client.close()

    def _export_queued(self) -> None:
        queue = self.queue
        while queue:
            if self._stopping and self._clock() >= self._shutdown_deadline:
                self.dropped["export_failed"] += len(queue)
                queue.clear()
                return
            batch = []
            for _ in range(min(self.batch_size, len(queue))):
                batch.append(queue.popleft())
            self.export(batch)

    def export(self, items: list[Exportable]) -> bool:
        """Encode and send one batch (on the export thread); whether the collector took it."""
        spans: list[SpanData] = []
        for item in items:
            try:
                spans.append(item.to_span())
            except Exception:  # a bug in one span must not lose the batch, nor stop the thread
                self.dropped["encode_error"] += 1
                log.exception("could not build a span for export")
        if not spans:
            return True
        body = encode_request(spans, self.resource, self.scope)
        headers = {"Content-Type": "application/x-protobuf", **self.settings.headers}
        if self.settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        outcome = self._post(body, headers)
        if outcome is None:
            self.exports_failed += 1
            self.dropped["export_failed"] += len(spans)
            return False
        rejected, message = outcome
        if rejected:
            rejected = min(rejected, len(spans))
            self.dropped["rejected"] += rejected
            self._failed(f"the collector refused {rejected} of {len(spans)} spans: {message or 'no reason given'}")
        self.exported += len(spans) - rejected
        return True

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str] | None:
        """POST with retries inside the export timeout: (spans refused, message), or None."""
        settings = self.settings
        start = self._clock()
        deadline = start + settings.export_timeout
        if self._stopping:
            deadline = min(deadline, self._shutdown_deadline)
        backoff = 0.5
        while True:
            left = deadline - self._clock()
            if left <= 0:
                return None
            retry_after: float | None = None
            try:
                response = self._http().post(
                    settings.endpoint, content=body, headers=headers, timeout=min(settings.timeout, left)
                )
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                retryable = True
            else:
                if 200 <= response.status_code < 300:
                    return rejected_spans(response.content)
                problem = f"HTTP {response.status_code}: {response.text[:200]!r}"
                retryable = response.status_code in RETRYABLE
                retry_after = _seconds(response.headers.get("retry-after"))
            wait = retry_after if retry_after is not None else backoff
            if not retryable or self._stopping or self._clock() + wait >= deadline:
                self._failed(f"export to {settings.endpoint} failed: {problem}")
                return None
            if self._stopped.wait(wait):
                return None
            backoff = min(backoff * 2, 5.0)

    def _http(self) -> httpx.Client:
        if self._client is None:
            verify: Any = self.settings.certificate or True
            self._client = httpx.Client(verify=verify, trust_env=False)
        return self._client

    def _failed(self, message: str) -> None:
        self.last_error = message
        now = self._clock()
        if now - self._last_log < LOG_EVERY:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more export problems since the last message)" if self._unlogged else ""
        log.warning("tracing: %s; spans are dropped, traffic is not affected%s", message, more)
        self._last_log = now
        self._unlogged = 0


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the delay form only), bounded to 30 s."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), 30.0)
    except ValueError:
        return None
