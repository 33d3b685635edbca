"""dataplane.config.wirecheck: the node refuses a snapshot whose text would go on the wire
unchecked. The generic test walks every string of the Snapshot message by its descriptor, so
fields added to proto/ later are covered without editing this file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from dataplane.config.wirecheck import check_snapshot
from dataplane.policies.base import PolicyEnv
from dataplane.policies.build import PolicyBuildError, build_policies
from flux.v1 import config_pb2 as pb

MULTILINE = {
    "flux.v1.Certificate.cert_pem",
    "flux.v1.Certificate.key_pem",
    "flux.v1.Credential.public_key",
    "flux.v1.Tunnel.tls_client_ca_pem",
    "flux.v1.ListenerTls.client_ca",
    "flux.v1.UpstreamTls.ca",
}


@dataclass(frozen=True)
class Slot:
    """One place a string can sit in a snapshot: `plant(snapshot, text)` puts `text` there."""

    label: str  # e.g. "route.grayscale.rules[].headers key"
    field: str  # the proto field name the error must name
    multiline: bool
    plant: Callable[[pb.Snapshot, str], None]


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _slots(desc: Descriptor, label: str, reach: Callable[[Message], Message], depth: int = 0) -> Iterator[Slot]:
    """Every string place under a message reached by `reach` (which creates what it needs)."""
    for field in desc.fields:
        here = f"{label}.{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.name == "name" and depth == 0:
                continue  # the resource's own name: planted on a resource named by it (below)

            def plant(snap: Message, text: str, f: FieldDescriptor = field, r: Callable = reach) -> None:
                msg = r(snap)
                if f.is_repeated:
                    getattr(msg, f.name).append(text)
                else:
                    setattr(msg, f.name, text)

            yield Slot(here, field.name, field.full_name in MULTILINE, plant)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.full_name.startswith("google.protobuf.") or depth > 4:
                continue  # policy configs (Struct): checked by the policy schemas, see below
            if _is_map(field):
                key_f, value_f = sub.fields_by_name["key"], sub.fields_by_name["value"]
                if key_f.type == FieldDescriptor.TYPE_STRING:

                    def plant_key(snap: Message, text: str, f: FieldDescriptor = field, r: Callable = reach) -> None:
                        value_type = f.message_type.fields_by_name["value"]
                        m = getattr(r(snap), f.name)
                        if value_type.type == FieldDescriptor.TYPE_MESSAGE:
                            m[text].SetInParent()
                        else:
                            m[text] = type(value_type.default_value)()

                    yield Slot(f"{here} key", field.name, False, plant_key)
                if value_f.type == FieldDescriptor.TYPE_STRING:

                    def plant_value(snap: Message, text: str, f: FieldDescriptor = field, r: Callable = reach) -> None:
                        getattr(r(snap), f.name)["k"] = text

                    yield Slot(f"{here} value", field.name, False, plant_value)
                continue

            def step(snap: Message, f: FieldDescriptor = field, r: Callable = reach) -> Message:
                parent = r(snap)
                if f.is_repeated:
                    items = getattr(parent, f.name)
                    return items[0] if len(items) else items.add()
                child = getattr(parent, f.name)
                child.SetInParent()
                return child

            yield from _slots(sub, here + ("[]" if field.is_repeated else ""), step, depth + 1)


def all_slots() -> list[Slot]:
    out = []
    for field in pb.Snapshot.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            out.append(Slot(f"snapshot.{field.name}", field.name, False, lambda s, t, n=field.name: setattr(s, n, t)))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.is_repeated:

            def resource(snap: Message, n: str = field.name) -> Message:
                items = getattr(snap, n)
                return items[0] if len(items) else items.add(name="res")

            kind = field.message_type.name.lower()
            out += list(_slots(field.message_type, kind, resource))
            out.append(Slot(f"{kind}.name", "name", False, lambda s, t, r=resource: setattr(r(s), "name", t)))
    return out


SLOTS = all_slots()


def test_the_walk_finds_the_fields_that_matter() -> None:
    labels = {s.label for s in SLOTS}
    for expected in (
        "route.prefix_rewrite",
        "route.host_rewrite",
        "route.headers key",
        "route.headers value",
        "route.grayscale.rules[].headers key",
        "cluster.endpoints[].metadata value",
        "cluster.health_check.path",
        "certificate.cert_pem",
        "tunnel.subdomain_host",
        "consumer.credentials[].secret",
        "policy.type",
    ):
        assert expected in labels
    assert len(SLOTS) > 60


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\x1b"], ids=["CR", "LF", "NUL", "ESC"])
@pytest.mark.parametrize("slot", SLOTS, ids=lambda s: s.label)
def test_every_string_of_a_snapshot_refuses_control_characters(slot: Slot, bad: str) -> None:
    snap = pb.Snapshot(version="7", node_group="default")
    slot.plant(snap, f"/a{bad}b")
    if slot.multiline and bad in "\r\n":
        check_snapshot(snap)  # PEM blocks span lines
        return
    with pytest.raises(ValueError) as info:
        check_snapshot(snap)
    message = str(info.value)
    assert slot.field in message
    assert "control character" in message
    if not slot.label.startswith("snapshot."):
        assert message.startswith(f"{slot.label.split('.')[0]} ")


def test_a_clean_snapshot_passes() -> None:
    snap = pb.Snapshot(version="3", node_group="default")
    snap.listeners.add(name="public", address="0.0.0.0", port=8080, protocol=pb.PROTOCOL_HTTP)
    c = snap.clusters.add(name="orders", hash_on="header:x-user")
    c.endpoints.add(address="10.0.0.1", port=9001, weight=1, metadata={"zone": "a"})
    c.health_check.path = "/healthz?full=1"
    c.health_check.host = "orders.internal:8080"
    r = snap.routes.add(name="api", path="/orders", prefix_rewrite="/v2/orders", host_rewrite="orders.internal")
    r.headers["x-canary"] = "true"
    r.grayscale.rules.add(headers={"x-beta": "1"}, cookies={"beta": "yes"}, version="v2")
    snap.certificates.add(name="c", snis=["a.example"], cert_pem="-----BEGIN-----\r\nAA==\n", key_pem="K\nK\n")
    snap.tunnels.add(name="t", subdomain_host="tunnel.example.com", tokens=["secret"])
    p = snap.policies.add(name="p", type="redirect")
    p.config.update({"to": "https://example.com/"})
    check_snapshot(snap)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda s: s.routes.add(name="r", prefix_rewrite="/x HTTP/1.1"), "route 'r': prefix_rewrite: "),
        (lambda s: s.routes.add(name="r", prefix_rewrite="/x?y=1"), "route 'r': prefix_rewrite: "),
        (lambda s: s.routes.add(name="r", host_rewrite="a b"), "route 'r': host_rewrite: "),
        (lambda s: s.routes.add(name="r", host_rewrite="evil@host"), "route 'r': host_rewrite: "),
        (lambda s: s.routes.add(name="r", headers={"x a": "1"}), "route 'r': headers key 'x a': "),
        (lambda s: s.routes.add(name="r").grayscale.rules.add(headers={"a:b": "1"}), "route 'r': grayscale.rules[0]"),
        (lambda s: s.clusters.add(name="c").health_check.SetInParent() or s.clusters[0].health_check.__setattr__(
            "path", "/a b"), "cluster 'c': health_check.path: "),
        (lambda s: s.tunnels.add(name="t", subdomain_host="t.example:80"), "tunnel 't': subdomain_host: "),
        (lambda s: s.clusters.add(name="c").session_affinity.__setattr__("cookie", "a;b"),
         "cluster 'c': session_affinity.cookie: "),
    ],
)  # fmt: skip
def test_semantic_checks_of_what_goes_into_requests(build: Callable[[pb.Snapshot], object], expected: str) -> None:
    snap = pb.Snapshot(version="1")
    build(snap)
    with pytest.raises(ValueError) as info:
        check_snapshot(snap)
    assert str(info.value).startswith(expected), str(info.value)


def test_the_reproducer_from_the_issue_is_refused_by_the_node() -> None:
    snap = pb.Snapshot(version="1")
    snap.routes.add(name="x", path="/", prefix_rewrite="/x HTTP/1.1\r\nX-Injected: 1\r\nY: ")
    with pytest.raises(ValueError, match=r"^route 'x': prefix_rewrite: a control character \(CR\)"):
        check_snapshot(snap)


@pytest.mark.parametrize(
    ("ptype", "config", "field"),
    [
        ("redirect", {"to": "/a\r\nSet-Cookie: x=1"}, "config.to"),
        ("request_rewrite", {"path_prefix": "/x HTTP/1.1\r\nX: 1"}, "config.path_prefix"),
        ("request_rewrite", {"path_regex": ["^/(.*)", "/\\n\\1"]}, "config.path_regex"),
        ("cors", {"allow_headers": ["X-A\r\nX-B: 1"]}, "config.allow_headers"),
        ("circuit_breaker", {"fallback": {"headers": {"X-A": "1\r\nX-B: 2"}}}, "config.fallback.headers"),
        ("circuit_breaker", {"fallback": {"body": "a\x00b"}}, "config.fallback.body"),
        ("jwt", {"forward_header": "X-Claims\r\n"}, "config.forward_header"),
        ("api_key", {"header": "api key"}, "config.header"),
    ],
)
def test_policy_configs_in_a_snapshot_get_the_same_checks(ptype: str, config: dict, field: str) -> None:
    """Policy configs travel as a Struct, skipped by check_snapshot: build_policies parses
    them with the same schemas the control plane used, and refuses them naming the field."""
    policy = pb.Policy(name="p", type=ptype)
    policy.config.update(config)
    with pytest.raises(PolicyBuildError) as info:
        build_policies([policy], PolicyEnv())
    assert f"policy 'p': {field}" in str(info.value)


def test_a_multiline_fallback_body_is_fine() -> None:
    policy = pb.Policy(name="p", type="circuit_breaker")
    policy.config.update({"fallback": {"body": '{"error":\n "down"}\r\n', "headers": {"Retry-After": "5"}}})
    assert "p" in build_policies([policy], PolicyEnv())
