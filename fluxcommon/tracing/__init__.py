"""Distributed tracing for every FLUX process: W3C trace context, sampling, OTLP/HTTP export.

    context.py    traceparent / tracestate: strict parsing and formatting, ids (sans-IO)
    sampling.py   the OTEL_TRACES_SAMPLER samplers (sans-IO)
    settings.py   the OTEL_* environment variables -> TracingSettings, or None: off (sans-IO)
    otlp.py       finished spans (SpanData) -> ExportTraceServiceRequest bytes (opentelemetry-proto)
    exporter.py   the bounded queue and the thread that POSTs batches (httpx)
    tracer.py     spans of config writes, pushes and applies; `tracing_from_env()`

The node's request spans are recorded by `dataplane.exchange.trace`; the control plane's by
`controlplane.tracing`.
"""
