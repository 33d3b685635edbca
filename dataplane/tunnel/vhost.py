"""Tunnelled HTTP services as gateway routes.

The node serves http tunnel proxies with its own HTTP proxy: `overlay(snapshot, servers)`
returns the snapshot plus, for each tunnel server with `vhost_http_port`:

- a listener on that port (unless the snapshot already has an http listener there, in which
  case the tunnel routes join it: "may share an http listener"); a listener of its own serves
  the tunnel routes only, not the gateway routes that name no listener;
- per (domain, location) served by agents: a route for that host and path prefix, and a
  cluster whose endpoints are the agents' proxies (a load-balancing group is several
  endpoints), with `httpUser`/`httpPassword`, `hostHeaderRewrite` and header settings as
  route policies; where proxies of a (domain, location) set `routeByHTTPUser`, one route whose
  internal policy (`http_route.py`) picks the cluster of the request's basic-auth user;

and fills in every cluster with `tunnel: NAME` (see `serves`; a gateway route whose backend is an
intranet service, so the route's JWT, rate limits, ACLs and CORS apply to it).

On a shared listener, a tunnel without `vhost_overrides_routes` adds no route for a domain a
gateway route's host pattern covers (`ownership.shadowing_route`): agents are refused such
domains when they claim them, and a gateway route added later takes its host back. With
`vhost_overrides_routes` the agents' routes win ties with gateway routes (`OVERRIDE_PRIORITY`).

Endpoint addresses are `tunnel:SERVER/SERIAL/PROXY`; the upstream pool opens them with
`open_tunnel_endpoint`, which hands back one end of a socket pair whose other end the tunnel
server pipes into a work stream.
"""

from __future__ import annotations

import errno
from collections.abc import Container, Iterable
from typing import TYPE_CHECKING

from google.protobuf.struct_pb2 import Struct

from dataplane.config.compiler import NODE_LISTENER_PREFIX
from dataplane.tunnel.http_auth import TYPE as AUTH_TYPE
from dataplane.tunnel.http_route import TYPE as ROUTE_TYPE
from dataplane.tunnel.ownership import gateway_hosts, shadowing_route
from dataplane.tunnel.registry import Group, ProxyRef, route_user
from dataplane.tunnel.server import TunnelServer
from dataplane.upstream.bridge import ReactorEnd
from flux.v1 import config_pb2 as pb

if TYPE_CHECKING:
    from dataplane.reactor import Reactor

PREFIX = "tunnel:"
OVERRIDE_PRIORITY = 1_000_000


def endpoint_address(server: TunnelServer, ref: ProxyRef) -> str:
    return f"{PREFIX}{server.name}/{ref.session.serial}/{ref.name}"


def _endpoints(server: TunnelServer, refs: Iterable[ProxyRef]) -> list[pb.Endpoint]:
    return [pb.Endpoint(address=endpoint_address(server, r), port=1, weight=1) for r in refs]


def serves(ref: ProxyRef, name: str, users: Container[str] = ()) -> bool:
    """Whether `ref` backs `tunnel: name`: its full name (``user.proxy``), its name without the
    agent's user prefix (any agent's), or its load-balancing group. A tunnel user's proxy
    answers to names in its user's namespace only (``office.crm`` or group ``office.GROUP``),
    and a name in a user's namespace (`users`) is served by that user's proxies only, so
    neither another user's ``lab.crm`` nor a shared-token agent ever joins ``tunnel: office.crm``."""
    if ref.owner:
        return name == ref.name or (bool(ref.group) and name == f"{ref.owner}.{ref.group}")
    owner, dot, _ = name.partition(".")
    if dot and owner in users:
        return False
    return name in (ref.name, ref.group) or ref.name.endswith("." + name)


def _struct(d: dict) -> Struct:  # type: ignore[type-arg]
    s = Struct()
    s.update(d)
    return s


def _cluster_for(base: str, server: TunnelServer, group: Group) -> pb.Cluster:
    return pb.Cluster(
        name=base,
        lb=pb.LB_POLICY_ROUND_ROBIN,
        endpoints=_endpoints(server, group.members),
        timeouts=pb.Timeouts(connect_ms=10_000, read_ms=60_000),
    )


def _user_routes_for(
    server: TunnelServer, listener: str, groups: dict[str, Group]
) -> tuple[pb.Route, list[pb.Cluster], list[pb.Policy]]:
    """One route for a (domain, location) with proxies per basic-auth user (routeByHTTPUser)."""
    domain, location = next(iter(groups.values())).key[1:3]
    base = f"tunnel/{server.name}/{domain}{location}"
    clusters, table = [], []
    for user, group in sorted(groups.items()):
        o = group.members[0].options
        cluster = _cluster_for(f"{base}@{user}" if user else base, server, group)
        clusters.append(cluster)
        table.append({"user": user, "cluster": cluster.name, "username": o.http_user, "password": o.http_password,
                      "host": o.host_header_rewrite, "request_headers": dict(o.request_headers),
                      "response_headers": dict(o.response_headers)})  # fmt: skip
    policy = pb.Policy(name=f"{base}#users", type=ROUTE_TYPE, config=_struct({"routes": table, "realm": domain}))
    route = pb.Route(
        name=base,
        listener=listener,
        hosts=[domain],
        path=location,
        path_type=pb.PATH_TYPE_PREFIX,
        cluster=clusters[0].name,  # nominal: the policy always picks
        policies=[policy.name],
        priority=OVERRIDE_PRIORITY if server.spec.vhost_overrides_routes else 0,
    )
    return route, clusters, [policy]


def _route_for(server: TunnelServer, listener: str, group: Group) -> tuple[pb.Route, pb.Cluster, list[pb.Policy]]:
    domain, location = group.key[1:3]
    base = f"tunnel/{server.name}/{domain}{location}"
    first = group.members[0].options
    policies: list[pb.Policy] = []
    if first.http_user:
        policies.append(
            pb.Policy(name=f"{base}#auth", type=AUTH_TYPE,
                      config=_struct({"username": first.http_user, "password": first.http_password}))
        )  # fmt: skip
    if first.host_header_rewrite or first.request_headers:
        cfg: dict = {"headers": {"set": dict(first.request_headers)}}  # type: ignore[type-arg]
        if first.host_header_rewrite:
            cfg["host"] = first.host_header_rewrite
        policies.append(pb.Policy(name=f"{base}#request", type="request_rewrite", config=_struct(cfg)))
    if first.response_headers:
        cfg = {"headers": {"set": dict(first.response_headers)}}
        policies.append(pb.Policy(name=f"{base}#response", type="response_rewrite", config=_struct(cfg)))
    cluster = _cluster_for(base, server, group)
    host = domain
    route = pb.Route(
        name=base,
        listener=listener,
        hosts=[host],
        path=location,
        path_type=pb.PATH_TYPE_PREFIX,
        cluster=base,
        policies=[p.name for p in policies],
        # vhost_overrides_routes: a tie with a gateway route (same host and path) goes to the agent
        priority=OVERRIDE_PRIORITY if server.spec.vhost_overrides_routes else 0,
    )
    return route, cluster, policies


def overlay(snap: pb.Snapshot, servers: Iterable[TunnelServer]) -> pb.Snapshot:
    """`snap` with the routes and endpoints of the tunnel servers' http proxies added."""
    servers = list(servers)
    tunnel_clusters = [c for c in snap.clusters if c.tunnel]
    vhost_servers = [s for s in servers if s.spec.vhost_http_port]
    if not tunnel_clusters and not vhost_servers:
        return snap
    out = pb.Snapshot()
    out.CopyFrom(snap)
    for cluster in out.clusters:
        if cluster.tunnel:
            del cluster.endpoints[:]
            for server in servers:
                refs = [
                    r
                    for conn in server.agents()
                    for r in conn.refs.values()
                    if r.type in ("http", "tcp") and serves(r, cluster.tunnel, server.tenancy.users)
                ]
                cluster.endpoints.extend(_endpoints(server, refs))
    for server in vhost_servers:
        port = server.spec.vhost_http_port
        shared = next((lst for lst in out.listeners if lst.port == port and lst.protocol == pb.PROTOCOL_HTTP), None)
        if shared is not None:
            listener = shared.name
        else:
            # Its own listener: it serves the tunnel's routes only (not the gateway's routes
            # without a listener, see NODE_LISTENER_PREFIX); a shared one keeps its routes.
            listener = f"{NODE_LISTENER_PREFIX}{server.name}/http"
            out.listeners.append(
                pb.Listener(name=listener, protocol=pb.PROTOCOL_HTTP, address=server.bind_address, port=port)
            )
        hosts = [] if shared is None or server.spec.vhost_overrides_routes else gateway_hosts(snap, port)
        by_place: dict[tuple[str, str], dict[str, Group]] = {}
        for group in server.registry.http_groups():
            if hosts and shadowing_route(group.key[1], hosts) is not None:
                continue  # the gateway route keeps its host
            by_place.setdefault((group.key[1], group.key[2]), {})[route_user(group.key)] = group
        for groups in by_place.values():
            if set(groups) == {""}:
                route, cluster, policies = _route_for(server, listener, groups[""])
                clusters = [cluster]
            else:
                route, clusters, policies = _user_routes_for(server, listener, groups)
            out.routes.append(route)
            out.clusters.extend(clusters)
            out.policies.extend(policies)
    return out


class TunnelEndpoints:
    """Resolves `tunnel:` endpoint addresses for the upstream pool (one per worker)."""

    def __init__(self) -> None:
        self.servers: dict[str, TunnelServer] = {}

    def open(self, reactor: Reactor, address: str) -> ReactorEnd:
        """A stream carried to the proxy named by `address` (for the upstream pool, on `reactor`);
        ConnectionRefusedError if no agent serves it."""
        name, _, rest = address[len(PREFIX) :].partition("/")
        serial, _, proxy = rest.partition("/")
        server = self.servers.get(name)
        if server is not None:
            for conn in server.agents():
                if str(conn.serial) == serial:
                    ref = conn.refs.get(proxy)
                    if ref is not None:
                        return server.open_for_http(ref, "", reactor)
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"no tunnel agent serves {proxy!r} any more")
