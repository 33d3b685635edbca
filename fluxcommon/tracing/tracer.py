"""Spans of the rarer events: a config write, a publish, a push, a node applying a version.

`Tracer.start_span(name, kind, parent)` samples (the parent's flag for the parent-based
samplers), takes the parent's trace id or starts a trace, and returns a `Span` that collects
attributes and is handed to the exporter when it ends. A span the sampler leaves out still has
ids and a `traceparent` (flag 00), so what it calls joins the same (unsampled) trace.

A node's request spans do not come through here: `dataplane.exchange.trace` records them with
less work per request.

`tracing_from_env()` builds a process's tracing from the OTEL_* variables: None when they leave
it off.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fluxcommon.tracing.context import SAMPLED, IdSource, SpanContext
from fluxcommon.tracing.exporter import BatchExporter
from fluxcommon.tracing.otlp import STATUS_ERROR, AttrValue, SpanData
from fluxcommon.tracing.sampling import Sampler
from fluxcommon.tracing.settings import TracingSettings, settings_from_env
from fluxcommon.version import package_version

log = logging.getLogger("flux.tracing")

SCOPE = "flux-gateway"


class Span:
    """A span in progress. `end()` once; a span that is not sampled records nothing."""

    __slots__ = ("_sink", "_wall", "context", "data", "ended")

    def __init__(self, context: SpanContext, data: SpanData | None, sink: Callable[[SpanData], None],
                 wall: Callable[[], int]) -> None:  # fmt: skip
        self.context = context
        self.data = data  # None: not sampled
        self._sink = sink
        self._wall = wall
        self.ended = False

    @property
    def recording(self) -> bool:
        return self.data is not None

    @property
    def traceparent(self) -> str:
        return self.context.traceparent

    @property
    def tracestate(self) -> str:
        return self.context.tracestate

    def set(self, key: str, value: AttrValue) -> None:
        if self.data is not None:
            self.data.attributes.append((key, value))

    def error(self, message: str) -> None:
        if self.data is not None:
            self.data.status_code = STATUS_ERROR
            self.data.status_message = message[:1000]

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        data = self.data
        if data is not None:
            data.end_ns = self._wall()
            self._sink(data)


class Tracer:
    def __init__(
        self,
        sampler: Sampler,
        sink: Callable[[SpanData], None],
        *,
        ids: IdSource | None = None,
        wall: Callable[[], int] = time.time_ns,
    ) -> None:
        self.sampler = sampler
        self.sink = sink
        self.ids = ids or IdSource()
        self.wall = wall

    def start_span(
        self,
        name: str,
        kind: int,
        parent: SpanContext | None = None,
        attributes: Mapping[str, AttrValue] | None = None,
        *,
        links: Sequence[SpanContext] = (),
        remote: bool = False,
    ) -> Span:
        """A new span, child of `parent` (None: a root span); `remote`: the parent came from
        another process."""
        ids = self.ids
        trace_id = parent.trace_id if parent is not None else ids.trace_id()
        sampled = self.sampler.should_sample(parent.sampled if parent is not None else None, trace_id)
        context = SpanContext(trace_id, ids.span_id(), SAMPLED if sampled else 0,
                              parent.tracestate if parent is not None else "")  # fmt: skip
        data = None
        if sampled:
            data = SpanData(
                name, kind, trace_id, context.span_id, parent.span_id if parent is not None else 0,
                self.wall(), 0, list((attributes or {}).items()), context.tracestate, remote,
                links=tuple(links),
            )  # fmt: skip
        return Span(context, data, self.sink, self.wall)


@dataclass
class Tracing:
    """A process's tracing: what the environment asked for, the exporter, a tracer on it."""

    settings: TracingSettings
    exporter: BatchExporter
    tracer: Tracer

    def start(self) -> None:
        self.exporter.start()
        s = self.settings
        log.info("tracing on: spans to %s (%s, service %s, batches of %d every %gs)", s.endpoint,
                 s.sampler.description, s.service_name, s.max_export_batch_size, s.schedule_delay)  # fmt: skip

    def shutdown(self, timeout: float = 5.0) -> None:
        self.exporter.shutdown(timeout)


def tracing_from_env(
    default_service: str,
    *,
    instance: str,
    attributes: Mapping[str, AttrValue] | None = None,
    env: Mapping[str, str] | None = None,
) -> Tracing | None:
    """Tracing as the OTEL_* variables of `env` (the process environment) ask, or None when off.
    Invalid values are logged, naming the variable, and replaced by the specification's default."""
    settings = settings_from_env(os.environ if env is None else env, default_service, log.warning)
    if settings is None:
        return None
    resource: dict[str, AttrValue] = {
        "service.name": settings.service_name,
        "service.version": package_version(),
        "service.instance.id": instance,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "telemetry.sdk.name": SCOPE,
        "telemetry.sdk.language": "python",
        **(attributes or {}),
    }
    for key, value in settings.resource.items():
        if key != "service.name":  # OTEL_SERVICE_NAME (or the default) decided that
            resource[key] = value
    exporter = BatchExporter(settings, resource, (SCOPE, package_version()))
    return Tracing(settings, exporter, Tracer(settings.sampler, exporter.submit))
