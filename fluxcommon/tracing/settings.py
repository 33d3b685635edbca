"""Tracing settings from the standard OpenTelemetry environment variables (sans-IO: the caller
passes the environment and a function that logs).

Tracing is off unless an endpoint is set (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or
OTEL_EXPORTER_OTLP_ENDPOINT to which `v1/traces` is added), and off when OTEL_SDK_DISABLED=true
or OTEL_TRACES_EXPORTER=none. Read:

    OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT     where spans go (OTLP/HTTP, protobuf)
    OTEL_EXPORTER_OTLP[_TRACES]_HEADERS      k=v,k2=v2 (values percent-decoded) on every export
    OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT      one export request, ms (10000)
    OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION  gzip | none (none)
    OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE  CA file to verify an https collector with
    OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL     http/protobuf only
    OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG   (parentbased_always_on; ratio 1.0)
    OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES   (service name: the caller's default)
    OTEL_BSP_SCHEDULE_DELAY (5000 ms), OTEL_BSP_EXPORT_TIMEOUT (30000 ms),
    OTEL_BSP_MAX_QUEUE_SIZE (2048), OTEL_BSP_MAX_EXPORT_BATCH_SIZE (512)

An empty variable counts as unset. An invalid value is reported through `warn` with the
variable's name, and the specification's default is used instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from fluxcommon.tracing.sampling import DEFAULT_SAMPLER, SAMPLER_NAMES, Sampler, make_sampler

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
Warn = Callable[[str], None]


@dataclass(frozen=True)
class TracingSettings:
    endpoint: str  # the full URL spans are POSTed to
    sampler: Sampler
    service_name: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0  # seconds, one export request
    compression: str = ""  # "" or "gzip"
    certificate: str = ""  # a CA file ("" = the system's)
    resource: dict[str, str] = field(default_factory=dict)  # OTEL_RESOURCE_ATTRIBUTES
    schedule_delay: float = 5.0  # seconds between exports
    export_timeout: float = 30.0  # seconds, one export with its retries
    max_queue_size: int = 2048
    max_export_batch_size: int = 512


def settings_from_env(env: Mapping[str, str], default_service: str, warn: Warn) -> TracingSettings | None:
    """The settings `env` asks for, or None when tracing is off."""

    def get(name: str) -> str:
        return env.get(name, "").strip()

    disabled = get("OTEL_SDK_DISABLED").lower()
    if disabled not in ("", "true", "false"):
        warn(f"OTEL_SDK_DISABLED={disabled!r} is neither true nor false: taken as false")
    if disabled == "true":
        return None
    exporters = [e.strip() for e in get("OTEL_TRACES_EXPORTER").lower().split(",") if e.strip()] or ["otlp"]
    if exporters == ["none"]:
        return None
    unknown = [e for e in exporters if e not in ("otlp", "none")]
    if unknown:
        warn(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not supported here: spans go by OTLP")
    endpoint = _endpoint(get, warn)
    if endpoint is None:
        return None
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = get(name)
        if protocol:
            if protocol != "http/protobuf":
                warn(f"{name}={protocol!r} is not supported: spans go as http/protobuf")
            break
    headers = _pairs("OTEL_EXPORTER_OTLP_HEADERS", get("OTEL_EXPORTER_OTLP_HEADERS"), warn)
    headers.update(_pairs("OTEL_EXPORTER_OTLP_TRACES_HEADERS", get("OTEL_EXPORTER_OTLP_TRACES_HEADERS"), warn))
    resource = _pairs("OTEL_RESOURCE_ATTRIBUTES", get("OTEL_RESOURCE_ATTRIBUTES"), warn)
    service = get("OTEL_SERVICE_NAME") or resource.get("service.name") or default_service
    queue = _int(get, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, warn)
    batch = _int(get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, warn)
    if batch > queue:
        warn(f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is more than OTEL_BSP_MAX_QUEUE_SIZE={queue}: "
             f"using the default, 512 (at most the queue size)")  # fmt: skip
        batch = min(512, queue)
    timeout_name = _set_one(get, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    return TracingSettings(
        endpoint=endpoint,
        sampler=_sampler(get, warn),
        service_name=service,
        headers=headers,
        timeout=_int(get, timeout_name, 10000, warn) / 1000,
        compression=_compression(get, warn),
        certificate=get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") or get("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        resource=resource,
        schedule_delay=_int(get, "OTEL_BSP_SCHEDULE_DELAY", 5000, warn, minimum=0) / 1000,
        export_timeout=_int(get, "OTEL_BSP_EXPORT_TIMEOUT", 30000, warn) / 1000,
        max_queue_size=queue,
        max_export_batch_size=batch,
    )


def _set_one(get: Callable[[str], str], specific: str, general: str) -> str:
    """The name to read: the signal-specific variable when it is set, else the general one."""
    return specific if get(specific) else general


def _endpoint(get: Callable[[str], str], warn: Warn) -> str | None:
    specific = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if specific:
        if _valid_url(specific):
            return specific
        warn(f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={specific!r} is not an http(s) URL: using the default, "
             f"{DEFAULT_ENDPOINT}")  # fmt: skip
        return DEFAULT_ENDPOINT
    base = get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    if not _valid_url(base):
        warn(f"OTEL_EXPORTER_OTLP_ENDPOINT={base!r} is not an http(s) URL: using the default, {DEFAULT_ENDPOINT}")
        return DEFAULT_ENDPOINT
    return base + ("v1/traces" if base.endswith("/") else "/v1/traces")


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment


def _pairs(name: str, text: str, warn: Warn) -> dict[str, str]:
    """`k=v,k2=v2` (W3C Baggage's form, values percent-decoded); bad entries are left out."""
    out: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key, value = unquote(key.strip()), unquote(value.strip())
        if not sep or not key or any(c in key for c in " \t\r\n") or any(c in value for c in "\r\n"):
            warn(f"{name}: {entry.strip()!r} is not key=value: left out")
            continue
        out[key] = value
    return out


def _int(get: Callable[[str], str], name: str, default: int, warn: Warn, *, minimum: int = 1) -> int:
    text = get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        what = "a whole number, 0 or more" if minimum == 0 else f"a whole number, {minimum} or more"
        warn(f"{name}={text!r} is not {what}: using the default, {default}")
        return default
    return value


def _compression(get: Callable[[str], str], warn: Warn) -> str:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"):
        value = get(name).lower()
        if value:
            if value in ("gzip", "none"):
                return "" if value == "none" else value
            warn(f"{name}={value!r} is neither gzip nor none: using the default, none")
            return ""
    return ""


def _sampler(get: Callable[[str], str], warn: Warn) -> Sampler:
    name = get("OTEL_TRACES_SAMPLER").lower() or DEFAULT_SAMPLER
    if name not in SAMPLER_NAMES:
        warn(f"OTEL_TRACES_SAMPLER={name!r} is not one of {', '.join(SAMPLER_NAMES)}: "
             f"using the default, {DEFAULT_SAMPLER}")  # fmt: skip
        name = DEFAULT_SAMPLER
    ratio = 1.0
    arg = get("OTEL_TRACES_SAMPLER_ARG")
    if arg and name.endswith("traceidratio"):
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:  # NaN fails too
            warn(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a ratio between 0 and 1: using the default, 1.0")
            ratio = 1.0
    return make_sampler(name, ratio)
