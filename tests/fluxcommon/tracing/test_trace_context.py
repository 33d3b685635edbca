"""W3C trace context parsing (fluxcommon.tracing.context): the specification's examples, strict
refusals, and hypothesis properties (round trip; any input parses or is None, never raises)."""

from __future__ import annotations

import ast
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxcommon.tracing import context as context_module
from fluxcommon.tracing import sampling as sampling_module
from fluxcommon.tracing import settings as settings_module
from fluxcommon.tracing.context import (
    MAX_TRACESTATE_LENGTH,
    MAX_TRACESTATE_MEMBERS,
    IdSource,
    SpanContext,
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
)

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_specification_example() -> None:
    ctx = parse_traceparent(VALID)
    assert ctx == SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)
    assert ctx.sampled and ctx.traceparent == VALID
    unsampled = parse_traceparent(VALID[:-2] + "00")
    assert unsampled is not None and not unsampled.sampled


def test_bytes_and_optional_whitespace_are_read() -> None:
    assert parse_traceparent(VALID.encode()) == parse_traceparent(VALID)
    assert parse_traceparent(f" \t{VALID} ") == parse_traceparent(VALID)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        VALID.upper(),  # upper-case hex
        VALID.replace("0af7651916cd43dd8448eb211c80319c", "0" * 32),  # all-zero trace id
        VALID.replace("b7ad6b7169203331", "0" * 16),  # all-zero parent id
        "ff" + VALID[2:],  # version ff is forbidden
        VALID + "-extra",  # version 00 is exactly 55 characters
        VALID[:-1],  # too short
        VALID.replace("-", "_"),
        VALID + ", " + VALID,  # two traceparent fields joined by a proxy
        "0g" + VALID[2:],
        VALID[:-2] + "0x",
        "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",  # separators in the wrong place
        b"\xff\xfe" * 30,
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",  # a later version: a field needs "-"
    ],
)
def test_malformed_values_are_no_parent(value: str | bytes | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_fields() -> None:
    ctx = parse_traceparent("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09-what-the-future-holds")
    assert ctx is not None and ctx.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and ctx.flags == 1
    assert parse_traceparent("cc" + VALID[2:]) is not None


ids = st.integers(min_value=1, max_value=(1 << 128) - 1)
span_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)


@given(ids, span_ids, st.booleans())
def test_round_trip(trace_id: int, span_id: int, sampled: bool) -> None:
    header = format_traceparent(trace_id, span_id, sampled)
    assert len(header) == 55
    ctx = parse_traceparent(header)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (trace_id, span_id, sampled)
    assert ctx.traceparent == header


@given(st.one_of(st.binary(max_size=120), st.text(max_size=120)))
def test_any_input_parses_or_is_none(value: bytes | str) -> None:
    ctx = parse_traceparent(value)
    assert ctx is None or (ctx.trace_id and ctx.span_id and ctx.flags in (0, 1))
    state = parse_tracestate(value)
    assert isinstance(state, str) and len(state) <= max(MAX_TRACESTATE_LENGTH, len(value))


@given(st.text(alphabet="0123456789abcdef-", min_size=55, max_size=60))
def test_near_misses_never_raise(value: str) -> None:
    ctx = parse_traceparent(value)
    if ctx is not None:
        assert format_traceparent(ctx.trace_id, ctx.span_id, ctx.sampled)[3:52] == value[3:52]


# -- tracestate -----------------------------------------------------------------------------


def test_tracestate_passes_unchanged() -> None:
    assert parse_tracestate("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7") == "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"
    assert parse_tracestate("fw529a3039@dt=00f067aa0ba902b7") == "fw529a3039@dt=00f067aa0ba902b7"
    assert parse_tracestate(" a=1 ") == "a=1"
    assert parse_tracestate("a=1,,b=2") == "a=1,b=2"  # empty list-members may go


@pytest.mark.parametrize(
    "value",
    ["Congo=1", "a", "a=", "a=1,a=2", "a=1 2=", "a=\x01", "1a=x", "a=1,b", "a=x=", "k" * 257 + "=v"],
)
def test_malformed_tracestate_is_dropped(value: str) -> None:
    assert parse_tracestate(value) == ""


def test_more_than_32_members_is_dropped() -> None:
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS))) != ""
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS + 1))) == ""


def test_a_long_tracestate_loses_long_members_first_then_the_last() -> None:
    long_member = "big=" + "x" * 200
    members = [f"k{i}=" + "v" * 40 for i in range(10)]
    state = parse_tracestate(",".join([members[0], long_member, *members[1:]]))
    assert state == ",".join(members)  # 654 characters: the long member goes, the rest fits
    more = [*members, *(f"m{i}=" + "w" * 40 for i in range(5))]  # 674 characters, none long
    state = parse_tracestate(",".join(more))
    assert len(state) <= MAX_TRACESTATE_LENGTH and state == ",".join(more[: state.count(",") + 1])


members = st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}=[!-+\--<>-~]{1,60}", fullmatch=True)


@given(st.lists(members, max_size=40, unique_by=lambda m: m.partition("=")[0]))
def test_tracestate_bounds(items: list[str]) -> None:
    state = parse_tracestate(",".join(items))
    if len(items) > MAX_TRACESTATE_MEMBERS:
        assert state == ""
        return
    assert len(state) <= MAX_TRACESTATE_LENGTH
    kept = state.split(",") if state else []
    assert set(kept) <= set(items)  # whole members only, none altered
    if len(",".join(items)) <= MAX_TRACESTATE_LENGTH:
        assert state == ",".join(items)


def test_ids_are_never_zero_and_differ() -> None:
    source = IdSource(seed=7)
    trace_ids = {source.trace_id() for _ in range(1000)}
    span_ids = {source.span_id() for _ in range(1000)}
    assert len(trace_ids) == 1000 and len(span_ids) == 1000 and 0 not in trace_ids | span_ids


@pytest.mark.parametrize("module", [context_module, sampling_module, settings_module])
def test_the_cores_import_no_io_library(module: object) -> None:
    tree = ast.parse(pathlib.Path(module.__file__).read_text())  # type: ignore[attr-defined]
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"trio", "socket", "ssl", "grpc", "asyncio", "select", "httpx", "threading", "os", "logging"}
