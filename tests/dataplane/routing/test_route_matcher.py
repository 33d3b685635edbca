"""Route matcher tests: precedence unit tests, and properties checked against a brute-force reference."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.routing import RouteMatcher, RouteRule
from dataplane.routing import matcher as matcher_module


def rule(
    name: str,
    path: str = "/",
    path_type: str = "prefix",
    hosts: tuple[str, ...] = (),
    methods: frozenset[str] | set[str] = frozenset(),
    headers: tuple[tuple[str, str], ...] = (),
    priority: int = 0,
    target: object = None,
) -> RouteRule:
    return RouteRule(
        name=name,
        hosts=hosts,
        path=path,
        path_type=path_type,
        methods=frozenset(methods),
        headers=headers,
        priority=priority,
        target=target,
    )


def name_of(m: RouteMatcher, host: str, path: str, method: str = "GET", headers: dict | None = None) -> str | None:
    found = m.match(host, path, method, headers or {})
    return None if found is None else found.name


class RecordingHeaders:
    """A HeaderLookup that records every lookup."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: list[str] = []

    def get(self, name: str) -> str | None:
        self.asked.append(name)
        return self.values.get(name)


# --- structure --------------------------------------------------------------------------------------------


def test_module_imports_no_io_library() -> None:
    tree = ast.parse(Path(matcher_module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "re", "bisect", "collections", "dataclasses", "typing"}, imported


def test_empty_matcher() -> None:
    m = RouteMatcher([])
    assert len(m) == 0
    assert m.match("api.example.com", "/", "GET", {}) is None
    assert m.match("", "", "GET", {}) is None


def test_len_counts_rules_and_accepts_any_iterable() -> None:
    m = RouteMatcher(rule(f"r{i}", f"/p{i}") for i in range(7))
    assert len(m) == 7


def test_returns_the_rule_object_and_target_untouched() -> None:
    target = {"cluster": "orders", "unhashable": ["x"]}
    r = rule("orders", "/orders", target=target)
    found = RouteMatcher([r]).match("h", "/orders/1", "GET", {})
    assert found is r
    assert found.target is target


# --- host precedence --------------------------------------------------------------------------------------


def test_exact_host_beats_wildcard_beats_any_host() -> None:
    m = RouteMatcher(
        [
            rule("any", "/"),
            rule("wild", "/", hosts=("*.example.com",)),
            rule("exact", "/", hosts=("api.example.com",)),
        ]
    )
    assert name_of(m, "api.example.com", "/x") == "exact"
    assert name_of(m, "web.example.com", "/x") == "wild"
    assert name_of(m, "other.org", "/x") == "any"


def test_host_specificity_beats_path_specificity() -> None:
    m = RouteMatcher(
        [
            rule("any-exact-path", "/orders/1", "exact"),
            rule("wild-root", "/", hosts=("*.example.com",)),
        ]
    )
    assert name_of(m, "api.example.com", "/orders/1") == "wild-root"


def test_longest_wildcard_suffix_wins() -> None:
    m = RouteMatcher(
        [
            rule("short", "/", hosts=("*.example.com",)),
            rule("long", "/", hosts=("*.a.example.com",)),
            rule("tld", "/", hosts=("*.com",)),
        ]
    )
    assert name_of(m, "x.a.example.com", "/") == "long"
    assert name_of(m, "y.x.a.example.com", "/") == "long"
    assert name_of(m, "a.example.com", "/") == "short"
    assert name_of(m, "b.example.com", "/") == "short"
    assert name_of(m, "example.com", "/") == "tld"
    assert name_of(m, "example.org", "/") is None


def test_wildcard_does_not_match_bare_domain_but_matches_deeper_subdomains() -> None:
    m = RouteMatcher([rule("wild", "/", hosts=("*.example.com",))])
    assert name_of(m, "x.example.com", "/") == "wild"
    assert name_of(m, "y.x.example.com", "/") == "wild"
    assert name_of(m, "example.com", "/") is None
    assert name_of(m, ".example.com", "/") is None
    assert name_of(m, "badexample.com", "/") is None
    assert name_of(m, "x.example.com.evil", "/") is None
    assert name_of(m, "", "/") is None


def test_exact_host_does_not_match_subdomains() -> None:
    m = RouteMatcher([rule("exact", "/", hosts=("example.com",))])
    assert name_of(m, "example.com", "/") == "exact"
    assert name_of(m, "x.example.com", "/") is None


def test_rule_with_several_hosts_and_star_alias() -> None:
    m = RouteMatcher(
        [
            rule("multi", "/", hosts=("a.example.com", "*.b.example.com")),
            rule("star", "/", hosts=("*",)),
        ]
    )
    assert name_of(m, "a.example.com", "/") == "multi"
    assert name_of(m, "x.b.example.com", "/") == "multi"
    assert name_of(m, "c.example.com", "/") == "star"


def test_hosts_and_header_names_and_methods_are_normalised() -> None:
    m = RouteMatcher([rule("r", "/", hosts=("API.Example.COM",), methods={"get"}, headers=(("X-Version", "V2"),))])
    assert name_of(m, "api.example.com", "/", "GET", {"x-version": "V2"}) == "r"
    assert name_of(m, "api.example.com", "/", "GET", {"x-version": "v2"}) is None


# --- fallback across host levels -------------------------------------------------------------------------


def test_fallback_from_exact_host_to_wildcard_to_any() -> None:
    m = RouteMatcher(
        [
            rule("exact-users", "/users", hosts=("api.example.com",)),
            rule("wild-orders", "/orders", hosts=("*.example.com",)),
            rule("any-health", "/health", "exact"),
        ]
    )
    assert name_of(m, "api.example.com", "/users/1") == "exact-users"
    assert name_of(m, "api.example.com", "/orders") == "wild-orders"
    assert name_of(m, "api.example.com", "/health") == "any-health"
    assert name_of(m, "api.example.com", "/nothing") is None


def test_fallback_across_wildcard_levels_and_on_method_or_header_mismatch() -> None:
    m = RouteMatcher(
        [
            rule("deep-post", "/", hosts=("*.a.example.com",), methods={"POST"}),
            rule("shallow-v2", "/", hosts=("*.example.com",), headers=(("x-v", "2"),)),
            rule("any", "/"),
        ]
    )
    assert name_of(m, "x.a.example.com", "/", "POST") == "deep-post"
    assert name_of(m, "x.a.example.com", "/", "GET", {"x-v": "2"}) == "shallow-v2"
    assert name_of(m, "x.a.example.com", "/", "GET", {"x-v": "1"}) == "any"


# --- path precedence --------------------------------------------------------------------------------------


def test_exact_path_beats_prefix_of_any_length() -> None:
    m = RouteMatcher(
        [
            rule("prefix-long", "/orders/12", "prefix", priority=100),
            rule("exact", "/orders/123", "exact"),
        ]
    )
    assert name_of(m, "h", "/orders/123") == "exact"
    assert name_of(m, "h", "/orders/1234") == "prefix-long"


def test_longest_prefix_wins_and_prefix_is_character_based() -> None:
    m = RouteMatcher(
        [
            rule("root", "/"),
            rule("orders", "/orders"),
            rule("orders-slash", "/orders/"),
            rule("empty", ""),
        ]
    )
    assert name_of(m, "h", "/orders") == "orders"
    assert name_of(m, "h", "/ordersX") == "orders"
    assert name_of(m, "h", "/orders/1") == "orders-slash"
    assert name_of(m, "h", "/order") == "root"
    assert name_of(m, "h", "nope") == "empty"
    assert name_of(m, "h", "") == "empty"


def test_prefix_fallback_to_shorter_prefix_when_conditions_fail() -> None:
    m = RouteMatcher(
        [
            rule("a", "/a"),
            rule("ab-post", "/a/b", methods={"POST"}),
            rule("abc-hdr", "/a/b/c", headers=(("x", "1"),)),
            rule("abd", "/a/b/d"),
        ]
    )
    assert name_of(m, "h", "/a/b/c/1", "POST", {"x": "1"}) == "abc-hdr"
    assert name_of(m, "h", "/a/b/c/1", "POST") == "ab-post"
    assert name_of(m, "h", "/a/b/c/1", "GET") == "a"
    # The bisect lands on a sibling ("/a/b/d" < "/a/b/e"): the parent chain must still find "/a/b".
    assert name_of(m, "h", "/a/b/e", "POST") == "ab-post"
    assert name_of(m, "h", "/a/b/e") == "a"
    assert name_of(m, "h", "/b") is None


def test_regex_comes_after_exact_and_prefix_and_uses_full_match() -> None:
    m = RouteMatcher(
        [
            rule("regex", r"/users/\d+", "regex", priority=100),
            rule("prefix", "/users/1"),
        ]
    )
    assert name_of(m, "h", "/users/12") == "prefix"
    assert name_of(m, "h", "/users/23") == "regex"
    assert name_of(m, "h", "/users/23/x") is None  # fullmatch, not match/search
    assert name_of(m, "h", "/x/users/23") is None


def test_regex_is_not_anchored_by_accident() -> None:
    m = RouteMatcher([rule("regex", r"/a|/b", "regex")])
    assert name_of(m, "h", "/a") == "regex"
    assert name_of(m, "h", "/b") == "regex"
    assert name_of(m, "h", "/ab") is None


def test_regex_order_among_regexes_follows_rule_four() -> None:
    m = RouteMatcher(
        [
            rule("z-generic", r"/.*", "regex", priority=1),
            rule("a-specific", r"/items/\d+", "regex"),
            rule("b-hi", r"/items/.*", "regex", priority=1, methods={"GET"}),
        ]
    )
    assert name_of(m, "h", "/items/1", "GET") == "b-hi"
    assert name_of(m, "h", "/items/1", "PUT") == "z-generic"


# --- tie breaks (rule 4) ----------------------------------------------------------------------------------


def test_priority_then_header_count_then_methods_then_name() -> None:
    base = [
        rule("e-plain", "/p"),
        rule("d-methods", "/p", methods={"GET"}),
        rule("c-one-header", "/p", headers=(("x-a", "1"),)),
        rule("b-two-headers", "/p", headers=(("x-a", "1"), ("x-b", "2"))),
        rule("a-priority", "/p", priority=5),
    ]
    headers = {"x-a": "1", "x-b": "2"}
    m = RouteMatcher(base)
    assert name_of(m, "h", "/p", "GET", headers) == "a-priority"
    m = RouteMatcher(base[:4])
    assert name_of(m, "h", "/p", "GET", headers) == "b-two-headers"
    m = RouteMatcher(base[:3])
    assert name_of(m, "h", "/p", "GET", headers) == "c-one-header"
    m = RouteMatcher(base[:2])
    assert name_of(m, "h", "/p", "GET", headers) == "d-methods"
    assert name_of(m, "h", "/p", "POST", headers) == "e-plain"


def test_name_breaks_remaining_ties_in_either_input_order() -> None:
    rules = [rule("beta", "/p"), rule("alpha", "/p")]
    assert name_of(RouteMatcher(rules), "h", "/p") == "alpha"
    assert name_of(RouteMatcher(rules[::-1]), "h", "/p") == "alpha"


def test_priority_does_not_override_path_specificity() -> None:
    m = RouteMatcher([rule("short-hi", "/a", priority=99), rule("long-lo", "/a/b", priority=-1)])
    assert name_of(m, "h", "/a/b/c") == "long-lo"


def test_negative_priority_sorts_last() -> None:
    m = RouteMatcher([rule("neg", "/p", priority=-1), rule("zero", "/p")])
    assert name_of(m, "h", "/p") == "zero"


# --- method and header filtering --------------------------------------------------------------------------


def test_method_filtering() -> None:
    m = RouteMatcher([rule("read", "/r", methods={"GET", "HEAD"}), rule("write", "/w", methods={"POST"})])
    assert name_of(m, "h", "/r", "GET") == "read"
    assert name_of(m, "h", "/r", "HEAD") == "read"
    assert name_of(m, "h", "/r", "POST") is None
    assert name_of(m, "h", "/w", "POST") == "write"
    assert name_of(m, "h", "/w", "GET") is None


def test_header_filtering_is_exact_and_all_must_match() -> None:
    m = RouteMatcher([rule("h", "/", headers=(("x-env", "canary"), ("x-team", "core")))])
    assert name_of(m, "h", "/", "GET", {"x-env": "canary", "x-team": "core"}) == "h"
    assert name_of(m, "h", "/", "GET", {"x-env": "canary"}) is None
    assert name_of(m, "h", "/", "GET", {"x-env": "Canary", "x-team": "core"}) is None
    assert name_of(m, "h", "/", "GET", {"x-env": "canary ", "x-team": "core"}) is None
    assert name_of(m, "h", "/", "GET", {}) is None


def test_headers_are_only_looked_up_for_candidates_with_header_conditions() -> None:
    m = RouteMatcher(
        [
            rule("plain", "/plain"),
            rule("hdr-elsewhere", "/other", headers=(("x-other", "1"),)),
            rule("hdr-wrong-method", "/plain", methods={"POST"}, headers=(("x-post", "1"),)),
            rule("hdr-other-host", "/", hosts=("x.example.com",), headers=(("x-host", "1"),)),
        ]
    )
    headers = RecordingHeaders({"x-other": "1"})
    assert m.match("h", "/plain", "GET", headers).name == "plain"
    assert headers.asked == []
    assert m.match("h", "/nothing", "GET", headers) is None
    assert headers.asked == []
    assert m.match("h", "/other", "GET", headers).name == "hdr-elsewhere"
    assert headers.asked == ["x-other"]


def test_header_lookup_stops_at_first_mismatch() -> None:
    m = RouteMatcher([rule("h", "/", headers=(("x-a", "1"), ("x-b", "2")))])
    headers = RecordingHeaders({})
    assert m.match("h", "/", "GET", headers) is None
    assert headers.asked == ["x-a"]


# --- host cache -------------------------------------------------------------------------------------------


def test_host_cache_is_bounded_and_results_stay_correct() -> None:
    m = RouteMatcher(
        [
            rule("exact", "/", hosts=("api.example.com",)),
            rule("wild", "/w", hosts=("*.example.com",)),
            rule("any", "/a"),
        ]
    )
    limit = matcher_module.HOST_CACHE_SIZE
    for i in range(2 * limit + 10):
        assert name_of(m, f"h{i}.example.com", "/w") == "wild"
        assert name_of(m, f"h{i}.example.com", "/a") == "any"
        assert name_of(m, f"h{i}.other.org", "/w") is None
        assert name_of(m, "api.example.com", "/w") == "exact"
    assert len(m._chains) <= 1 + limit


def test_overlong_hosts_are_matched_but_not_cached() -> None:
    m = RouteMatcher([rule("wild", "/", hosts=("*.example.com",))])
    host = "a" * 1000 + ".example.com"
    assert name_of(m, host, "/") == "wild"
    assert host not in m._chains


# --- validation -------------------------------------------------------------------------------------------


def test_bad_regex_raises_value_error_naming_the_rule() -> None:
    with pytest.raises(ValueError, match="broken-route") as info:
        RouteMatcher([rule("ok", "/"), rule("broken-route", "/users/(\\d+", "regex")])
    assert isinstance(info.value.__cause__, re.error)


@pytest.mark.parametrize("path_type", ["glob", "Exact", "", "PREFIX"])
def test_bad_path_type_raises_value_error_naming_the_rule(path_type: str) -> None:
    with pytest.raises(ValueError, match="weird-route"):
        RouteMatcher([rule("weird-route", "/", path_type)])


@pytest.mark.parametrize("host", ["", "a.*.com", "*example.com", "**.example.com", "*.", "api.example.*"])
def test_bad_host_pattern_raises_value_error_naming_the_rule(host: str) -> None:
    with pytest.raises(ValueError, match="host-route"):
        RouteMatcher([rule("host-route", "/", hosts=(host,))])


def test_string_instead_of_tuple_is_rejected() -> None:
    with pytest.raises(ValueError, match="str-hosts"):
        RouteMatcher([rule("str-hosts", "/", hosts="api.example.com")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="str-methods"):
        RouteMatcher([RouteRule("str-methods", (), "/", "prefix", methods="GET")])  # type: ignore[arg-type]


# --- properties against a brute-force reference ------------------------------------------------------------


def reference_match(
    rules: list[RouteRule], host: str, path: str, method: str, headers: dict[str, str]
) -> RouteRule | None:
    """Deliberately simple: score every matching rule with a precedence key and take the smallest."""

    def host_key(r: RouteRule) -> tuple[int, int] | None:
        keys = []
        for pattern in r.hosts or ("*",):
            if pattern == "*":
                keys.append((2, 0))
            elif pattern.startswith("*."):
                suffix = pattern[1:]
                if host.endswith(suffix) and len(host) > len(suffix):
                    keys.append((1, -len(suffix)))
            elif pattern == host:
                keys.append((0, 0))
        return min(keys, default=None)

    def path_key(r: RouteRule) -> tuple[int, int] | None:
        if r.path_type == "exact":  # the path itself, then with one trailing slash more
            return (0, 0) if path == r.path else (0, 1) if len(path) > 1 and path == r.path + "/" else None
        if r.path_type == "prefix":
            return (1, -len(r.path)) if path.startswith(r.path) else None
        return (2, 0) if re.fullmatch(r.path, path) else None

    best: tuple | None = None
    best_rule: RouteRule | None = None
    for r in rules:
        hk = host_key(r)
        pk = path_key(r)
        if hk is None or pk is None:
            continue
        if r.methods and method not in r.methods:
            continue
        if any(headers.get(n) != v for n, v in r.headers):
            continue
        key = (hk, pk, -r.priority, -len(r.headers), 0 if r.methods else 1, r.name)
        if best is None or key < best:
            best, best_rule = key, r
    return best_rule


RULE_HOSTS = ["a.com", "x.a.com", "y.x.a.com", "b.com", "*.a.com", "*.x.a.com", "*.com", "*"]
REQUEST_HOSTS = [
    "a.com",
    "x.a.com",
    "y.x.a.com",
    "z.a.com",
    "z.y.x.a.com",
    "b.com",
    "c.org",
    "",
    ".a.com",
    "com",
]
PLAIN_PATHS = ["", "/", "/a", "/ab", "/a/", "/a/b", "/a/b/c", "/b", "/abc", "/a/c"]
REGEX_PATHS = ["/a.*", "/[ab]+", "/a/b", ".*", r"/a/\w+", "(/a)?/b", "/a|/b", "/a/b/c?"]
REQUEST_PATHS = [
    "",
    "/",
    "/a",
    "/ab",
    "/a/",
    "/a/b",
    "/a/b/c",
    "/a/b/cd",
    "/abc",
    "/b",
    "/c",
    "/a/bc",
    "/a/c",
]
HEADER_CONDS = [("x-v", "1"), ("x-v", "2"), ("x-t", "a")]
METHODS = ["GET", "POST", "PUT"]
# Pre-built combinations, so each field of a rule costs hypothesis a single draw.
HOST_SETS = [(), (), *((h,) for h in RULE_HOSTS), *itertools.combinations(RULE_HOSTS, 2)]
METHOD_SETS = [frozenset(), frozenset(), *(frozenset(c) for n in (1, 2) for c in itertools.combinations(METHODS, n))]
HEADER_SETS = [(), (), *((c,) for c in HEADER_CONDS), *itertools.product(HEADER_CONDS, repeat=2)]
NAMES = ["a", "b", "c", "d", "e", "f", "g", "h", "aa", "ab", "ba", "bb", "ca", "da", "ea", "fa"]
REQUEST_HEADERS = [{}, *({"x-v": v} for v in "12"), *({"x-t": t} for t in "aA"), {"x-v": "1", "x-t": "a"}]

Request = tuple[str, str, str, dict[str, str]]


@st.composite
def rule_bodies(draw: st.DrawFn) -> dict:
    path_type = draw(st.sampled_from(["exact", "prefix", "prefix", "regex"]))
    return {
        "hosts": draw(st.sampled_from(HOST_SETS)),
        "path": draw(st.sampled_from(REGEX_PATHS if path_type == "regex" else PLAIN_PATHS)),
        "path_type": path_type,
        "methods": draw(st.sampled_from(METHOD_SETS)),
        "headers": draw(st.sampled_from(HEADER_SETS)),
        "priority": draw(st.sampled_from([0, 0, 1, -1])),
    }


@st.composite
def rule_sets(draw: st.DrawFn) -> list[RouteRule]:
    bodies = draw(st.lists(rule_bodies(), max_size=12))
    if bodies:
        # Siblings: same hosts and path, other tie-break fields, so rule 4 decides often.
        for _ in range(draw(st.integers(0, 3))):
            sibling = dict(draw(st.sampled_from(bodies)))
            sibling["methods"] = draw(st.sampled_from(METHOD_SETS))
            sibling["headers"] = draw(st.sampled_from(HEADER_SETS))
            sibling["priority"] = draw(st.sampled_from([0, 0, 1]))
            bodies.append(sibling)
    # Unique names in an order independent of the input order.
    names = draw(st.permutations(NAMES))
    return [RouteRule(name=n, **b) for n, b in zip(names, bodies, strict=False)]


@st.composite
def random_requests(draw: st.DrawFn) -> Request:
    return (
        draw(st.sampled_from(REQUEST_HOSTS)),
        draw(st.sampled_from(REQUEST_PATHS)),
        draw(st.sampled_from(["GET", "POST", "DELETE"])),
        draw(st.sampled_from(REQUEST_HEADERS)),
    )


@st.composite
def request_aimed_at(draw: st.DrawFn, r: RouteRule) -> Request:
    """A request that `r` itself would accept (when its conditions are satisfiable), so that
    many rules collide and the tie-breaks and level fallbacks are exercised."""
    pattern = draw(st.sampled_from(r.hosts or ("*",)))
    if pattern == "*":
        host = draw(st.sampled_from(REQUEST_HOSTS))
    elif pattern.startswith("*."):
        host = draw(st.sampled_from(["z", "x", "y.x", ""])) + pattern[1:]  # "" gives a non-match
    else:
        host = pattern
    if r.path_type == "exact":
        path = r.path
    elif r.path_type == "prefix":
        path = r.path + draw(st.sampled_from(["", "", "b", "/c", "/b/c"]))
    else:
        path = draw(st.sampled_from(REQUEST_PATHS))
    method = draw(st.sampled_from(sorted(r.methods))) if r.methods else draw(st.sampled_from(METHODS))
    headers = dict(r.headers)
    headers.update(draw(st.sampled_from(REQUEST_HEADERS)))  # may also break one of r's conditions
    return host, path, method, headers


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[RouteRule], list[Request]]:
    rules = draw(rule_sets())
    reqs = draw(st.lists(random_requests(), min_size=1, max_size=4))
    if rules:
        for _ in range(draw(st.integers(1, 6))):
            reqs.append(draw(request_aimed_at(draw(st.sampled_from(rules)))))
    return rules, reqs


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios())
def test_matches_brute_force_reference(scenario: tuple[list[RouteRule], list[Request]]) -> None:
    rules, reqs = scenario
    m = RouteMatcher(rules)
    assert len(m) == len(rules)
    for host, path, method, headers in reqs:
        expected = reference_match(rules, host, path, method, headers)
        got = m.match(host, path, method, headers)
        assert got is expected, (host, path, method, headers)


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(), data=st.data())
def test_result_does_not_depend_on_rule_order(
    scenario: tuple[list[RouteRule], list[Request]], data: st.DataObject
) -> None:
    rules, reqs = scenario
    shuffled = data.draw(st.permutations(rules))
    m1, m2 = RouteMatcher(rules), RouteMatcher(shuffled)
    for host, path, method, headers in reqs:
        assert m1.match(host, path, method, headers) is m2.match(host, path, method, headers)


@settings(max_examples=100, deadline=None)
@given(
    prefixes=st.lists(st.text("ab/", max_size=6), max_size=25),
    path=st.text("ab/", max_size=8),
)
def test_prefix_index_finds_longest_prefix(prefixes: list[str], path: str) -> None:
    rules = [rule(f"p{i:02d}", p) for i, p in enumerate(prefixes)]
    expected = reference_match(rules, "h", path, "GET", {})
    assert RouteMatcher(rules).match("h", path, "GET", {}) is expected


def test_an_exact_path_also_matches_its_trailing_slash_form() -> None:
    """`/secret` guards `/secret/` too (frameworks serve both alike); an exact rule naming
    `/secret/` itself still wins for that path, and prefixes do not change."""
    m = RouteMatcher(
        [
            RouteRule("all", (), "/", "prefix"),
            RouteRule("secret", (), "/secret", "exact"),
            RouteRule("other", (), "/other", "exact"),
            RouteRule("other-slash", (), "/other/", "exact"),
        ]
    )
    assert m.match("h", "/secret", "GET", {}).name == "secret"  # type: ignore[union-attr]
    assert m.match("h", "/secret/", "GET", {}).name == "secret"  # type: ignore[union-attr]
    assert m.match("h", "/secret//", "GET", {}).name == "all"  # type: ignore[union-attr]  # one slash only
    assert m.match("h", "/secret/x", "GET", {}).name == "all"  # type: ignore[union-attr]
    assert m.match("h", "/other/", "GET", {}).name == "other-slash"  # type: ignore[union-attr]
    assert m.match("h", "/", "GET", {}).name == "all"  # type: ignore[union-attr]
