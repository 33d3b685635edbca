"""Sans-IO HTTP route matcher: the data-plane node's hot-path route selection.

What this module owns
---------------------
Turning a set of `RouteRule`s into a pre-indexed `RouteMatcher`, and answering
"which rule handles (host, path, method, headers)?" in time that does not grow
with the number of rules (only with the number of rules that can actually
collide with the request).

What it must not do
-------------------
No I/O and no dependence on trio, grpc, sockets, logging or any other library:
it is a pure, synchronous, in-memory core. A matcher's rules never change after
construction (build a new one to change them); the only state `match` writes is
a bounded host -> host-levels cache, safe to share between tasks and threads.
`match` allocates as little as possible, never scans all rules and never logs.
Header values are fetched lazily, only for candidate rules that have header
conditions, because materialising headers is costly on the hot path.

Inputs
------
`host` arrives lower-cased with any ``:port`` and trailing dot stripped, `path`
is the request path without the query string in its canonical spelling
(`dataplane.http.target`; the compiler gives exact and prefix rules the same
spelling), `method` is upper-case, and `headers` is any
object with ``.get(lower_case_name) -> str | None`` (a dict works). Rule hosts
and header names are lower-cased and methods upper-cased at construction.

Precedence (highest first)
--------------------------
1. Host specificity. A rule's host patterns are exact (``api.example.com``) or
   wildcard (``*.example.com``); an empty ``hosts`` (or the pattern ``*``)
   means any host. Levels, most specific first: the exact host; then
   wildcards, longest suffix first (``*.a.example.com`` before
   ``*.example.com``); then the any-host rules. ``*.example.com`` matches
   ``x.example.com`` and ``y.x.example.com`` but not ``example.com``: at least
   one character must precede the ``.example.com`` suffix.
2. Fallback across host levels (Kong-like, not Envoy-like vhost isolation):
   if no rule of the most specific level matches on path, method and headers,
   the next level is tried, down to the any-host rules.
3. Within a host level: an exact path beats any prefix (an exact path also
   matches the request path with one trailing slash more, ``/secret`` matches
   ``/secret/``, unless another exact rule names ``/secret/`` itself: web
   frameworks commonly serve both alike, so a policy on ``/secret`` must
   guard both); among prefixes the
   longer one wins; prefixes compare characters, not segments, like Envoy
   (``/orders`` matches ``/orders``, ``/orders/1`` and ``/ordersX``); regex
   rules (Python `re`, ``fullmatch`` against the whole path) come after every
   exact and prefix rule.
4. Among rules equally specific by host and path (same host level and same
   exact path, same prefix, or both regex): higher ``priority`` first, then
   more header conditions, then a non-empty method set before an empty one,
   then ``name`` ascending; rules equal even in name keep their input order.
5. A rule matches only if its method set is empty or contains the method, and
   every ``(name, value)`` header condition equals the request header exactly
   (values are case-sensitive).

Index layout
------------
Hosts: a dict of exact hosts, a dict of wildcard suffixes (``.example.com``)
probed by walking the request host's dot-suffixes from longest to shortest, and
one any-host level. Each host maps to its chain of host levels, most specific
first: precomputed for every exact host, computed once and cached for other
hosts (at most HOST_CACHE_SIZE of them, then the cache starts over; hosts longer
than MAX_CACHED_HOST are never cached). Each level holds a dict of exact paths,
a sorted list of distinct prefixes with, for each prefix, the index of its
longest proper prefix in the list (one `bisect` finds the longest matching
prefix, the parent links give the shorter ones), and an ordered tuple of regex
rules. Every candidate list is pre-sorted by rule 4, so `match` returns the
first candidate whose method and header conditions hold. The cost of a regex
lookup grows with the number of regex rules in the visited host levels; exact
and prefix lookups do not depend on the number of rules beyond a logarithmic
`bisect`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["HeaderLookup", "RouteMatcher", "RouteRule"]

PATH_TYPES = frozenset({"exact", "prefix", "regex"})


class HeaderLookup(Protocol):
    """Read access to request headers by lower-case name (a dict works)."""

    def get(self, name: str, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One routing rule; `target` is an opaque payload returned untouched."""

    name: str
    hosts: tuple[str, ...]  # lower-case; "api.example.com" or wildcard "*.example.com"; empty = any host
    path: str
    path_type: str  # "exact" | "prefix" | "regex"
    methods: frozenset[str] = frozenset()  # upper-case; empty = any method
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, exact value); all must match
    priority: int = 0
    target: object = None


_FullMatch = Callable[[str], object]
# A candidate: (methods or None, header conditions or None, rule). Regex candidates
# carry the compiled pattern's `fullmatch` in front.
_Entry = tuple[frozenset[str] | None, tuple[tuple[str, str], ...] | None, RouteRule]
_RegexEntry = tuple[_FullMatch, frozenset[str] | None, tuple[tuple[str, str], ...] | None, RouteRule]
# A prefix node: (prefix, index of its longest proper prefix in the bucket or -1, candidates).
_PrefixNode = tuple[str, int, tuple[_Entry, ...]]


# One host level, indexed by path: (exact path -> candidates, sorted distinct prefixes,
# prefix nodes parallel to them, regex candidates). A tuple, so `match` unpacks it in one step.
_Bucket = tuple[dict[str, tuple[_Entry, ...]], list[str], list[_PrefixNode], tuple[_RegexEntry, ...]]

# Hosts remembered by the host -> host-level chain cache before it is reset, and the longest
# host worth remembering (a DNS name has at most 253 characters), so the cache stays small.
HOST_CACHE_SIZE = 4096
MAX_CACHED_HOST = 255


class RouteMatcher:
    """Index over a fixed set of `RouteRule`s; see the module docstring for the precedence.

    The rules never change after construction (build a new matcher to change them). The only
    state `match` touches is a bounded cache of host -> host levels for hosts that are not an
    exact-host key; losing an entry to a race or a reset only costs recomputing it.
    """

    __slots__ = (
        "_cached",
        "_chains",
        "_count",
        "_default",
        "_static",
        "_wild_max",
        "_wild_min",
        "_wildcards",
    )

    def __init__(self, rules: Iterable[RouteRule]) -> None:
        """Index `rules`; raises ValueError naming the route on a bad path_type, regex or host."""
        # Rule-4 sort key per rule, with the input position as the last tie-break.
        keyed: list[tuple[tuple[int, int, int, str, int], RouteRule, _Entry, _FullMatch | None]] = []
        count = 0
        for position, rule in enumerate(rules):
            count += 1
            entry, fullmatch = _prepare(rule)
            methods, conds = entry[0], entry[1]
            key = (-rule.priority, -len(conds or ()), 0 if methods else 1, rule.name, position)
            keyed.append((key, rule, entry, fullmatch))
        keyed.sort(key=lambda item: item[0])

        exact_hosts: dict[str, _BucketBuilder] = {}
        wildcards: dict[str, _BucketBuilder] = {}
        any_host = _BucketBuilder()
        for _key, rule, entry, fullmatch in keyed:
            for pattern in _host_patterns(rule):
                if pattern == "*":
                    builder = any_host
                elif pattern.startswith("*."):
                    builder = wildcards.setdefault(pattern[1:], _BucketBuilder())
                else:
                    builder = exact_hosts.setdefault(pattern, _BucketBuilder())
                builder.add(rule, entry, fullmatch)

        self._count = count
        self._wildcards: dict[str, _Bucket] = {suffix: b.build() for suffix, b in wildcards.items()}
        # Only dots that start a suffix whose length some wildcard has are worth probing.
        self._wild_max = max(map(len, wildcards), default=0)
        self._wild_min = min(map(len, wildcards), default=0)
        # The chain for a host matching no exact host and no wildcard: just the any-host level.
        self._default: tuple[_Bucket, ...] = (any_host.build(),) if any_host else ()
        # Every exact host's chain is built now; other hosts' chains are cached on first sight.
        self._static: dict[str, tuple[_Bucket, ...]] = {
            host: (builder.build(), *self._fallback_chain(host)) for host, builder in exact_hosts.items()
        }
        self._chains = dict(self._static)
        self._cached = 0

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"<RouteMatcher rules={self._count} exact_hosts={len(self._static)} "
            f"wildcards={len(self._wildcards)} any_host={bool(self._default)}>"
        )

    def match(self, host: str, path: str, method: str, headers: HeaderLookup) -> RouteRule | None:
        """The best rule for the request, or None; see the module docstring for the precedence."""
        chain = self._chains.get(host)
        if chain is None:
            chain = self._chain_for(host)
        # Host levels, most specific first (rules 1, 2); in each: exact path, prefixes longest
        # first, regexes (rule 3); each candidate list is already in rule-4 order. The candidate
        # checks are inlined three times on purpose, to save a Python call per level.
        for exact, keys, nodes, regex in chain:
            entries = exact.get(path)
            if path[-1:] == "/" and len(path) > 1:  # then the exact rules of the path less its slash
                stripped = exact.get(path[:-1])
                if stripped is not None:
                    entries = stripped if entries is None else entries + stripped
            if entries is not None:
                for methods, conds, rule in entries:
                    if methods is not None and method not in methods:
                        continue
                    if conds is not None:
                        for name, value in conds:
                            if headers.get(name) != value:
                                break
                        else:
                            return rule
                        continue
                    return rule
            if keys:
                # The largest prefix <= path; the longest matching prefix is on its parent chain,
                # and once one matches, every ancestor (a shorter prefix of it) matches too.
                index = bisect_right(keys, path) - 1
                while index >= 0:
                    key, parent, entries = nodes[index]
                    if path.startswith(key):
                        while True:
                            for methods, conds, rule in entries:
                                if methods is not None and method not in methods:
                                    continue
                                if conds is not None:
                                    for name, value in conds:
                                        if headers.get(name) != value:
                                            break
                                    else:
                                        return rule
                                    continue
                                return rule
                            if parent < 0:
                                break
                            key, parent, entries = nodes[parent]
                        break
                    index = parent
            for fullmatch, methods, conds, rule in regex:
                if methods is not None and method not in methods:
                    continue
                if fullmatch(path) is None:
                    continue
                if conds is not None:
                    for name, value in conds:
                        if headers.get(name) != value:
                            break
                    else:
                        return rule
                    continue
                return rule
        return None

    def _chain_for(self, host: str) -> tuple[_Bucket, ...]:
        """The host levels for a host that is not an exact-host key; cached (bounded)."""
        chain = self._fallback_chain(host)
        if len(host) <= MAX_CACHED_HOST:
            if self._cached >= HOST_CACHE_SIZE:
                self._chains = dict(self._static)
                self._cached = 0
            self._chains[host] = chain
            self._cached += 1
        return chain

    def _fallback_chain(self, host: str) -> tuple[_Bucket, ...]:
        """The wildcard levels matching `host`, longest suffix first, then the any-host level."""
        wildcards = self._wildcards
        if not wildcards:
            return self._default
        found: list[_Bucket] = []
        # Suffixes start at a dot at index >= 1 (a label must precede them) and have a
        # length between the shortest and longest wildcard suffix.
        n = len(host)
        start = n - self._wild_max
        end = n - self._wild_min + 1
        i = host.find(".", start if start > 1 else 1, end)
        while i != -1:
            bucket = wildcards.get(host[i:])
            if bucket is not None:
                found.append(bucket)
            i = host.find(".", i + 1, end)
        return (*found, *self._default) if found else self._default


class _BucketBuilder:
    """Collects one host level's candidates (already in rule-4 order) and freezes them."""

    __slots__ = ("exact", "prefix", "regex")

    def __init__(self) -> None:
        self.exact: dict[str, list[_Entry]] = {}
        self.prefix: dict[str, list[_Entry]] = {}
        self.regex: list[_RegexEntry] = []

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefix or self.regex)

    def add(self, rule: RouteRule, entry: _Entry, fullmatch: _FullMatch | None) -> None:
        if fullmatch is not None:
            self.regex.append((fullmatch, entry[0], entry[1], entry[2]))
        elif rule.path_type == "exact":
            self.exact.setdefault(rule.path, []).append(entry)
        else:
            self.prefix.setdefault(rule.path, []).append(entry)

    def build(self) -> _Bucket:
        keys = sorted(self.prefix)
        nodes: list[_PrefixNode] = []
        # In sorted order every prefix of a key comes before it, so a stack of the
        # current chain of nested prefixes yields each key's longest proper prefix.
        stack: list[int] = []
        for index, key in enumerate(keys):
            while stack and not key.startswith(keys[stack[-1]]):
                stack.pop()
            nodes.append((key, stack[-1] if stack else -1, tuple(self.prefix[key])))
            stack.append(index)
        exact = {path: tuple(entries) for path, entries in self.exact.items()}
        return (exact, keys, nodes, tuple(self.regex))


def _prepare(rule: RouteRule) -> tuple[_Entry, _FullMatch | None]:
    """Validate `rule`; return its candidate entry and, for a regex rule, its `fullmatch`."""
    if rule.path_type not in PATH_TYPES:
        raise ValueError(f"route {rule.name!r}: path_type {rule.path_type!r} is not exact, prefix or regex")
    if not isinstance(rule.path, str):
        raise ValueError(f"route {rule.name!r}: path must be a string, not {type(rule.path).__name__}")
    fullmatch: _FullMatch | None = None
    if rule.path_type == "regex":
        try:
            fullmatch = re.compile(rule.path).fullmatch
        except re.error as exc:
            raise ValueError(f"route {rule.name!r}: bad regex {rule.path!r}: {exc}") from exc
    if isinstance(rule.methods, str):
        raise ValueError(f"route {rule.name!r}: methods must be a set of strings, not a string")
    methods = frozenset(m.upper() for m in rule.methods) or None
    conds: list[tuple[str, str]] = []
    for condition in rule.headers:
        if isinstance(condition, str) or len(condition) != 2:
            raise ValueError(f"route {rule.name!r}: header conditions must be (name, value) pairs")
        name, value = condition
        conds.append((name.lower(), value))
    return (methods, tuple(conds) or None, rule), fullmatch


def _host_patterns(rule: RouteRule) -> list[str]:
    """The rule's distinct, validated, lower-cased host patterns; ``["*"]`` for any host."""
    if isinstance(rule.hosts, str):
        raise ValueError(f"route {rule.name!r}: hosts must be a tuple of strings, not a string")
    if not rule.hosts:
        return ["*"]
    patterns: dict[str, None] = {}
    for raw in rule.hosts:
        pattern = raw.lower()
        if pattern != "*":
            if not pattern:
                raise ValueError(f"route {rule.name!r}: empty host pattern")
            star = pattern.rfind("*")
            if star > 0 or (star == 0 and (len(pattern) < 3 or pattern[1] != ".")):
                raise ValueError(
                    f"route {rule.name!r}: bad host pattern {raw!r} "
                    "(use 'api.example.com', '*.example.com' or no hosts for any host)"
                )
        patterns[pattern] = None
    return list(patterns)
