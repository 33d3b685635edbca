"""Samplers (fluxcommon.tracing.sampling) and the OTEL_* settings (fluxcommon.tracing.settings):
the specification's names and defaults, and every invalid value named in a warning."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxcommon.tracing.sampling import SAMPLER_NAMES, ParentBased, TraceIdRatio, make_sampler
from fluxcommon.tracing.settings import DEFAULT_ENDPOINT, TracingSettings, settings_from_env

trace_ids = st.integers(min_value=1, max_value=(1 << 128) - 1)
ratios = st.floats(min_value=0.0, max_value=1.0)


@given(trace_ids, ratios, ratios)
def test_a_trace_sampled_at_a_ratio_is_sampled_at_any_higher_one(trace_id: int, a: float, b: float) -> None:
    low, high = sorted((a, b))
    if TraceIdRatio(low).should_sample(None, trace_id):
        assert TraceIdRatio(high).should_sample(None, trace_id)


@given(trace_ids)
def test_ratio_edges(trace_id: int) -> None:
    assert TraceIdRatio(1.0).should_sample(None, trace_id)
    assert not TraceIdRatio(0.0).should_sample(None, trace_id)


def test_ratio_decides_by_the_lower_64_bits_as_the_sdks_do() -> None:
    quarter = TraceIdRatio(0.25)
    assert quarter.should_sample(None, (0xFFFF << 64) | ((1 << 62) - 1))
    assert not quarter.should_sample(None, 1 << 62)
    rng = random.Random(3)
    hits = sum(quarter.should_sample(None, rng.getrandbits(128)) for _ in range(20000))
    assert 4600 < hits < 5400  # 5000 expected; 6 standard deviations either way


@given(trace_ids, st.booleans())
def test_parent_based_follows_the_parent(trace_id: int, parent_sampled: bool) -> None:
    for name in ("parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"):
        assert make_sampler(name, 0.5).should_sample(parent_sampled, trace_id) is parent_sampled


def test_roots() -> None:
    assert make_sampler("parentbased_always_on").should_sample(None, 5)
    assert not make_sampler("parentbased_always_off").should_sample(None, 5)
    assert make_sampler("always_on").should_sample(False, 5)  # not parent-based: the parent does not count
    assert not make_sampler("always_off").should_sample(True, 5)
    sampler = make_sampler("parentbased_traceidratio", 0.1)
    assert isinstance(sampler, ParentBased) and sampler.description == "parentbased_traceidratio(0.1)"


def test_every_name_and_nothing_else() -> None:
    for name in SAMPLER_NAMES:
        make_sampler(name)
    for bad in ("xray", "parentbased_xray", "parentbased_parentbased_always_on", ""):
        with pytest.raises(ValueError):
            make_sampler(bad)
    with pytest.raises(ValueError):
        TraceIdRatio(1.5)


# -- settings from the environment ------------------------------------------------------------


def settings(env: dict[str, str], default: str = "flux-node") -> tuple[TracingSettings | None, list[str]]:
    warnings: list[str] = []
    return settings_from_env(env, default, warnings.append), warnings


def test_off_without_an_endpoint_or_when_disabled() -> None:
    assert settings({}) == (None, [])
    assert settings({"OTEL_TRACES_SAMPLER": "always_on"})[0] is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert settings({**on, "OTEL_SDK_DISABLED": "true"})[0] is None
    assert settings({**on, "OTEL_TRACES_EXPORTER": "none"})[0] is None
    assert settings({**on, "OTEL_EXPORTER_OTLP_ENDPOINT": ""})[0] is None  # empty is unset


def test_defaults() -> None:
    s, warnings = settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert warnings == [] and s is not None
    assert s.endpoint == "http://collector:4318/v1/traces"
    assert s.sampler.description == "parentbased_always_on" and s.service_name == "flux-node"
    assert (s.schedule_delay, s.export_timeout, s.max_queue_size, s.max_export_batch_size) == (5.0, 30.0, 2048, 512)
    assert (s.timeout, s.compression, s.headers) == (10.0, "", {})


def test_everything_set() -> None:
    s, warnings = settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://tempo.example:4318/otlp/v1/traces",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-scope-orgid=team-a",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-scope-orgid=team-b",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "OTEL_SERVICE_NAME": "edge",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=other",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BSP_EXPORT_TIMEOUT": "1000",
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "50",
        }
    )
    assert warnings == [] and s is not None
    assert s.endpoint == "https://tempo.example:4318/otlp/v1/traces"  # the signal's own endpoint, as it is
    assert s.headers == {"authorization": "Bearer abc", "x-scope-orgid": "team-b"}
    assert (s.timeout, s.compression, s.service_name) == (2.5, "gzip", "edge")
    assert s.resource == {"deployment.environment": "prod", "service.name": "other"}
    assert s.sampler.description == "parentbased_traceidratio(0.1)"
    assert (s.schedule_delay, s.export_timeout, s.max_queue_size, s.max_export_batch_size) == (0.2, 1.0, 100, 50)
    assert settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/base/"})[0].endpoint == (  # type: ignore[union-attr]
        "http://c:4318/base/v1/traces"
    )
    named = settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_RESOURCE_ATTRIBUTES": "service.name=x"})
    assert named[0] is not None and named[0].service_name == "x"


@pytest.mark.parametrize(
    ("variable", "value", "check"),
    [
        ("OTEL_TRACES_SAMPLER", "sometimes", lambda s: s.sampler.description == "parentbased_always_on"),
        ("OTEL_TRACES_SAMPLER_ARG", "lots", lambda s: s.sampler.description == "traceidratio(1.0)"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", lambda s: s.sampler.description == "traceidratio(1.0)"),
        ("OTEL_TRACES_SAMPLER_ARG", "nan", lambda s: s.sampler.description == "traceidratio(1.0)"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon", lambda s: s.schedule_delay == 5.0),
        ("OTEL_BSP_SCHEDULE_DELAY", "-1", lambda s: s.schedule_delay == 5.0),
        ("OTEL_BSP_EXPORT_TIMEOUT", "0", lambda s: s.export_timeout == 30.0),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "big", lambda s: s.max_queue_size == 2048),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096", lambda s: s.max_export_batch_size == 512),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1.5s", lambda s: s.timeout == 10.0),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", lambda s: s.compression == ""),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", lambda s: s.headers == {}),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", lambda s: True),
        ("OTEL_TRACES_EXPORTER", "zipkin", lambda s: True),
        ("OTEL_SDK_DISABLED", "yes", lambda s: True),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318", lambda s: s.endpoint == DEFAULT_ENDPOINT),
    ],
)
def test_an_invalid_value_is_named_and_the_default_used(variable: str, value: str, check: object) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_SAMPLER": "traceidratio"}
    if variable == "OTEL_TRACES_SAMPLER":
        env.pop("OTEL_TRACES_SAMPLER")
    env[variable] = value
    s, warnings = settings(env)
    assert s is not None and check(s)  # type: ignore[operator]
    assert len(warnings) == 1 and variable in warnings[0], warnings
