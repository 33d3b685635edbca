"""Tunnelled http services as gateway routes (`dataplane.tunnel.vhost`), compiled as the node does.

The tunnel server is real but never binds: agents are real `AgentConn`s on an in-memory
transport, logged in with `TunnelServer.attach`, and their proxies are parsed with
`parse_new_proxy` and claimed with `TunnelServer.claim`, as a NEW_PROXY would be. `overlay`'s
snapshot then goes through the node's own `compile_snapshot`, and requests are matched with
the listener's compiled route table, so the tests see what a client of the vhost port would.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dataplane.config.compiler import Compiled, EndpointRegistry, compile_snapshot
from dataplane.http.request import RequestHead
from dataplane.policies.base import LocalResponse, RequestContext
from dataplane.reactor import Reactor
from dataplane.routing import RouteRule
from dataplane.tunnel.agentconn import AgentConn
from dataplane.tunnel.http_auth import TYPE as AUTH_TYPE
from dataplane.tunnel.registry import ClaimError, ProxyRef
from dataplane.tunnel.server import TunnelMetrics, TunnelServer
from dataplane.tunnel.vhost import PREFIX, TunnelEndpoints, endpoint_address, overlay, serves
from dataplane.upstream.bridge import ReactorEnd
from flux.v1 import config_pb2 as pb
from fluxcommon.tunnel.protocol.proxies import ProxyOptions, ProxyOptionsError, parse_new_proxy

VHOST_PORT = 18080
TUNNEL_LISTENER = "tunnel/t1/http"


# -- real objects, no sockets -------------------------------------------------------------


def make_server(
    name: str = "t1", *, vhost_http_port: int = VHOST_PORT, subdomain_host: str = "tunnel.test"
) -> TunnelServer:
    spec = pb.Tunnel(
        name=name, bind_address="127.0.0.1", vhost_http_port=vhost_http_port, subdomain_host=subdomain_host
    )
    return TunnelServer(spec, None, TunnelMetrics())


def login(server: TunnelServer, agent: str) -> AgentConn:
    """An agent that has logged in (as `AgentConn.run` leaves it after an accepted LOGIN)."""
    transport, _ = trio.testing.memory_stream_pair()
    conn = AgentConn(server, transport, "198.51.100.7:40000", False)
    conn.name, conn.run_id, conn.logged_in = agent, f"run-{agent}", True
    server.conns.add(conn)
    server.attach(conn, reconnect=False)
    return conn


def serve(conn: AgentConn, name: str, proxy_type: str = "http", **options: Any) -> ProxyRef:
    """A NEW_PROXY from `conn`, parsed and claimed (ClaimError when the server refuses it)."""
    request = parse_new_proxy(name, proxy_type, options)
    ref = ProxyRef(conn, request.name, request.proxy_type, request.options, since=time.time())
    trio.run(conn.server.claim, ref)
    conn.refs[ref.name] = ref
    return ref


def attach_ref(conn: AgentConn, name: str, proxy_type: str, **options: Any) -> ProxyRef:
    """A proxy listed on the session without a claim (for tcp/udp, whose claim would bind a port)."""
    ref = ProxyRef(conn, name, proxy_type, ProxyOptions(**options))
    conn.refs[name] = ref
    return ref


def _pools(cluster: str, address: str, port: int, limits: Any) -> object:
    return object()


def compile_(snap: pb.Snapshot) -> Compiled:
    return compile_snapshot(snap, EndpointRegistry(), _pools)  # type: ignore[arg-type]


def match(compiled: Compiled, host: str, path: str, listener: str = TUNNEL_LISTENER) -> RouteRule | None:
    return compiled.config.listeners[listener].matcher.match(host, path, "GET", {})


def routed(compiled: Compiled, host: str, path: str, listener: str = TUNNEL_LISTENER) -> str | None:
    rule = match(compiled, host, path, listener)
    return None if rule is None else rule.name


def endpoints_of(compiled: Compiled, route: str) -> list[str]:
    cluster = compiled.config.clusters[route]  # overlay names each route's cluster after it
    return [ep.address for ep in cluster.endpoints]


def base_snapshot() -> pb.Snapshot:
    """What the control plane sends: a public listener with one ordinary route."""
    return pb.Snapshot(
        version="7",
        node_group="edge",
        listeners=[pb.Listener(name="public", protocol=pb.PROTOCOL_HTTP, address="127.0.0.1", port=18000)],
        clusters=[pb.Cluster(name="app", endpoints=[pb.Endpoint(address="10.0.0.1", port=8080, weight=1)])],
        routes=[pb.Route(name="app", listener="public", hosts=["www.example.com"], path="/", cluster="app")],
    )


def context(headers: dict[str, str] | None = None) -> RequestContext:
    head = RequestHead()
    head.method, head.path, head.host = "GET", "/", "app.example.com"
    head.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return RequestContext(head, "203.0.113.9", TUNNEL_LISTENER, "r", time.monotonic())


@pytest.fixture
def server() -> Iterator[TunnelServer]:
    yield make_server()


# -- routes for custom domains, subdomains and locations ----------------------------------


def test_custom_domains_exact_and_wildcard_become_routes_on_a_tunnel_listener(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["App.Example.com", "*.apps.example.com"])
    full = overlay(base_snapshot(), [server])

    (listener,) = [lst for lst in full.listeners if lst.name == TUNNEL_LISTENER]
    assert (listener.protocol, listener.address, listener.port) == (pb.PROTOCOL_HTTP, "127.0.0.1", VHOST_PORT)
    tunnel_routes = {r.name: r for r in full.routes if r.name.startswith("tunnel/")}
    assert set(tunnel_routes) == {"tunnel/t1/app.example.com/", "tunnel/t1/*.apps.example.com/"}
    for name, route in tunnel_routes.items():
        assert route.listener == TUNNEL_LISTENER and route.cluster == name
        assert route.path == "/" and route.path_type == pb.PATH_TYPE_PREFIX

    compiled = compile_(full)
    assert routed(compiled, "app.example.com", "/") == "tunnel/t1/app.example.com/"
    assert routed(compiled, "app.example.com", "/any/path") == "tunnel/t1/app.example.com/"
    assert routed(compiled, "a.apps.example.com", "/") == "tunnel/t1/*.apps.example.com/"
    assert routed(compiled, "a.b.apps.example.com", "/x") == "tunnel/t1/*.apps.example.com/"
    for other in ("apps.example.com", "example.com", "www.example.com", "app.example.com.evil", "xapps.example.com"):
        assert routed(compiled, other, "/") is None, other
    # The control plane's listener does not serve tunnels, and its routes stay where they were.
    assert routed(compiled, "app.example.com", "/", listener="public") is None
    assert routed(compiled, "www.example.com", "/", listener="public") == "app"
    assert endpoints_of(compiled, "tunnel/t1/app.example.com/") == ["tunnel:t1/1/alice.web"]


def test_a_subdomain_is_served_under_the_subdomain_host(server: TunnelServer) -> None:
    alice = login(server, "alice")
    request = parse_new_proxy("alice.dev", "http", {"subdomain": "Dev"})
    ref = ProxyRef(alice, request.name, "http", request.options)
    assert trio.run(server.claim, ref) == f"http://dev.tunnel.test:{VHOST_PORT}"
    alice.refs[ref.name] = ref

    compiled = compile_(overlay(base_snapshot(), [server]))
    assert routed(compiled, "dev.tunnel.test", "/x") == "tunnel/t1/dev.tunnel.test/"
    assert routed(compiled, "tunnel.test", "/") is None
    assert routed(compiled, "other.tunnel.test", "/") is None


def test_a_subdomain_needs_a_subdomain_host() -> None:
    server = make_server(subdomain_host="")
    alice = login(server, "alice")
    with pytest.raises(ClaimError, match=r"^subdomain: "):
        serve(alice, "alice.dev", subdomain="dev")
    assert overlay(base_snapshot(), [server]).routes == base_snapshot().routes


def test_an_http_proxy_needs_a_vhost_port() -> None:
    server = make_server(vhost_http_port=0)
    alice = login(server, "alice")
    with pytest.raises(ClaimError, match=r"^custom_domains: .*vhost_http_port is 0"):
        serve(alice, "alice.web", custom_domains=["app.example.com"])


def test_locations_become_prefix_routes_and_the_longest_wins(server: TunnelServer) -> None:
    alice, bob = login(server, "alice"), login(server, "bob")
    serve(alice, "alice.api", custom_domains=["app.example.com"], locations=["/api", "/api/v2/"])
    serve(bob, "bob.site", custom_domains=["app.example.com"], locations=[""])  # "" is "/"
    full = overlay(pb.Snapshot(), [server])
    assert sorted(r.path for r in full.routes) == ["/", "/api", "/api/v2/"]

    compiled = compile_(full)
    api, v2, site = (f"tunnel/t1/app.example.com{loc}" for loc in ("/api", "/api/v2/", "/"))
    assert routed(compiled, "app.example.com", "/api") == api
    assert routed(compiled, "app.example.com", "/api/users") == api
    assert routed(compiled, "app.example.com", "/api/v2") == api  # "/api/v2/" needs its slash
    assert routed(compiled, "app.example.com", "/api/v2/users") == v2
    assert routed(compiled, "app.example.com", "/") == site
    assert routed(compiled, "app.example.com", "/static/app.js") == site
    assert routed(compiled, "other.example.com", "/api") is None
    assert endpoints_of(compiled, api) == endpoints_of(compiled, v2) == ["tunnel:t1/1/alice.api"]
    assert endpoints_of(compiled, site) == ["tunnel:t1/2/bob.site"]


def test_location_prefixes_compare_characters_like_the_route_matcher(server: TunnelServer) -> None:
    # The node's route table compares prefixes by characters (as frp does): "/api" takes "/apix" too.
    alice = login(server, "alice")
    serve(alice, "alice.api", custom_domains=["app.example.com"], locations=["/api"])
    compiled = compile_(overlay(pb.Snapshot(), [server]))
    assert routed(compiled, "app.example.com", "/apix") == "tunnel/t1/app.example.com/api"
    assert routed(compiled, "app.example.com", "/ap") is None
    assert routed(compiled, "app.example.com", "/") is None


def test_an_exact_domain_beats_a_wildcard_and_falls_back_to_it_by_path(server: TunnelServer) -> None:
    alice, bob = login(server, "alice"), login(server, "bob")
    serve(alice, "alice.api", custom_domains=["api.example.com"], locations=["/v1"])
    serve(bob, "bob.all", custom_domains=["*.example.com"])
    compiled = compile_(overlay(pb.Snapshot(), [server]))
    assert routed(compiled, "api.example.com", "/v1/x") == "tunnel/t1/api.example.com/v1"
    assert routed(compiled, "api.example.com", "/other") == "tunnel/t1/*.example.com/"
    assert routed(compiled, "www.example.com", "/v1/x") == "tunnel/t1/*.example.com/"


# -- groups, policies ---------------------------------------------------------------------


def test_two_agents_in_one_group_are_one_route_with_two_endpoints(server: TunnelServer) -> None:
    alice, bob = login(server, "alice"), login(server, "bob")
    a = serve(alice, "alice.web", custom_domains=["app.example.com"], group="web", group_key="k")
    b = serve(bob, "bob.web", custom_domains=["app.example.com"], group="web", group_key="k")
    with pytest.raises(ClaimError, match=r"already served by proxy 'alice\.web'"):
        serve(login(server, "carol"), "carol.web", custom_domains=["app.example.com"])
    with pytest.raises(ClaimError, match="group key does not match"):
        serve(login(server, "dave"), "dave.web", custom_domains=["app.example.com"], group="web", group_key="x")

    full = overlay(pb.Snapshot(), [server])
    (route,) = full.routes
    (cluster,) = full.clusters
    assert route.cluster == cluster.name == "tunnel/t1/app.example.com/"
    assert cluster.lb == pb.LB_POLICY_ROUND_ROBIN
    assert [ep.address for ep in cluster.endpoints] == [endpoint_address(server, a), endpoint_address(server, b)]
    assert [ep.address for ep in cluster.endpoints] == ["tunnel:t1/1/alice.web", "tunnel:t1/2/bob.web"]

    compiled = compile_(full)
    runtime = compiled.config.clusters[cluster.name]
    assert match(compiled, "app.example.com", "/").target.clusters == (runtime,)  # type: ignore[union-attr]
    picks = {runtime.balancer.pick().address for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"tunnel:t1/1/alice.web", "tunnel:t1/2/bob.web"}

    # One member leaves: the route stays with one endpoint; the last one leaves: the route goes.
    server.release(a)
    alice.refs.pop(a.name)
    assert endpoints_of(compile_(overlay(pb.Snapshot(), [server])), cluster.name) == ["tunnel:t1/2/bob.web"]
    server.release(b)
    bob.refs.pop(b.name)
    assert not overlay(pb.Snapshot(), [server]).routes


def test_http_user_and_password_add_the_internal_auth_policy(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["app.example.com"], http_user="ops", http_password="s3cret")
    full = overlay(pb.Snapshot(), [server])
    (policy,) = full.policies
    (route,) = full.routes
    assert policy.name == "tunnel/t1/app.example.com/#auth" and policy.type == AUTH_TYPE == "tunnel_http_auth"
    assert dict(policy.config) == {"username": "ops", "password": "s3cret"}
    assert list(route.policies) == [policy.name]

    compiled = compile_(full)
    (auth,) = match(compiled, "app.example.com", "/").target.chain.policies  # type: ignore[union-attr]
    assert auth.type == AUTH_TYPE
    refused = auth.on_request(context())
    assert isinstance(refused, LocalResponse) and refused.status == 401
    wrong = base64.b64encode(b"ops:nope").decode()
    assert isinstance(auth.on_request(context({"Authorization": f"Basic {wrong}"})), LocalResponse)
    right = base64.b64encode(b"ops:s3cret").decode()
    assert auth.on_request(context({"Authorization": f"Basic {right}"})) is None


def test_without_http_user_there_is_no_auth_policy(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["app.example.com"])
    full = overlay(pb.Snapshot(), [server])
    assert not full.policies and not full.routes[0].policies
    assert not match(compile_(full), "app.example.com", "/").target.chain  # type: ignore[union-attr]


def test_host_rewrite_and_header_options_become_rewrite_policies(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(
        alice,
        "alice.web",
        custom_domains=["app.example.com"],
        host_header_rewrite="internal.svc",
        request_headers={"X-From": "tunnel", "X-Team": "ops"},
        response_headers={"X-Served-By": "flux"},
    )
    full = overlay(pb.Snapshot(), [server])
    policies = {p.name: p for p in full.policies}
    base = "tunnel/t1/app.example.com/"
    assert list(full.routes[0].policies) == [f"{base}#request", f"{base}#response"]
    request, response = policies[f"{base}#request"], policies[f"{base}#response"]
    assert request.type == "request_rewrite" and response.type == "response_rewrite"
    assert request.config["host"] == "internal.svc"
    assert dict(request.config["headers"]["set"]) == {"X-From": "tunnel", "X-Team": "ops"}
    assert dict(response.config["headers"]["set"]) == {"X-Served-By": "flux"}

    chain = match(compile_(full), "app.example.com", "/").target.chain  # type: ignore[union-attr]
    assert [p.type for p in chain.policies] == ["request_rewrite", "response_rewrite"]
    ctx = context({"X-From": "client"})
    for policy in chain.policies:
        assert policy.on_request(ctx) is None
    assert ctx.host == b"internal.svc"
    assert sorted(ctx.upstream_add) == [(b"X-From", b"tunnel"), (b"X-Team", b"ops")]
    assert {b"x-from", b"x-team"} <= ctx.upstream_remove
    assert ctx.response_add == [(b"X-Served-By", b"flux")]


def test_host_rewrite_alone_sets_no_headers(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["app.example.com"], host_header_rewrite="internal.svc")
    (policy,) = overlay(pb.Snapshot(), [server]).policies
    assert policy.type == "request_rewrite" and policy.config["host"] == "internal.svc"
    assert dict(policy.config["headers"]["set"]) == {}
    compile_(overlay(pb.Snapshot(), [server]))


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("request_headers", {"request_headers": {"X-Price": "5 €"}}),
        ("response_headers", {"response_headers": {"X-Price": "5 €"}}),
        ("host_header_rewrite", {"host_header_rewrite": "a..b"}),
        ("host_header_rewrite", {"host_header_rewrite": "x" * 64 + ".svc"}),
    ],
    ids=["request-header-value", "response-header-value", "empty-label-host", "long-label-host"],
)
def test_options_the_policies_could_not_send_are_refused(server: TunnelServer, field: str, options: Any) -> None:
    # Accepted, these made the route's rewrite policies raise on every request (latin-1 / IDNA).
    alice = login(server, "alice")
    with pytest.raises(ProxyOptionsError, match=rf"^proxy 'alice\.web': {field}: "):
        serve(alice, "alice.web", custom_domains=["app.example.com"], **options)


def test_latin_1_values_and_idna_hosts_give_policies_that_run(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(
        alice,
        "alice.web",
        custom_domains=["app.example.com"],
        host_header_rewrite="Bücher.example:8080",
        request_headers={"X-Price": "5 £\tÿ"},
        response_headers={"X-Price": "5 £"},
    )
    chain = match(compile_(overlay(pb.Snapshot(), [server])), "app.example.com", "/").target.chain  # type: ignore[union-attr]
    ctx = context()
    for policy in chain.policies:
        assert policy.on_request(ctx) is None
    assert ctx.host == b"xn--bcher-kva.example:8080"
    assert (b"X-Price", "5 £\tÿ".encode("latin-1")) in ctx.upstream_add
    assert ctx.response_add == [(b"X-Price", "5 £".encode("latin-1"))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.text(st.characters(max_codepoint=0x2100, blacklist_categories=("Cs",)), max_size=6),
    host=st.text("aZ9ü-_.:[]1 \t\r\n/€", max_size=12),
)
def test_http_options_are_refused_or_give_policies_that_run(value: str, host: str) -> None:
    server = make_server()
    alice = login(server, "alice")
    options = {"host_header_rewrite": host, "request_headers": {"X-A": value}, "response_headers": {"X-B": value}}
    try:
        serve(alice, "alice.web", custom_domains=["app.example.com"], **options)
    except ProxyOptionsError as exc:
        event("refused")
        assert any(f": {field}: " in str(exc) for field in options), exc
        return
    event("accepted")
    chain = match(compile_(overlay(pb.Snapshot(), [server])), "app.example.com", "/").target.chain  # type: ignore[union-attr]
    ctx = context()
    for policy in chain.policies:
        assert policy.on_request(ctx) is None  # an accepted proxy's route serves requests


# -- the snapshot itself ------------------------------------------------------------------


def test_overlay_leaves_the_snapshot_alone_and_gives_the_same_answer_twice(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["app.example.com"], locations=["/api"], http_user="u", http_password="p")
    attach_ref(alice, "alice.db", "tcp", remote_port=15432)
    snap = base_snapshot()
    snap.clusters.append(
        pb.Cluster(name="intranet", tunnel="web", endpoints=[pb.Endpoint(address="stale", port=1, weight=1)])
    )
    before = snap.SerializeToString(deterministic=True)

    first = overlay(snap, [server])
    second = overlay(snap, [server])
    assert snap.SerializeToString(deterministic=True) == before
    assert first is not snap
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)
    assert first.version == "7" and first.node_group == "edge"
    # Everything the control plane sent is still there, in order, ahead of what the tunnels add.
    assert list(first.listeners)[: len(snap.listeners)] == list(snap.listeners)
    assert list(first.routes)[: len(snap.routes)] == list(snap.routes)
    assert [c.name for c in first.clusters][: len(snap.clusters)] == [c.name for c in snap.clusters]
    compile_(first)


def test_overlay_without_tunnels_is_the_snapshot_itself() -> None:
    snap = base_snapshot()
    assert overlay(snap, []) is snap
    assert overlay(snap, [make_server(vhost_http_port=0)]) is snap


def test_a_server_without_proxies_still_adds_its_listener(server: TunnelServer) -> None:
    full = overlay(base_snapshot(), [server])
    assert [lst.name for lst in full.listeners] == ["public", TUNNEL_LISTENER]
    assert list(full.routes) == list(base_snapshot().routes)
    assert routed(compile_(full), "app.example.com", "/") is None


def test_tunnel_routes_join_an_http_listener_already_on_the_vhost_port(server: TunnelServer) -> None:
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["app.example.com"])
    snap = base_snapshot()
    snap.listeners.append(pb.Listener(name="shared", protocol=pb.PROTOCOL_HTTP, address="0.0.0.0", port=VHOST_PORT))
    full = overlay(snap, [server])
    assert [lst.name for lst in full.listeners] == ["public", "shared"]
    (route,) = [r for r in full.routes if r.name.startswith("tunnel/")]
    assert route.listener == "shared"
    compiled = compile_(full)
    assert routed(compiled, "app.example.com", "/", listener="shared") == "tunnel/t1/app.example.com/"


def test_gateway_routes_without_a_listener_stay_off_the_tunnel_listener(server: TunnelServer) -> None:
    # A control-plane route naming no listener applies to every gateway listener, but not to the
    # listener the node makes for a tunnel's vhost port: a catch-all route is not exposed there,
    # and a route for an agent's domain does not take it from the agent.
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["app.example.com"])
    snap = base_snapshot()
    snap.routes.append(pb.Route(name="catch-all", path="/", cluster="app"))
    snap.routes.append(pb.Route(name="grab", hosts=["app.example.com"], path="/", priority=100, cluster="app"))
    full = overlay(snap, [server])
    assert [lst.name for lst in full.listeners] == ["public", TUNNEL_LISTENER]
    compiled = compile_(full)

    assert routed(compiled, "app.example.com", "/") == "tunnel/t1/app.example.com/"
    assert routed(compiled, "other.example.com", "/") is None
    assert routed(compiled, "127.0.0.1", "/admin") is None
    # On the public listener they apply as before.
    assert routed(compiled, "other.example.com", "/", listener="public") == "catch-all"
    assert routed(compiled, "app.example.com", "/", listener="public") == "grab"
    assert routed(compiled, "www.example.com", "/", listener="public") == "app"


def test_gateway_routes_without_a_listener_stay_on_a_shared_vhost_listener(server: TunnelServer) -> None:
    # The tunnel joins a gateway listener already on its port: that listener keeps its routes.
    alice = login(server, "alice")
    serve(alice, "alice.web", custom_domains=["app.example.com"])
    snap = base_snapshot()
    snap.listeners.append(pb.Listener(name="shared", protocol=pb.PROTOCOL_HTTP, address="0.0.0.0", port=VHOST_PORT))
    snap.routes.append(pb.Route(name="catch-all", path="/", cluster="app"))
    compiled = compile_(overlay(snap, [server]))
    assert routed(compiled, "app.example.com", "/", listener="shared") == "tunnel/t1/app.example.com/"
    assert routed(compiled, "other.example.com", "/", listener="shared") == "catch-all"
    assert routed(compiled, "other.example.com", "/", listener="public") == "catch-all"


def test_two_servers_each_get_their_listener_routes_and_endpoint_names() -> None:
    one, two = make_server("t1"), make_server("t2", vhost_http_port=VHOST_PORT + 1)
    serve(login(one, "alice"), "alice.web", custom_domains=["a.example.com"])
    serve(login(two, "alice"), "alice.web", custom_domains=["a.example.com"])
    compiled = compile_(overlay(pb.Snapshot(), [one, two]))
    assert routed(compiled, "a.example.com", "/", "tunnel/t1/http") == "tunnel/t1/a.example.com/"
    assert routed(compiled, "a.example.com", "/", "tunnel/t2/http") == "tunnel/t2/a.example.com/"
    assert endpoints_of(compiled, "tunnel/t2/a.example.com/") == ["tunnel:t2/1/alice.web"]


# -- `tunnel: NAME` clusters and serves() --------------------------------------------------


@pytest.mark.parametrize(
    ("proxy", "group", "name", "expected"),
    [
        ("alice.web", "", "alice.web", True),  # the full name
        ("alice.web", "", "web", True),  # without the agent's user prefix
        ("web", "", "web", True),  # an agent without a user
        ("alice.web", "pool", "pool", True),  # the load-balancing group
        ("alice.web", "pool", "web", True),
        ("alice.web", "", "alice", False),
        ("alice.web", "", "eb", False),
        ("alice.web", "", "lice.web", False),
        ("alice.web", "", "alice.we", False),
        ("aliceweb", "", "web", False),
        ("alice.web", "", "WEB", False),
        ("alice.web", "", "web.", False),
        ("alice.webx", "", "web", False),
        ("alice.web", "pool", "poo", False),
        ("bob.alice.web", "", "alice.web", True),  # a suffix after any dot
    ],
)
def test_serves_matches_the_user_prefixed_names(proxy: str, group: str, name: str, expected: bool) -> None:
    ref = ProxyRef(object(), proxy, "http", ProxyOptions(group=group))
    assert serves(ref, name) is expected


def test_tunnel_clusters_get_the_endpoints_of_every_agent_serving_the_name(server: TunnelServer) -> None:
    alice, bob, carol = login(server, "alice"), login(server, "bob"), login(server, "carol")
    attach_ref(alice, "alice.web", "http", custom_domains=["a.example.com"])
    attach_ref(bob, "bob.web", "tcp", remote_port=15000)
    attach_ref(carol, "carol.web", "udp", remote_port=15001)  # udp cannot carry http
    attach_ref(carol, "carol.webapp", "tcp")
    attach_ref(carol, "carol.other", "tcp", group="web")
    snap = pb.Snapshot(
        clusters=[
            pb.Cluster(name="intranet", tunnel="web", endpoints=[pb.Endpoint(address="10.9.9.9", port=80)]),
            pb.Cluster(name="just-alice", tunnel="alice.web"),
            pb.Cluster(name="plain", endpoints=[pb.Endpoint(address="10.0.0.1", port=80, weight=1)]),
        ]
    )
    full = overlay(snap, [server])
    by_name = {c.name: c for c in full.clusters}
    assert sorted(ep.address for ep in by_name["intranet"].endpoints) == sorted(
        [f"{PREFIX}t1/1/alice.web", f"{PREFIX}t1/2/bob.web", f"{PREFIX}t1/3/carol.other"]
    )
    assert all(ep.port == 1 and ep.weight == 1 for ep in by_name["intranet"].endpoints)
    assert [ep.address for ep in by_name["just-alice"].endpoints] == [f"{PREFIX}t1/1/alice.web"]
    assert [ep.address for ep in by_name["plain"].endpoints] == ["10.0.0.1"]
    assert [ep.address for ep in snap.clusters[0].endpoints] == ["10.9.9.9"]  # the input is untouched
    compile_(full)


def test_agents_that_are_not_logged_in_serve_nothing(server: TunnelServer) -> None:
    alice = login(server, "alice")
    attach_ref(alice, "alice.web", "tcp")
    alice.logged_in = False
    snap = pb.Snapshot(clusters=[pb.Cluster(name="intranet", tunnel="web")])
    assert not overlay(snap, [make_server(vhost_http_port=0), server]).clusters[0].endpoints


def test_tunnel_endpoints_refuse_addresses_nobody_serves(server: TunnelServer) -> None:
    alice = login(server, "alice")
    ref = attach_ref(alice, "alice.web", "tcp")
    endpoints = TunnelEndpoints()
    reactor = Reactor()
    with pytest.raises(ConnectionRefusedError):
        endpoints.open(reactor, endpoint_address(server, ref))  # no server of that name yet
    endpoints.servers[server.name] = server
    for address in ("tunnel:t1/99/alice.web", "tunnel:t1/1/bob.web", "tunnel:t9/1/alice.web", "tunnel:t1"):
        with pytest.raises(ConnectionRefusedError, match="no tunnel agent serves"):
            endpoints.open(reactor, address)


def test_tunnel_endpoints_open_a_stream_carried_by_the_named_agent(server: TunnelServer) -> None:
    """No socket between the proxy and the tunnel: an in-memory stream the reactor reads."""
    alice = login(server, "alice")
    ref = attach_ref(alice, "alice.web", "tcp")
    endpoints = TunnelEndpoints()
    endpoints.servers[server.name] = server
    got: list[bytes] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reactor = await nursery.start(Reactor().run)
            server.nursery = nursery
            end = endpoints.open(reactor, endpoint_address(server, ref))
            assert isinstance(end, ReactorEnd)
            done = trio.Event()

            async def read() -> None:
                got.append(await end.recv())
                done.set()

            reactor.spawn(read())
            # This session never accepted the proxy, so the carrier gives up and ends the stream.
            with trio.fail_after(5):
                await done.wait()
            end.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert got == [b""]
    assert server.metrics.connect_failures == 1


# -- the property -------------------------------------------------------------------------

DOMAIN_POOL = ["a.test", "b.test", "x.a.test", "*.a.test", "*.test", "*.x.a.test", "*.tunnel.test"]
SUBDOMAIN_POOL = ["", "", "a", "b"]
LOCATION_POOL = ["", "/", "/api", "/api/", "/api/v1", "/api/v1/users", "/static"]

proxy_specs = st.lists(
    st.fixed_dictionaries(
        {
            "agent": st.sampled_from(["alice", "bob", "carol"]),
            "custom_domains": st.lists(st.sampled_from(DOMAIN_POOL), max_size=3),
            "subdomain": st.sampled_from(SUBDOMAIN_POOL),
            "locations": st.lists(st.sampled_from(LOCATION_POOL), max_size=3),
            "group": st.sampled_from(["", "", "g"]),
        }
    ),
    min_size=1,
    max_size=6,
)


def _request_host(domain: str) -> str:
    """A host only `domain` can claim exactly (a wildcard's is one new label under it)."""
    return "zq" + domain[1:] if domain.startswith("*.") else domain


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proxy_specs)
def test_every_claimed_domain_and_location_routes_to_its_claimant(specs: list[dict[str, Any]]) -> None:
    server = make_server()
    agents = {name: login(server, name) for name in ("alice", "bob", "carol")}
    for i, spec in enumerate(specs):
        options = {k: v for k, v in spec.items() if k != "agent" and v}
        if not options.get("custom_domains") and not options.get("subdomain"):
            continue
        try:
            serve(agents[spec["agent"]], f"{spec['agent']}.p{i}", **options)
        except ClaimError:
            pass

    full = overlay(pb.Snapshot(), [server])
    compiled = compile_(full)  # every claim set compiles
    groups = {key[1:]: group for key, group in server.registry.groups.items() if key[0] == "http"}
    assert len(full.routes) == len(full.clusters) == len(groups)
    event(f"routes: {min(len(groups), 6)}")
    event(f"largest group: {max((len(g.members) for g in groups.values()), default=0)}")
    locations_of: dict[str, list[str]] = {}
    for domain, location in groups:
        locations_of.setdefault(domain, []).append(location)

    for (domain, location), group in groups.items():
        host = _request_host(domain)
        deeper = location + ("" if location.endswith("/") else "/") + "deeper"
        for path in (location, deeper):
            expected = max((loc for loc in locations_of[domain] if path.startswith(loc)), key=len)
            want = groups[(domain, expected)]
            rule = match(compiled, host, path)
            assert rule is not None, (host, path)
            assert rule.name == f"tunnel/t1/{domain}{expected}", (host, path)
            assert endpoints_of(compiled, rule.name) == [endpoint_address(server, m) for m in want.members]
            # The registry's own lookup agrees on these segment-aligned paths.
            assert server.registry.find_http(host, path) is want
        assert group.members and all(m.type == "http" for m in group.members)
    assert match(compiled, "nobody.example", "/") is None


# -- routeByHTTPUser ----------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_route_by_http_user_picks_the_users_proxy_and_checks_its_password(server: TunnelServer) -> None:
    a, b, c = login(server, "a"), login(server, "b"), login(server, "c")
    domain = ["app.example.com"]
    serve(a, "a.web", custom_domains=domain, route_by_http_user="alice", http_user="alice", http_password="pa",
          host_header_rewrite="alice.internal", response_headers={"X-Who": "alice"})  # fmt: skip
    serve(b, "b.web", custom_domains=domain, route_by_http_user="bob", http_user="bob", http_password="pb")
    full = overlay(pb.Snapshot(), [server])
    (route,) = full.routes
    (policy,) = full.policies
    assert policy.type == "tunnel_http_route" and list(route.policies) == [policy.name]
    names = {cl.name: [ep.address for ep in cl.endpoints] for cl in full.clusters}
    assert set(names) == {"tunnel/t1/app.example.com/@alice", "tunnel/t1/app.example.com/@bob"}

    chooser = match(compile_(full), "app.example.com", "/").target.chain.policies[0]  # type: ignore[union-attr]

    def pick(headers: dict[str, str]) -> tuple[int | None, str | None, RequestContext]:
        ctx = context(headers)
        answer = chooser.on_request(ctx)
        return (answer.status if isinstance(answer, LocalResponse) else None), ctx.vars.get("cluster"), ctx

    status, cluster, ctx = pick(basic("alice", "pa"))
    assert (status, cluster, ctx.host) == (None, "tunnel/t1/app.example.com/@alice", b"alice.internal")
    assert (b"X-Who", b"alice") in ctx.response_add
    assert pick(basic("bob", "pb"))[:2] == (None, "tunnel/t1/app.example.com/@bob")
    for wrong in (basic("alice", "pb"), basic("bob", "pa"), basic("eve", "x"), {}):  # never reaches a proxy
        assert pick(wrong)[:2] == (401, None)

    serve(c, "c.web", custom_domains=domain)  # a proxy for every other user
    chooser = match(compile_(overlay(pb.Snapshot(), [server])), "app.example.com", "/").target.chain.policies[0]  # type: ignore[union-attr]
    assert pick(basic("eve", "x"))[:2] == (None, "tunnel/t1/app.example.com/")
    assert pick({})[:2] == (None, "tunnel/t1/app.example.com/")
    assert pick(basic("alice", "wrong"))[:2] == (401, None)  # alice's own proxy, wrong password: no fallback


def test_two_proxies_for_the_same_user_and_place_are_refused(server: TunnelServer) -> None:
    a, b = login(server, "a"), login(server, "b")
    serve(a, "a.web", custom_domains=["app.example.com"], route_by_http_user="alice")
    with pytest.raises(ClaimError, match="for user 'alice'"):
        serve(b, "b.web", custom_domains=["app.example.com"], route_by_http_user="alice")
    serve(b, "b.web", custom_domains=["app.example.com"], route_by_http_user="bob")
