"""A fake OpenTelemetry collector for tests: an OTLP/HTTP receiver (threads, http.server) that
decodes every `POST /v1/traces` body as an ExportTraceServiceRequest and keeps the spans.

It is a fake (no real collector can be installed on these machines): it speaks only the part of
OTLP/HTTP the exporters use (protobuf bodies, gzip, the partial-success answer) and checks the
content type. `fail_with = 503` makes it refuse exports (the exporter's retries and drop counts);
`reject = N` answers a partial success refusing N spans of each export.

    with FakeCollector() as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, ...}
        ...
        spans = collector.wait_for(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from support.processes import wait_until


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class FakeCollector:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []  # path, headers, span count of each export
        self.fail_with = 0  # answer every export with this status (0: accept)
        self.reject = 0  # refuse this many spans of each export (partial success)
        self.bad_requests: list[str] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                collector._receive(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what arrived ---------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 10.0, message: str = "spans"
    ) -> list[dict[str, Any]]:
        """The spans so far, once `predicate(spans)` holds (bounded by `timeout`)."""
        wait_until(lambda: predicate(self.snapshot()), timeout, message=message)
        return self.snapshot()

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in self.snapshot() if s["trace_id"] == trace_id]

    # -- the receiver ---------------------------------------------------------------------

    def _receive(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in h.headers.items()}
        if h.path != "/v1/traces" or headers.get("content-type") != "application/x-protobuf":
            self.bad_requests.append(f"{h.path} {headers.get('content-type')}")
            h.send_response(404 if h.path != "/v1/traces" else 415)
            h.send_header("content-length", "0")
            h.end_headers()
            return
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for rs in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        {
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "flags": s.flags,
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attributes": {kv.key: _value(kv.value) for kv in s.attributes},
                            "status": {"code": s.status.code, "message": s.status.message},
                            "links": [{"trace_id": lk.trace_id.hex(), "span_id": lk.span_id.hex()} for lk in s.links],
                            "resource": resource,
                            "scope": ss.scope.name,
                        }
                    )
        with self._lock:
            self.requests.append({"path": h.path, "headers": headers, "spans": len(spans)})
            if self.fail_with:
                status = self.fail_with
            else:
                status = 200
                self.spans.extend(spans[self.reject :] if self.reject else spans)
        answer = ExportTraceServiceResponse()
        if status == 200 and self.reject:
            answer.partial_success.rejected_spans = min(self.reject, len(spans))
            answer.partial_success.error_message = "fake collector: refused on purpose"
        data = answer.SerializeToString() if status == 200 else b"refused on purpose"
        h.send_response(status)
        h.send_header("content-type", "application/x-protobuf" if status == 200 else "text/plain")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
