"""Tunnel users on a node: allowances, one owner per domain and group, gateway routes kept
(`dataplane.tunnel.ownership`, `registry`, `TunnelServer.claim`, `vhost.overlay`).

As in test_tunnel_vhost.py, the tunnel server is real but never binds: agents are real
`AgentConn`s on an in-memory transport, logged in as a tunnel user (or with a shared token) the
way an accepted LOGIN leaves them, and proxies are claimed with `TunnelServer.claim`.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.config.compiler import EndpointRegistry, compile_snapshot
from dataplane.tunnel.agentconn import AgentConn
from dataplane.tunnel.ownership import Tenancy, covers, gateway_hosts, shadowing_route
from dataplane.tunnel.registry import ClaimError, ProxyRef
from dataplane.tunnel.server import TunnelMetrics, TunnelServer
from dataplane.tunnel.vhost import overlay, serves
from flux.v1 import config_pb2 as pb
from fluxcommon.tunnel.protocol.proxies import ProxyOptions, parse_new_proxy
from fluxcommon.tunnel.transport.pipe import AllOf, bandwidth, combined

VHOST = 18090
USERS = [
    pb.TunnelUser(name="office", token="t-office", domains=["*.office.example.com"], allow_ports="6000-6009"),
    pb.TunnelUser(name="lab", token="t-lab", domains=["*.example.com"], allow_ports="6010-6019", max_proxies=2),
]


def make_server(**spec: Any) -> TunnelServer:
    fields: dict[str, Any] = {
        "name": "t1",
        "bind_address": "127.0.0.1",
        "vhost_http_port": VHOST,
        "subdomain_host": "tunnel.test",
        "allow_ports": "6000-6099",
        "tokens": ["shared"],
        "users": USERS,
    }
    return TunnelServer(pb.Tunnel(**{**fields, **spec}), None, TunnelMetrics())


def login(server: TunnelServer, name: str, *, user: str | None = None, token: str = "") -> AgentConn:
    """An agent logged in as tunnel user `name` (default), or with the shared token (user="")."""
    user = name if user is None else user
    transport, _ = trio.testing.memory_stream_pair()
    conn = AgentConn(server, transport, "198.51.100.7:40000", True)
    conn.session.name, conn.session.user = name, user
    conn.session.token = token or (f"t-{user}" if user else "shared")
    conn.name, conn.run_id, conn.logged_in = name, f"run-{name}-{len(server.conns)}", True
    server.conns.add(conn)
    server.attach(conn, reconnect=False)
    return conn


def serve(conn: AgentConn, name: str, proxy_type: str = "http", **options: Any) -> ProxyRef:
    request = parse_new_proxy(name, proxy_type, options)
    ref = ProxyRef(conn, request.name, request.proxy_type, request.options, since=time.time(), owner=conn.user)
    trio.run(conn.server.claim, ref)
    conn.refs[ref.name] = ref
    return ref


def refused(conn: AgentConn, name: str, proxy_type: str = "http", **options: Any) -> str:
    with pytest.raises(ClaimError) as info:
        serve(conn, name, proxy_type, **options)
    return str(info.value)


# -- coverage ------------------------------------------------------------------------------

labels = st.sampled_from(["a", "b", "crm", "office", "x-1"])
names = st.lists(labels, min_size=1, max_size=4).map(lambda parts: ".".join(parts) + ".example.com")


def _hosts(pattern: str, universe: list[str]) -> set[str]:
    if pattern.startswith("*."):
        return {h for h in universe if h.endswith(pattern[1:])}
    return {pattern} if pattern in universe else set()


@settings(max_examples=300, deadline=None)
@given(pattern=names, host=names, p_wild=st.booleans(), h_wild=st.booleans())
def test_covers_means_every_name_of_the_claim_is_a_name_of_the_pattern(
    pattern: str, host: str, p_wild: bool, h_wild: bool
) -> None:
    p = f"*.{pattern}" if p_wild else pattern
    h = f"*.{host}" if h_wild else host
    # a finite model: every name under either, a level deeper too
    universe = sorted({pattern, host, f"z.{pattern}", f"z.{host}", f"y.z.{pattern}", f"y.z.{host}"})
    claim = _hosts(h, universe)
    assert covers(p, h) is (bool(claim) and claim <= _hosts(p, universe)), (p, h)


def test_covers_examples() -> None:
    assert covers("*.office.example.com", "crm.office.example.com")
    assert covers("*.office.example.com", "*.x.office.example.com")
    assert covers("*.office.example.com", "*.office.example.com")
    assert not covers("*.office.example.com", "office.example.com")
    assert not covers("crm.office.example.com", "*.office.example.com")
    assert covers("CRM.Example.com.", "crm.example.com")


# -- allowances ----------------------------------------------------------------------------


def test_tenancy_names_ports_and_domains() -> None:
    tenancy = Tenancy(make_server(domains=["*.shared.example.com"]).spec)
    assert tenancy.check_name("office", "office.web") is None
    assert "registers proxies named lab.NAME only" in (tenancy.check_name("lab", "office.echo-tcp") or "x")
    assert "namespace of tunnel user 'office'" in (tenancy.check_name("", "office.web") or "x")
    assert tenancy.check_name("", "build.web") is None and tenancy.check_name("", "web") is None
    assert tenancy.check_port("office", 6005) is None
    assert "not among the ports of user 'office'" in (tenancy.check_port("office", 6010) or "x")
    assert tenancy.check_port("", 6010) is None  # shared-token agents: the tunnel's allow_ports (the registry's)
    assert tenancy.check_domain("office", "crm.office.example.com") is not None  # outside the tunnel's domains
    tenancy = Tenancy(make_server().spec)
    assert tenancy.check_domain("office", "crm.office.example.com") is None
    assert "not among the domains of user 'office'" in (tenancy.check_domain("office", "crm.lab.example.org") or "x")
    assert tenancy.check_domain("", "anything.example.org") is None  # single tenant, no tunnel domains
    bounded = Tenancy(make_server(domains=["*.shared.example.com"]).spec)
    assert "outside this tunnel's domains" in (bounded.check_domain("", "anything.example.org") or "x")
    assert bounded.check_domain("", "app.tunnel.test") is None  # a subdomain of subdomain_host
    no_domains = Tenancy(make_server(users=[pb.TunnelUser(name="ci", token="t")]).spec)
    assert "the domains of user 'ci' (none)" in (no_domains.check_domain("ci", "ci.tunnel.test") or "x")


def test_a_user_cannot_take_another_users_domain_location_or_wildcard() -> None:
    server = make_server()
    office, lab = login(server, "office"), login(server, "lab")
    serve(office, "office.crm", custom_domains=["crm.office.example.com"])
    for options in (
        {"custom_domains": ["crm.office.example.com"]},  # the same domain
        {"custom_domains": ["crm.office.example.com"], "locations": ["/admin"]},  # a location under it
        {"custom_domains": ["crm.office.example.com"], "group": "crm"},  # joining with a group
    ):
        assert "already served by another tunnel user" in refused(lab, "lab.crm", **options)
    serve(office, "office.all", custom_domains=["*.office.example.com"])
    # covered by office's wildcard: as specific or more, it would take office's traffic
    assert "already served by another tunnel user" in refused(lab, "lab.x", custom_domains=["x.office.example.com"])
    # lab's own wildcard over a larger zone is fine: office's names stay more specific
    serve(lab, "lab.all", custom_domains=["*.example.com"])
    # https by SNI is the same name: refused too
    server.spec.vhost_https_port = 0  # (no https port here: the owner check comes first)
    with pytest.raises(ClaimError, match="already served by another tunnel user"):
        server.registry.can_claim(
            ProxyRef(lab, "lab.s", "https", ProxyOptions(custom_domains=("crm.office.example.com",)), owner="lab"),
            [("https", "crm.office.example.com")],
        )
    # office itself adds a location on its own domain
    serve(office, "office.admin", custom_domains=["crm.office.example.com"], locations=["/admin"])


def test_groups_and_ports_are_never_shared_between_owners() -> None:
    server = make_server()
    office, lab = login(server, "office"), login(server, "lab")
    a = ProxyRef(office, "office.svc", "tcp", ProxyOptions(remote_port=6005, group="g"), owner="office")
    server.registry.claim(a, [("tcp", "6005")])
    b = ProxyRef(lab, "lab.svc", "tcp", ProxyOptions(remote_port=6005, group="g"), owner="lab")
    with pytest.raises(ClaimError, match="another tunnel user"):
        server.registry.can_claim(b, [("tcp", "6005")])
    c = ProxyRef(office, "office.svc2", "tcp", ProxyOptions(remote_port=6005, group="g"), owner="office")
    server.registry.can_claim(c, [("tcp", "6005")])  # the same user joins its own group


def test_user_ports_names_and_max_proxies() -> None:
    server = make_server()
    lab = login(server, "lab")
    assert "not among the ports of user 'lab'" in refused(lab, "lab.p", "tcp", remote_port=6005)
    assert "registers proxies named lab.NAME only" in refused(lab, "office.echo-tcp", "tcp", remote_port=6011)
    serve(lab, "lab.a", custom_domains=["a.example.com"])
    serve(login(server, "lab"), "lab.b", custom_domains=["b.example.com"])  # a second agent of the same user
    assert "max_proxies: user 'lab' already has 2 proxies" in refused(lab, "lab.c", custom_domains=["c.example.com"])
    shared = login(server, "build-7", user="")
    assert "namespace of tunnel user 'office'" in refused(shared, "office.web", custom_domains=["w.example.org"])
    serve(shared, "build-7.web", custom_domains=["w.example.org"])  # shared tokens: single tenant as before


def test_random_ports_come_from_the_users_own_range() -> None:
    server = make_server()
    office = login(server, "office")
    ports = server.registry.free_port_candidates("tcp", ranges=server.tenancy.allowance("office").ports)
    assert ports and all(6000 <= p <= 6009 for p in ports)
    assert office.user == "office"


# -- gateway routes ------------------------------------------------------------------------


def _shared_snapshot() -> pb.Snapshot:
    return pb.Snapshot(
        version="3",
        listeners=[
            pb.Listener(name="web", protocol=pb.PROTOCOL_HTTP, address="0.0.0.0", port=VHOST),
            pb.Listener(name="other", protocol=pb.PROTOCOL_HTTP, address="0.0.0.0", port=VHOST + 1),
        ],
        clusters=[pb.Cluster(name="api", endpoints=[pb.Endpoint(address="10.0.0.1", port=80, weight=1)])],
        routes=[
            pb.Route(name="api", listener="web", hosts=["api.example.com"], path="/", cluster="api"),
            pb.Route(name="wild", hosts=["*.corp.example.com"], path="/", cluster="api"),
            pb.Route(name="elsewhere", listener="other", hosts=["x.example.com"], path="/", cluster="api"),
            pb.Route(name="catch-all", listener="web", path="/", cluster="api"),
        ],
    )


def test_gateway_hosts_of_a_shared_listener() -> None:
    hosts = gateway_hosts(_shared_snapshot(), VHOST)
    assert hosts == [("api.example.com", "api"), ("*.corp.example.com", "wild")]
    assert gateway_hosts(_shared_snapshot(), VHOST + 1) == [
        ("*.corp.example.com", "wild"),
        ("x.example.com", "elsewhere"),
    ]
    assert gateway_hosts(_shared_snapshot(), VHOST + 2) == []  # no gateway listener there
    assert shadowing_route("a.corp.example.com", hosts) == "wild"
    assert shadowing_route("*.example.com", hosts) is None  # broader: the routes stay more specific


def test_tunnel_domains_do_not_shadow_gateway_routes_unless_the_tunnel_says_so() -> None:
    server = make_server()
    server.gateway_hosts = gateway_hosts(_shared_snapshot(), VHOST)
    lab = login(server, "lab")
    assert "gateway route 'api'" in refused(lab, "lab.api", custom_domains=["api.example.com"])
    assert "gateway route 'wild'" in refused(lab, "lab.w", custom_domains=["x.corp.example.com"])
    serve(lab, "lab.ok", custom_domains=["ok.example.com"])  # the catch-all route does not block it
    # a gateway route added after the claim takes its host back in the node's routes
    snap = _shared_snapshot()
    snap.routes.append(pb.Route(name="late", listener="web", hosts=["ok.example.com"], path="/", cluster="api"))
    assert not [r for r in overlay(snap, [server]).routes if r.name.startswith("tunnel/")]
    free = make_server(vhost_overrides_routes=True)
    free.gateway_hosts = gateway_hosts(_shared_snapshot(), VHOST)
    serve(login(free, "lab"), "lab.api", custom_domains=["api.example.com"])
    full = overlay(_shared_snapshot(), [free])
    compiled = compile_snapshot(full, EndpointRegistry(), lambda *a: object())  # type: ignore[arg-type]
    rule = compiled.config.listeners["web"].matcher.match("api.example.com", "/", "GET", {})
    assert rule is not None and rule.name == "tunnel/t1/api.example.com/"


# -- clusters with `tunnel: NAME` ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "owner", "group", "wanted", "expected"),
    [
        ("office.crm", "office", "", "office.crm", True),
        ("office.crm", "office", "", "crm", False),  # a user's proxy answers to its full name only
        ("lab.crm", "lab", "", "office.crm", False),
        ("office.crm", "office", "pool", "office.pool", True),
        ("lab.crm", "lab", "office.pool", "office.pool", False),
        ("build.crm", "", "", "crm", True),  # shared tokens: as before
        ("x.office.crm", "", "", "office.crm", False),  # but never in a user's namespace
        ("build.crm", "", "office.crm", "office.crm", False),
    ],
)
def test_serves_keeps_users_namespaces(name: str, owner: str, group: str, wanted: str, expected: bool) -> None:
    ref = ProxyRef(None, name, "http", ProxyOptions(custom_domains=("a.b",), group=group), owner=owner)
    assert serves(ref, wanted, {"office", "lab"}) is expected


# -- sessions ------------------------------------------------------------------------------


def test_a_run_id_is_resumed_only_by_the_same_credential() -> None:
    server = make_server()
    office = login(server, "office")
    impostor = login(server, "office", user="", token="shared")  # (refused at login; here: the rule alone)
    assert server.may_resume(office.run_id, impostor) is False
    again = login(server, "office")
    assert server.may_resume(office.run_id, again) is True
    assert server.may_resume("unknown-run", impostor) is True
    # asked during the login, before the connection took the session's name: the session's counts
    transport, _ = trio.testing.memory_stream_pair()
    fresh = AgentConn(server, transport, "198.51.100.8:1", True)
    fresh.session.name, fresh.session.user, fresh.session.token = "office", "office", "t-office"
    assert fresh.name == "" and server.may_resume(office.run_id, fresh) is True


def test_a_changed_token_or_removed_user_closes_its_sessions() -> None:
    server = make_server()
    office, lab, shared = login(server, "office"), login(server, "lab"), login(server, "b", user="")
    server.update(pb.Tunnel(**{**_spec_fields(server), "users": [USERS[0]]}))  # lab removed
    assert not lab.logged_in and office.logged_in and shared.logged_in
    rotated = pb.TunnelUser(name="office", token="t-office-2", domains=["*.office.example.com"])
    server.update(pb.Tunnel(**{**_spec_fields(server), "users": [rotated]}))
    assert not office.logged_in and shared.logged_in
    server.update(pb.Tunnel(**{**_spec_fields(server), "users": [rotated, pb.TunnelUser(name="b", token="t-b")]}))
    assert not shared.logged_in  # its name became a user's: the shared token no longer serves it
    other = login(server, "c", user="")
    server.update(pb.Tunnel(**{**_spec_fields(server), "users": [rotated], "tokens": []}))
    assert not other.logged_in


def _spec_fields(server: TunnelServer) -> dict[str, Any]:
    s = server.spec
    return {
        "name": s.name,
        "bind_address": s.bind_address,
        "vhost_http_port": s.vhost_http_port,
        "subdomain_host": s.subdomain_host,
        "allow_ports": s.allow_ports,
        "tokens": list(s.tokens),
    }


def test_a_users_bandwidth_limit_is_one_bucket_for_all_its_connections() -> None:
    server = make_server(users=[pb.TunnelUser(name="office", token="t", bandwidth_limit=1000)])

    async def main() -> None:
        first, again = server.user_limits("office"), server.user_limits("office")
        assert first is not None and first is again  # every connection of office shares it
        assert server.user_limits("lab") is None and server.user_limits("") is None
        both = combined(bandwidth(4000), first[0])
        assert isinstance(both, AllOf)
        # 2 KiB at once: the proxy's own 4000 B/s bucket would wait 0.26 s, the user's 1000 B/s one 1.02 s
        assert both.take(2048, trio.current_time()) == pytest.approx(1.024, abs=0.01)
        assert combined(None, None) is None and combined(first[1]) is first[1]

    trio.run(main)
