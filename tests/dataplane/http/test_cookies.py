"""The node's one Cookie parser (dataplane.http.cookies) and the places that read cookies with it."""

from __future__ import annotations

import itertools
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.snapshot import render_snapshot
from controlplane.spec import ConfigSet
from dataplane.config.compiler import EndpointRegistry, compile_snapshot
from dataplane.exchange.core import hash_key
from dataplane.http.cookies import MAX_PAIRS, cookie_lines, find_cookie, parse_cookies, request_cookie
from dataplane.http.request import RequestHead
from dataplane.policies.auth.common import TokenSource
from dataplane.policies.base import RequestContext
from dataplane.routing.grayscale import GrayRule, GrayscalePlan

FAST = settings(max_examples=150, deadline=None)

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# RFC 6265 4.1.1 cookie-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
COOKIE_OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')

names = st.text(TOKEN, min_size=1, max_size=12)
values = st.text(COOKIE_OCTETS, max_size=16)
pairs = st.lists(st.tuples(names, values, st.booleans()), max_size=12)


def head_with(*lines: bytes, other: tuple[tuple[bytes, bytes], ...] = ()) -> RequestHead:
    head = RequestHead()
    head.headers = [(b"Host", b"h"), *other, *((b"Cookie", line) for line in lines)]
    return head


# -- the rule, by example ----------------------------------------------------------------------


def test_the_rule_by_example() -> None:
    lines = [b'a=1; b="two";c = 3 ;d=x=y; e', b'\tf="";g="; h=\\"q\\"', b"=nameless; a=again"]
    assert parse_cookies(lines) == [
        ("a", "1"),
        ("b", "two"),  # one pair of double quotes removed
        ("c", "3"),  # spaces around the name and the value dropped
        ("d", "x=y"),  # the first '=' splits
        ("f", ""),
        ("g", '"'),  # a lone quote is kept
        ("h", '\\"q\\"'),  # nothing unescaped inside
        ("a", "again"),  # the pair without '=' and the nameless one skipped
    ]
    assert find_cookie(lines, "a") == "1"  # the first wins
    assert find_cookie(lines, "A") is None  # names are case-sensitive
    assert find_cookie(lines, "e") is None
    assert find_cookie(lines, "") is None
    assert find_cookie(lines, "é") is None
    assert find_cookie(lines, "☃") is None  # not Latin-1: no such name on the wire


def test_every_cookie_field_counts_in_order() -> None:
    headers = [(b"cookie", b"a=1"), (b"X-Other", b"b=2"), (b"COOKIE", b"b=3; a=4"), (b"Cookies", b"c=5")]
    assert list(cookie_lines(headers)) == [b"a=1", b"b=3; a=4"]
    assert request_cookie(headers, "a") == "1"
    assert request_cookie(headers, "b") == "3"
    assert request_cookie(headers, "c") is None


def test_work_is_bounded() -> None:
    lines = [b"; ".join(b"k%d=v" % i for i in range(MAX_PAIRS)), b"late=1"]
    assert len(parse_cookies(lines)) == MAX_PAIRS
    assert find_cookie(lines, f"k{MAX_PAIRS - 1}") == "v"
    assert find_cookie(lines, "late") is None  # past the bound
    assert find_cookie([b";" * 100_000 + b"x=1"], "x") == "1"  # empty parts are no pairs


# -- properties ------------------------------------------------------------------------------


@given(lines=st.lists(st.binary(max_size=64), max_size=4), name=st.text(max_size=8))
@FAST
def test_never_raises(lines: list[bytes], name: str) -> None:
    found = parse_cookies(lines)
    value = find_cookie(lines, name)
    assert value is None or (name, value) in found
    assert all(n for n, _ in found)


@given(pairs=pairs, cuts=st.lists(st.integers(0, 12), max_size=4), sep=st.sampled_from(["; ", ";", " ; ", ";\t"]))
@FAST
def test_round_trip_of_well_formed_pairs(pairs: list[tuple[str, str, bool]], cuts: list[int], sep: str) -> None:
    """Pairs written as a browser writes them (quoted or not), in one field or split into
    several (as HTTP/2 does), read back as they were."""
    written = [f'{n}="{v}"' if quoted else f"{n}={v}" for n, v, quoted in pairs]
    bounds = sorted({0, len(written), *(c for c in cuts if c < len(written))})
    lines = [sep.join(written[a:b]).encode() for a, b in itertools.pairwise(bounds)]
    assert parse_cookies(lines) == [(n, v) for n, v, _ in pairs]
    for n, _, _ in pairs:
        assert find_cookie(lines, n) == next(v for m, v, _ in pairs if m == n)


# -- every former parser's call site agrees --------------------------------------------------


def _compiled() -> Any:
    doc = {
        "listeners": [{"name": "web", "protocol": "http", "port": 8080}],
        "clusters": [
            {"name": "app", "lb": "consistent_hash", "hash_on": "cookie:sid",
             "endpoints": [{"address": "10.0.0.1", "port": 80}]},
        ],
        "routes": [{"name": "app", "path": "/", "cluster": "app"}],
    }  # fmt: skip
    cfg = ConfigSet.from_document(doc)
    stored = [(plural, spec.keep_secrets_from(None)) for plural, spec in cfg.iter_all()]
    snap = render_snapshot(ConfigSet().with_changes(stored, []), 1, "default")
    return compile_snapshot(snap, EndpointRegistry(), lambda *a, **k: object()).config  # type: ignore[arg-type]


CLUSTER = _compiled().clusters["app"]

wild_value = st.text(alphabet=st.sampled_from(list(COOKIE_OCTETS + ' "=\t')), max_size=10)
wild_line = st.lists(
    st.tuples(st.sampled_from(["sid", "other", " sid", "SID"]), st.sampled_from(["=", " = ", ""]), wild_value),
    max_size=5,
).map(lambda ps: "; ".join(n + s + v for n, s, v in ps).encode("latin-1"))


@given(lines=st.lists(wild_line, max_size=3))
@FAST
def test_the_node_reads_a_cookie_one_way_everywhere(lines: list[bytes]) -> None:
    """Consistent hashing and grayscale (exchange core), auth token sources, and the single
    joined field the node sends upstream over HTTP/2 all see the parser's value."""
    head = head_with(*lines)
    want = find_cookie(lines, "sid")
    assert request_cookie(head.headers, "sid") == want
    assert hash_key(CLUSTER, head, "192.0.2.1") == want
    stripped = want.strip() if want is not None else None
    assert TokenSource("cookie:sid").extract(RequestContext(head, "192.0.2.1", "web", "app", 0.0)) == (stripped or None)
    rule = GrayRule((), (("sid", want if want is not None else "never"),), "", "v2")
    plan = GrayscalePlan({"v1": 1}, [rule])
    choice = plan.choose(head.get, lambda name: request_cookie(head.headers, name), frozenset(), "192.0.2.1")
    assert choice is not None and choice.version == ("v2" if want is not None else "v1")
    joined = head.get("cookie")  # repeated fields joined with "; " (as one field upstream)
    assert find_cookie([joined.encode("latin-1")] if joined is not None else [], "sid") == want
