"""The tunnel server's claim book (`dataplane.tunnel.registry`): who serves which port, host or secret name.

A hypothesis state machine claims and releases random proxies (tcp/udp ports, http domains and
locations, https domains, secret names; grouped or not, matching group keys or not) against a
plain model of the rules, and after every step checks that each key is held by one group whose
members agree on group name, key and type. Lookups (`find_http`, `find_https`) are compared with
a direct reading of the documented precedence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from dataplane.tunnel.registry import ClaimError, Group, ProxyRef, ProxyRegistry, _domain_match
from fluxcommon.netaddr import port_in_ranges
from fluxcommon.tunnel.protocol.proxies import ProxyOptions

ALLOW = [(10000, 10003), (20000, 20001)]
SUBDOMAIN_HOST = "tunnel.test"


@dataclass
class Session:
    serial: int


def make_ref(name: str, proxy_type: str, **options: object) -> ProxyRef:
    return ProxyRef(Session(1), name, proxy_type, ProxyOptions(**options))  # type: ignore[arg-type]


def claim(registry: ProxyRegistry, ref: ProxyRef, port: int = 0) -> list[Group]:
    return registry.claim(ref, registry.keys_for(ref, port))


# -- the state machine ---------------------------------------------------------------------

Key = tuple[str, ...]

proxy_types = st.sampled_from(["tcp", "udp", "http", "https", "stcp", "xtcp"])
group_names = st.sampled_from(["", "", "g1", "g2"])
group_keys = st.sampled_from(["", "k1"])
ports = st.sampled_from([10000, 10001, 10003, 20000])
domains = st.lists(st.sampled_from(["a.test", "b.test", "*.test", "A.test"]), min_size=0, max_size=3)
subdomains = st.sampled_from(["", "", "a", "x"])
locations = st.lists(st.sampled_from(["", "/", "/api", "/api/v1"]), max_size=2)
secret_names = st.sampled_from(["s1", "s2"])


class ClaimBook(RuleBasedStateMachine):
    live = Bundle("live")

    def __init__(self) -> None:
        super().__init__()
        self.registry = ProxyRegistry(ALLOW, SUBDOMAIN_HOST)
        self.held: dict[Key, list[ProxyRef]] = {}  # the model: key -> members in claim order
        self.keys_of: dict[int, list[Key]] = {}
        self.serial = 0

    def _expected_refusal(self, ref: ProxyRef, keys: list[Key]) -> str | None:
        for key in keys:
            members = self.held.get(key)
            if not members:
                continue
            first = members[0]
            if not ref.group or ref.group != first.group:
                return f"is already served by proxy {first.name!r}"
            if first.type != ref.type:
                return f"serves {first.type} proxies, not {ref.type}"
            if first.options.group_key != ref.options.group_key:
                return "the group key does not match"
        return None

    @rule(
        target=live,
        proxy_type=proxy_types,
        group=group_names,
        group_key=group_keys,
        port=ports,
        custom_domains=domains,
        subdomain=subdomains,
        locs=locations,
        secret=secret_names,
    )
    def claim(
        self,
        proxy_type: str,
        group: str,
        group_key: str,
        port: int,
        custom_domains: list[str],
        subdomain: str,
        locs: list[str],
        secret: str,
    ) -> object:
        self.serial += 1
        options: dict[str, object] = {"group": group, "group_key": group_key if group else ""}
        if proxy_type in ("http", "https"):
            options["custom_domains"] = tuple(custom_domains)
            options["subdomain"] = subdomain
            if proxy_type == "http":
                options["locations"] = tuple(locs)
        name = secret if proxy_type in ("stcp", "xtcp") else f"p{self.serial}"
        ref = make_ref(name, proxy_type, **options)
        keys = self.registry.keys_for(ref, port)
        assert len(keys) == len(set(keys)), "a proxy never claims one key twice"
        expected = self._expected_refusal(ref, keys)
        before = {k: list(g.members) for k, g in self.registry.groups.items()}
        if expected is not None:
            with pytest.raises(ClaimError) as info:
                self.registry.claim(ref, keys)
            assert expected in str(info.value)
            after = {k: list(g.members) for k, g in self.registry.groups.items()}
            assert after == before, "a refused claim changes nothing"
            return None
        created = self.registry.claim(ref, keys)
        assert {g.key for g in created} == {k for k in keys if not self.held.get(k)}
        for key in keys:
            self.held.setdefault(key, []).append(ref)
        self.keys_of[id(ref)] = keys
        return ref

    @rule(ref=consumes(live))
    def release(self, ref: ProxyRef | None) -> None:
        if ref is None:
            return
        emptied = self.registry.release(ref)
        expected_empty = []
        for key in self.keys_of.pop(id(ref)):
            self.held[key].remove(ref)
            if not self.held[key]:
                del self.held[key]
                expected_empty.append(key)
        assert sorted(g.key for g in emptied) == sorted(expected_empty)
        assert all(not g.members for g in emptied)
        assert self.registry.release(ref) == [], "releasing twice is a no-op"

    @rule(proto=st.sampled_from(["tcp", "udp"]), seed=st.integers(0, 2**32), count=st.integers(1, 10))
    def free_ports(self, proto: str, seed: int, count: int) -> None:
        out = self.registry.free_port_candidates(proto, count, random.Random(seed))
        assert len(out) <= count
        assert len(out) == len(set(out))
        for port in out:
            assert port_in_ranges(port, ALLOW)
            assert (proto, str(port)) not in self.held

    @invariant()
    def groups_are_consistent(self) -> None:
        groups = self.registry.groups
        assert set(groups) == set(self.held)
        for key, group in groups.items():
            assert group.key == key
            assert group.members == self.held[key]
            assert group.members, "empty groups are dropped"
            for member in group.members:
                assert member.type == group.type
                assert member.group == group.group
                assert member.options.group_key == group.group_key
            if not group.group:
                assert len(group.members) == 1, "an ungrouped key has one holder"


TestClaimBook = ClaimBook.TestCase
TestClaimBook.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


# -- claims, by example --------------------------------------------------------------------


def test_second_ungrouped_claimant_is_refused_naming_the_holder() -> None:
    registry = ProxyRegistry(ALLOW)
    claim(registry, make_ref("first", "tcp"), 10000)
    with pytest.raises(ClaimError, match=r"remote_port: tcp port 10000 is already served by proxy 'first'"):
        claim(registry, make_ref("second", "tcp"), 10000)
    claim(registry, make_ref("other-proto", "udp"), 10000)  # udp 10000 is another key


def test_group_members_must_share_type_and_key() -> None:
    registry = ProxyRegistry(ALLOW)
    claim(registry, make_ref("a", "tcp", group="web", group_key="k"), 10001)
    with pytest.raises(ClaimError, match="group key does not match"):
        claim(registry, make_ref("b", "tcp", group="web", group_key="other"), 10001)
    with pytest.raises(ClaimError, match="already served by proxy 'a'"):
        claim(registry, make_ref("c", "tcp", group="else", group_key="k"), 10001)
    created = claim(registry, make_ref("d", "tcp", group="web", group_key="k"), 10001)
    assert created == []
    group = registry.port_group("tcp", 10001)
    assert group is not None and [m.name for m in group.members] == ["a", "d"]


def test_release_frees_the_key_only_with_the_last_member() -> None:
    registry = ProxyRegistry(ALLOW)
    a = make_ref("a", "http", custom_domains=("x.test",), group="g")
    b = make_ref("b", "http", custom_domains=("x.test",), group="g")
    (group,) = claim(registry, a)
    claim(registry, b)
    assert registry.release(a) == []
    assert registry.find_http("x.test", "/") is group
    assert registry.release(b) == [group]
    assert registry.find_http("x.test", "/") is None
    claim(registry, make_ref("c", "http", custom_domains=("x.test",)))  # free again


def test_subdomain_needs_a_subdomain_host() -> None:
    with pytest.raises(ClaimError, match="subdomain"):
        ProxyRegistry(ALLOW).keys_for(make_ref("a", "http", subdomain="app"))
    keys = ProxyRegistry(ALLOW, "Tunnel.Test.").keys_for(make_ref("a", "http", subdomain="app"))
    assert keys == [("http", "app.tunnel.test", "/")]


def test_duplicate_domains_and_locations_claim_each_key_once() -> None:
    registry = ProxyRegistry(ALLOW, SUBDOMAIN_HOST)
    ref = make_ref(
        "a", "http", custom_domains=("App.tunnel.test", "app.tunnel.test"), subdomain="app", locations=("", "/")
    )
    assert registry.keys_for(ref) == [("http", "app.tunnel.test", "/")]
    (group,) = claim(registry, ref)
    assert group.members == [ref]


def test_check_port_names_the_allowed_ranges() -> None:
    registry = ProxyRegistry([(10000, 10003), (20000, 20000)])
    registry.check_port(10003)
    with pytest.raises(
        ClaimError, match=r"remote_port: 9999 is not allowed on this node \(allowed: 10000-10003,20000\)"
    ):
        registry.check_port(9999)


def test_free_port_candidates_skip_claimed_ports_and_can_run_out() -> None:
    registry = ProxyRegistry([(10000, 10002)])
    claim(registry, make_ref("a", "tcp"), 10001)
    found = set(registry.free_port_candidates("tcp", 10, random.Random(1)))
    assert found == {10000, 10002}
    assert 10001 in registry.free_port_candidates("udp", 10, random.Random(1))
    for port in (10000, 10002):
        claim(registry, make_ref(f"p{port}", "tcp"), port)
    assert registry.free_port_candidates("tcp", 10, random.Random(1)) == []
    assert ProxyRegistry([]).free_port_candidates("tcp") == []


# -- lookups -------------------------------------------------------------------------------


def test_find_http_prefers_exact_domain_then_longest_wildcard_then_longest_location() -> None:
    registry = ProxyRegistry(ALLOW)
    refs = {
        name: make_ref(name, "http", custom_domains=(domain,), locations=locs)
        for name, domain, locs in [
            ("exact", "a.b.test", ("/",)),
            ("exact-api", "a.b.test", ("/api",)),
            ("wild", "*.test", ("/", "/deep/er")),
            ("wild-long", "*.b.test", ("/",)),
        ]
    }
    for ref in refs.values():
        claim(registry, ref)

    def served(host: str, path: str) -> str | None:
        group = registry.find_http(host, path)
        return group.members[0].name if group else None

    assert served("a.b.test", "/") == "exact"
    assert served("A.B.TEST:8080", "/api/x") == "exact-api"
    assert served("a.b.test.", "/api") == "exact-api"
    assert served("a.b.test", "/apix") == "exact"  # locations are whole path segments
    assert served("a.b.test", "/deep/er") == "exact"  # an exact domain beats a longer wildcard location
    assert served("c.b.test", "/deep/er") == "wild-long"  # longest wildcard first
    assert served("c.test", "/deep/er/x") == "wild"
    assert served("b.test", "/") == "wild"
    assert served("test", "/") is None
    assert served("other.example", "/") is None


def test_find_https_prefers_exact_then_longest_wildcard() -> None:
    registry = ProxyRegistry(ALLOW)
    for name, domain in [("exact", "a.b.test"), ("wild", "*.test"), ("wild-long", "*.b.test")]:
        claim(registry, make_ref(name, "https", custom_domains=(domain,)))

    def served(host: str) -> str | None:
        group = registry.find_https(host)
        return group.members[0].name if group else None

    assert served("A.b.test.") == "exact"
    assert served("c.b.test") == "wild-long"
    assert served("x.y.test") == "wild"
    assert served("test") is None
    assert served("b.test.example") is None


def _location_matches(location: str, path: str) -> bool:
    return location == "/" or path == location or path.startswith(location.rstrip("/") + "/")


http_domains = st.sampled_from(["a.b.test", "b.test", "*.b.test", "*.test", "x.test"])
http_locations = st.sampled_from(["/", "/api", "/api/v1", "/static/"])


@settings(max_examples=150, deadline=None)
@given(
    claims=st.lists(st.tuples(http_domains, http_locations), unique=True, max_size=8),
    host=st.sampled_from(["a.b.test", "c.b.test", "b.test", "x.test", "y.test", "test", "z.example"]),
    path=st.sampled_from(["/", "/api", "/api/", "/api/v1/x", "/apiv", "/static", "/static/a.css"]),
)
def test_find_http_follows_the_documented_precedence(claims: list[tuple[str, str]], host: str, path: str) -> None:
    registry = ProxyRegistry(ALLOW)
    for i, (domain, location) in enumerate(claims):
        claim(registry, make_ref(f"p{i}", "http", custom_domains=(domain,), locations=(location,)))
    candidates = [
        (not domain.startswith("*."), len(domain), len(location), domain, location)
        for domain, location in claims
        if _domain_match(domain, host) and _location_matches(location, path)
    ]
    found = registry.find_http(host, path)
    if not candidates:
        assert found is None
        return
    *_, domain, location = max(candidates)
    assert found is not None and found.key == ("http", domain, location)


@settings(max_examples=100, deadline=None)
@given(
    claims=st.lists(st.sampled_from(["a.b.test", "b.test", "*.b.test", "*.test", "*.a.b.test"]), unique=True),
    host=st.sampled_from(["a.b.test", "c.b.test", "b.test", "x.a.b.test", "test", "y.test"]),
)
def test_find_https_follows_the_documented_precedence(claims: list[str], host: str) -> None:
    registry = ProxyRegistry(ALLOW)
    for i, domain in enumerate(claims):
        claim(registry, make_ref(f"p{i}", "https", custom_domains=(domain,)))
    candidates = [(not d.startswith("*."), len(d), d) for d in claims if _domain_match(d, host)]
    found = registry.find_https(host)
    if not candidates:
        assert found is None
    else:
        assert found is not None and found.key == ("https", max(candidates)[2])


# -- round robin ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(members=st.integers(1, 8), rounds=st.integers(1, 6), warmup=st.integers(0, 20))
def test_group_pick_is_round_robin_and_fair(members: int, rounds: int, warmup: int) -> None:
    group = Group(("tcp", "10000"), "tcp", "g", "")
    group.members = [make_ref(f"m{i}", "tcp", group="g") for i in range(members)]
    for _ in range(warmup):
        group.pick()
    picks = [group.pick() for _ in range(members * rounds)]
    for member in group.members:
        assert picks.count(member) == rounds
    # consecutive windows of `members` picks hold every member once
    for start in range(0, len(picks), members):
        assert len({id(p) for p in picks[start : start + members]}) == members


def test_group_pick_survives_members_leaving() -> None:
    group = Group(("tcp", "10000"), "tcp", "g", "")
    assert group.pick() is None
    group.members = [make_ref(f"m{i}", "tcp", group="g") for i in range(3)]
    for _ in range(5):
        group.pick()
    group.members.pop()
    picks = [group.pick() for _ in range(4)]
    assert all(p in group.members for p in picks)
    assert picks.count(group.members[0]) == picks.count(group.members[1]) == 2
