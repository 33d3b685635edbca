"""Finished spans and their OTLP encoding: an `ExportTraceServiceRequest` in protobuf, the body
of `POST {endpoint}/v1/traces` (content-type application/x-protobuf).

The message classes are the `opentelemetry-proto` package's (the official .proto files,
generated); this module only fills them. `SpanData` is what a finished span is until the exporter
encodes it: plain values, no protobuf objects, so the code that records spans never builds one.
Encoding runs on the exporter's thread, never on a request's path.

No sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from fluxcommon.tracing.context import SpanContext

AttrValue = str | bool | int | float | Sequence[str]
Attributes = list[tuple[str, AttrValue]]

# Span kinds and status codes, as OTLP numbers them.
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # Span.flags: whether the parent came from another process


@dataclass(slots=True)
class SpanData:
    """One finished span."""

    name: str
    kind: int
    trace_id: int
    span_id: int
    parent_span_id: int  # 0: a root span
    start_ns: int
    end_ns: int
    attributes: Attributes = field(default_factory=list)
    tracestate: str = ""
    parent_remote: bool = False
    status_code: int = STATUS_UNSET
    status_message: str = ""
    links: Sequence[SpanContext] = ()

    def to_span(self) -> SpanData:
        """What the exporter asks of every item it is handed."""
        return self


def encode_request(spans: Iterable[SpanData], resource: Mapping[str, AttrValue], scope: tuple[str, str]) -> bytes:
    """The serialised ExportTraceServiceRequest: one resource, one instrumentation scope."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    _fill(rs.resource.attributes, resource.items())
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = scope
    out = ss.spans
    for data in spans:
        span = out.add()
        span.trace_id = data.trace_id.to_bytes(16, "big")
        span.span_id = data.span_id.to_bytes(8, "big")
        if data.parent_span_id:
            span.parent_span_id = data.parent_span_id.to_bytes(8, "big")
        if data.tracestate:
            span.trace_state = data.tracestate
        span.flags = 0x01 | _HAS_IS_REMOTE | (_IS_REMOTE if data.parent_remote else 0)
        span.name = data.name
        span.kind = data.kind  # type: ignore[assignment]
        span.start_time_unix_nano = data.start_ns
        span.end_time_unix_nano = max(data.end_ns, data.start_ns)
        _fill(span.attributes, data.attributes)
        if data.status_code:
            span.status.code = data.status_code  # type: ignore[assignment]
            if data.status_code == STATUS_ERROR and data.status_message:
                span.status.message = data.status_message
        for link in data.links:
            lk = span.links.add()
            lk.trace_id = link.trace_id.to_bytes(16, "big")
            lk.span_id = link.span_id.to_bytes(8, "big")
            if link.tracestate:
                lk.trace_state = link.tracestate
            lk.flags = link.flags | _HAS_IS_REMOTE
    return request.SerializeToString()


def rejected_spans(body: bytes) -> tuple[int, str]:
    """(spans the collector refused, its message) from an ExportTraceServiceResponse body (a
    partial success); (0, "") for an empty or unreadable body."""
    if not body:
        return 0, ""
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(body)
    except Exception:  # DecodeError; a collector that answers something else is not our failure
        return 0, ""
    partial = response.partial_success
    return int(partial.rejected_spans), partial.error_message


def _fill(target: object, items: Iterable[tuple[str, AttrValue]]) -> None:
    for key, value in items:
        kv: KeyValue = target.add()  # type: ignore[attr-defined]
        kv.key = key
        _value(kv.value, value)


def _value(out: AnyValue, value: AttrValue) -> None:
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    else:
        for item in value:
            _value(out.array_value.values.add(), item)
