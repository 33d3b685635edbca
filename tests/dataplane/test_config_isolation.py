"""Setting one resource aside (dataplane.config.isolation): what the rest of the snapshot keeps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.config.isolation import Fault, set_aside
from flux.v1 import config_pb2 as pb


def snapshot(ports: dict[str, int], routes: dict[str, str]) -> pb.Snapshot:
    """Listeners by name and port; routes by name and listener ("" for every listener)."""
    return pb.Snapshot(
        version="2",
        listeners=[pb.Listener(name=n, protocol=pb.PROTOCOL_HTTP, port=p) for n, p in ports.items()],
        clusters=[
            pb.Cluster(
                name="secure",
                scheme="https",
                endpoints=[pb.Endpoint(address="10.0.0.1", port=443)],
                tls=pb.UpstreamTls(certificate="client"),
            )
        ],
        routes=[pb.Route(name=n, listener=lst, path="/", cluster="secure") for n, lst in routes.items()],
        tunnels=[pb.Tunnel(name="office", bind_port=7000)],
    )


def test_a_new_listener_is_left_out_with_the_routes_that_name_it() -> None:
    snap = snapshot({"public": 80, "blocked": 81}, {"a": "public", "b": "blocked", "every": ""})
    out, kept = set_aside(snap, Fault("listener", "blocked"), None, use_previous=True)
    assert not kept
    assert [lst.name for lst in out.listeners] == ["public"]
    assert [r.name for r in out.routes] == ["a", "every"]  # a route for every listener stays
    assert len(snap.listeners) == 2 and len(snap.routes) == 3  # the snapshot given is not changed


def test_a_listener_that_ran_before_keeps_its_previous_version() -> None:
    previous = snapshot({"public": 80}, {"a": "public"})
    snap = snapshot({"public": 8080}, {"a": "public"})  # moved to a port this node cannot open
    out, kept = set_aside(snap, Fault("listener", "public"), previous, use_previous=True)
    assert kept and out.listeners[0].port == 80 and [r.name for r in out.routes] == ["a"]
    out, kept = set_aside(snap, Fault("listener", "public"), previous, use_previous=False)
    assert not kept and not out.listeners and not out.routes


def test_a_cluster_whose_tls_fails_stays_without_endpoints() -> None:
    snap = snapshot({"public": 80}, {"a": "public"})
    out, kept = set_aside(snap, Fault("cluster", "secure"), None, use_previous=False)
    [cluster] = out.clusters
    assert not kept and not cluster.endpoints and not cluster.HasField("tls") and cluster.scheme == "http"
    assert [r.cluster for r in out.routes] == ["secure"]  # its routes answer 503, they do not vanish


def test_a_tunnel_is_left_out_or_kept_as_before() -> None:
    previous = snapshot({}, {})
    snap = snapshot({}, {})
    snap.tunnels[0].bind_port = 7001
    out, kept = set_aside(snap, Fault("tunnel", "office"), previous, use_previous=True)
    assert kept and out.tunnels[0].bind_port == 7000
    out, kept = set_aside(snap, Fault("tunnel", "office"), None, use_previous=True)
    assert not kept and not out.tunnels


def test_a_resource_the_snapshot_lacks_changes_nothing() -> None:
    snap = snapshot({"public": 80}, {"a": "public"})
    out, kept = set_aside(snap, Fault("listener", "gone"), None, use_previous=True)
    assert out == snap and not kept


names = st.sampled_from(["l1", "l2", "l3", "l4"])


@settings(max_examples=200, deadline=None)
@given(
    ports=st.dictionaries(names, st.integers(1, 65535), min_size=1),
    routes=st.dictionaries(st.text("abcdef", min_size=1, max_size=4), st.one_of(names, st.just(""))),
    previous_ports=st.dictionaries(names, st.integers(1, 65535)),
    victim=names,
    use_previous=st.booleans(),
)
def test_setting_aside_never_leaves_a_route_on_a_missing_listener(
    ports: dict[str, int], routes: dict[str, str], previous_ports: dict[str, int], victim: str, use_previous: bool
) -> None:
    routes = {n: lst for n, lst in routes.items() if not lst or lst in ports}  # a valid snapshot to start from
    snap = snapshot(ports, routes)
    previous = snapshot(previous_ports, {})
    out, kept = set_aside(snap, Fault("listener", victim), previous, use_previous=use_previous)
    listeners = {lst.name: lst.port for lst in out.listeners}
    assert all(not r.listener or r.listener in listeners for r in out.routes)
    # every other listener, and the routes of other listeners, are untouched
    assert {n: p for n, p in listeners.items() if n != victim} == {n: p for n, p in ports.items() if n != victim}
    assert {r.name for r in out.routes} >= {n for n, lst in routes.items() if lst != victim}
    if victim in ports:
        assert kept == (use_previous and victim in previous_ports)
        assert (victim in listeners) == kept
        if kept:
            assert listeners[victim] == previous_ports[victim]
    assert out.clusters == snap.clusters and out.tunnels == snap.tunnels
