"""Resource specs (controlplane/spec) and cross-resource checks (controlplane/validation)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support.tls import self_signed

from controlplane.spec import (
    CertificateSpec,
    ClusterSpec,
    ConfigSet,
    ConsumerSpec,
    ListenerSpec,
    PolicySpec,
    RouteSpec,
    TunnelSpec,
)
from controlplane.spec._types import MASK
from controlplane.spec.consumer import ApiKeyCredential, BasicAuthCredential, JwtCredential
from controlplane.validation import FieldError, check_config, referrers
from fluxcommon.durations import MAX_DURATION_MS, format_duration_ms, parse_duration_ms
from fluxcommon.netaddr import check_address, check_host_pattern
from fluxcommon.secrets import verify_password

NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"


def cfg(**kinds: list) -> ConfigSet:
    return ConfigSet({plural: {s.name: s for s in specs} for plural, specs in kinds.items()})


def cluster(name: str = "orders", port: int = 9001) -> ClusterSpec:
    return ClusterSpec(name=name, endpoints=[{"address": "127.0.0.1", "port": port}])


def errors_of(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]), str(e["msg"])) for e in exc.errors()]


# -- references ----------------------------------------------------------------------------


def test_route_to_unknown_cluster_is_an_error_naming_the_field() -> None:
    c = cfg(clusters=[cluster()], routes=[RouteSpec(name="r", cluster="nope")])
    assert check_config(c) == [FieldError("routes/r", "cluster", "unknown cluster 'nope'")]


def test_weighted_split_to_unknown_cluster_names_clusters_field() -> None:
    route = RouteSpec(name="r", clusters=[{"name": "orders", "weight": 90}, {"name": "v2", "weight": 10}])
    assert check_config(cfg(clusters=[cluster()], routes=[route])) == [
        FieldError("routes/r", "clusters", "unknown cluster 'v2'")
    ]


def test_route_unknown_listener_policy_and_tcp_listener() -> None:
    tcp = ListenerSpec(name="raw", protocol="tcp", port=9000, cluster="orders")
    bad = [
        RouteSpec(name="a", cluster="orders", listener="ghost"),
        RouteSpec(name="b", cluster="orders", listener="raw"),
        RouteSpec(name="c", cluster="orders", policies=["rl"]),
    ]
    errs = check_config(cfg(clusters=[cluster()], listeners=[tcp], routes=bad))
    assert FieldError("routes/a", "listener", "unknown listener 'ghost'") in errs
    assert any(e.resource == "routes/b" and e.field == "listener" and "tcp" in e.message for e in errs)
    assert FieldError("routes/c", "policies", "unknown policy 'rl'") in errs
    assert len(errs) == 3


def test_valid_config_has_no_errors_and_referrers_are_found() -> None:
    c = cfg(
        listeners=[ListenerSpec(name="public", port=8080)],
        clusters=[cluster(), cluster("v2", 9002)],
        policies=[PolicySpec(name="rl", type="rate_limit", config={"rate": 10})],
        routes=[
            RouteSpec(name="r1", listener="public", cluster="orders", policies=["rl"]),
            RouteSpec(name="r2", clusters=[{"name": "orders", "weight": 1}, {"name": "v2", "weight": 1}]),
        ],
    )
    assert check_config(c) == []
    assert referrers(c, "clusters", "orders") == ["routes/r1", "routes/r2"]
    assert referrers(c, "clusters", "v2") == ["routes/r2"]
    assert referrers(c, "listeners", "public") == ["routes/r1"]
    assert referrers(c, "policies", "rl") == ["routes/r1"]
    assert referrers(c, "routes", "r1") == []


# -- duplicates ----------------------------------------------------------------------------


def test_duplicate_names_inside_a_resource_are_rejected() -> None:
    with pytest.raises(ValidationError, match=r"duplicate endpoint 127\.0\.0\.1:9001"):
        ClusterSpec(name="c", endpoints=[{"address": "127.0.0.1", "port": 9001}] * 2)
    with pytest.raises(ValidationError, match="named twice"):
        RouteSpec(name="r", clusters=[{"name": "a", "weight": 1}, {"name": "a", "weight": 2}])
    mapping = {"name": "m", "agent": "a", "remote_port": 6001, "local_port": 22}
    with pytest.raises(ValidationError, match="duplicate mapping 'm'"):
        TunnelSpec(name="t", token="x", allow_ports="6000-6999", mappings=[mapping, mapping])
    with pytest.raises(ValidationError, match="a second jwt credential"):
        ConsumerSpec(
            name="a",
            credentials=[{"type": "jwt", "issuer": "i", "secret": "s" * 16}] * 2,
        )


def test_same_credential_on_two_consumers_is_an_error() -> None:
    a = ConsumerSpec(name="a", credentials=[{"type": "api_key", "key": "shared-key-123"}])
    b = ConsumerSpec(name="b", credentials=[{"type": "api_key", "key": "shared-key-123"}])
    errs = check_config(cfg(consumers=[a, b]))
    assert errs == [FieldError("consumers/b", "credentials[0]", "this api key already belongs to consumer 'a'")]
    c = ConsumerSpec(name="c", credentials=[{"type": "basic_auth", "username": "a", "password": "x"}])
    d = ConsumerSpec(name="d", credentials=[{"type": "basic_auth", "username": "a", "password": "y"}])
    assert [e.field for e in check_config(cfg(consumers=[c, d]))] == ["credentials[0]"]


# -- ports ---------------------------------------------------------------------------------


def _listener(name: str, port: int, group: str = "default", address: str = "0.0.0.0", **kw: object) -> ListenerSpec:
    return ListenerSpec(name=name, port=port, node_group=group, address=address, **kw)


def test_port_conflict_in_one_node_group() -> None:
    errs = check_config(cfg(listeners=[_listener("a", 8080), _listener("b", 8080)]))
    assert len(errs) == 1
    assert errs[0].resource == "listeners/b" and errs[0].field == "port"
    assert "tcp port 8080 is already used by listeners/a in node group 'default'" in errs[0].message


def test_no_port_conflict_across_groups_addresses_or_transports() -> None:
    c = cfg(
        clusters=[cluster()],
        listeners=[
            _listener("a", 8080, "default"),
            _listener("b", 8080, "edge"),
            _listener("c", 9090, address="127.0.0.1"),
            _listener("d", 9090, address="127.0.0.2"),
            _listener("e", 8080, protocol="udp", cluster="orders"),
        ],
    )
    assert check_config(c) == []


def test_wildcard_and_specific_address_conflict() -> None:
    errs = check_config(cfg(listeners=[_listener("a", 9090, address="127.0.0.1"), _listener("b", 9090)]))
    assert [(e.resource, e.field) for e in errs] == [("listeners/b", "port")]
    same = check_config(cfg(listeners=[_listener("a", 9090, address="::1"), _listener("b", 9090, address="::1")]))
    assert len(same) == 1


def test_tunnel_ports_conflict_with_listeners_but_vhost_may_share_http_listener() -> None:
    tun = TunnelSpec(name="t", token="secret", bind_port=8080, allow_ports="6000-6999")
    errs = check_config(cfg(listeners=[_listener("a", 8080)], tunnels=[tun]))
    assert [(e.resource, e.field) for e in errs] == [("tunnels/t", "bind_port")]

    shared = TunnelSpec(name="t", token="secret", bind_port=7000, vhost_http_port=8080)
    assert check_config(cfg(listeners=[_listener("a", 8080)], tunnels=[shared])) == []
    other_group = TunnelSpec(name="t", token="s", node_group="edge", bind_port=8080)
    assert check_config(cfg(listeners=[_listener("a", 8080)], tunnels=[other_group])) == []
    mapped = TunnelSpec(
        name="t",
        token="s",
        bind_port=7000,
        allow_ports="8000-8999",
        mappings=[{"name": "m", "agent": "x", "remote_port": 8080, "local_port": 22}],
    )
    errs = check_config(cfg(listeners=[_listener("a", 8080)], tunnels=[mapped]))
    assert [(e.resource, e.field) for e in errs] == [("tunnels/t", "mappings[0].remote_port")]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["default", "edge"]), st.integers(8000, 8005)), max_size=8))
def test_port_conflicts_found_exactly_when_group_and_port_repeat(claims: list[tuple[str, int]]) -> None:
    listeners = [_listener(f"l{i}", port, group) for i, (group, port) in enumerate(claims)]
    errs = check_config(cfg(listeners=listeners))
    seen: set[tuple[str, int]] = set()
    expected = []
    for i, key in enumerate(claims):
        if key in seen:
            expected.append(f"listeners/l{i}")
        seen.add(key)
    assert sorted(e.resource for e in errs) == sorted(expected)
    assert all(e.field == "port" for e in errs)


# -- single-resource field checks ----------------------------------------------------------


def test_bad_regex_paths_and_policies() -> None:
    with pytest.raises(ValidationError, match="bad regex"):
        RouteSpec(name="r", cluster="c", path="/(unclosed", path_type="regex")
    assert RouteSpec(name="r", cluster="c", path=r"^/v\d+/", path_type="regex").path == r"^/v\d+/"
    with pytest.raises(ValidationError, match="bad regex"):
        PolicySpec(name="ua", type="ua_filter", config={"deny": ["[a-"]})
    with pytest.raises(ValidationError, match="must start with '/'"):
        RouteSpec(name="r", cluster="c", path="orders")


@pytest.mark.parametrize("weight", [0, -1, -100])
def test_weight_must_be_positive(weight: int) -> None:
    with pytest.raises(ValidationError) as exc:
        ClusterSpec(name="c", endpoints=[{"address": "127.0.0.1", "port": 1, "weight": weight}])
    assert errors_of(exc.value)[0][0] == "endpoints.0.weight"
    with pytest.raises(ValidationError) as exc:
        RouteSpec(name="r", clusters=[{"name": "c", "weight": weight}])
    assert errors_of(exc.value)[0][0] == "clusters.0.weight"


@pytest.mark.parametrize(
    "address", ["999.1.1.1", "not a host", "-leading.example", "a..b", "exa_mple.com", "", "x" * 64 + ".com"]
)
def test_bad_endpoint_address(address: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ClusterSpec(name="c", endpoints=[{"address": address, "port": 80}])
    assert errors_of(exc.value)[0][0] == "endpoints.0.address"


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "orders.internal", "svc-1.ns.cluster.local", "localhost"])
def test_good_endpoint_address(address: str) -> None:
    assert check_address(address) == address
    assert ClusterSpec(name="c", endpoints=[{"address": address, "port": 80}]).endpoints[0].address == address


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_range(port: int) -> None:
    with pytest.raises(ValidationError) as exc:
        ListenerSpec(name="l", port=port)
    assert errors_of(exc.value)[0][0] == "port"


@pytest.mark.parametrize(
    "spec_type, body, field",
    [
        (ListenerSpec, {"name": "l", "port": 80, "portt": 81}, "portt"),
        (
            ClusterSpec,
            {"name": "c", "endpoints": [{"address": "a", "port": 1, "wieght": 2}]},
            "endpoints.0.wieght",
        ),
        (RouteSpec, {"name": "r", "cluster": "c", "retry": {"attempts": 1, "tries": 2}}, "retry.tries"),
        (PolicySpec, {"name": "p", "type": "cors", "extra": 1}, "extra"),
        (TunnelSpec, {"name": "t", "token": "x", "bind": 1}, "bind"),
    ],
)
def test_unknown_fields_are_errors(spec_type: type, body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        spec_type.model_validate(body)
    assert (field, "Extra inputs are not permitted") in errors_of(exc.value)


def test_unknown_policy_config_key_names_the_key() -> None:
    with pytest.raises(ValidationError, match=r"config\.rat: Extra inputs"):
        PolicySpec(name="p", type="rate_limit", config={"rate": 1, "rat": 2})
    with pytest.raises(ValidationError, match=r"config\.rate"):
        PolicySpec(name="p", type="rate_limit", config={"rate": 0})
    with pytest.raises(ValidationError, match="type"):
        PolicySpec.model_validate({"name": "p", "type": "teleport"})


def test_protocol_specific_listener_fields() -> None:
    with pytest.raises(ValidationError, match="needs the cluster"):
        ListenerSpec(name="l", protocol="tcp", port=9000)
    with pytest.raises(ValidationError, match="pick clusters by route"):
        ListenerSpec(name="l", protocol="http", port=80, cluster="c")
    with pytest.raises(ValidationError, match="needs at least one certificate"):
        ListenerSpec(name="l", protocol="https", port=443)


def test_route_needs_exactly_one_of_cluster_or_clusters() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        RouteSpec(name="r")
    with pytest.raises(ValidationError, match="exactly one"):
        RouteSpec(name="r", cluster="a", clusters=[{"name": "b", "weight": 1}])


def test_route_normalises_methods_hosts_headers() -> None:
    r = RouteSpec(name="r", cluster="c", methods=["get", "Post"], hosts=["API.Example.COM"], headers={"X-Canary": "1"})
    assert r.methods == ["GET", "POST"]
    assert r.hosts == ["api.example.com"]
    assert r.headers == {"x-canary": "1"}
    with pytest.raises(ValidationError, match="unknown HTTP method"):
        RouteSpec(name="r", cluster="c", methods=["FETCH"])
    with pytest.raises(ValidationError, match="bad header name"):
        RouteSpec(name="r", cluster="c", headers={"bad header": "1"})


def test_cluster_consistency_rules() -> None:
    with pytest.raises(ValidationError, match="either endpoints or service"):
        ClusterSpec(name="c", endpoints=[{"address": "a", "port": 1}], service="orders")
    with pytest.raises(ValidationError, match="needs hash_on"):
        ClusterSpec(name="c", lb="consistent_hash")
    with pytest.raises(ValidationError, match="only used with lb: consistent_hash"):
        ClusterSpec(name="c", hash_on="ip")
    assert ClusterSpec(name="c", service="orders").service.name == "orders"  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="interval"):
        ClusterSpec(name="c", health_check={"interval": "50ms", "timeout": "10ms"})


# -- names ---------------------------------------------------------------------------------


SQL_INJECTIONS = [
    "x'; DROP TABLE routes;--",
    "a' OR '1'='1",
    'r" OR 1=1 --',
    "name;DELETE FROM clusters",
    "../../etc/passwd",
    "a b",
    "-leading-dash",
    "_under",
    "x" * 64,
    "",
    "résumé",
    "a/b",
]


@pytest.mark.parametrize("name", SQL_INJECTIONS)
@pytest.mark.parametrize("spec_type", [ClusterSpec, RouteSpec, ListenerSpec, PolicySpec, ConsumerSpec])
def test_injection_looking_names_are_rejected(spec_type: type, name: str) -> None:
    with pytest.raises(ValidationError) as exc:
        spec_type.model_validate({"name": name})
    assert "name" in [loc for loc, _ in errors_of(exc.value)]


@given(st.from_regex(NAME_RE, fullmatch=True))
def test_every_name_matching_the_pattern_is_accepted(name: str) -> None:
    assert cluster(name).name == name


@given(st.text(min_size=1, max_size=70))
def test_names_outside_the_pattern_are_rejected(name: str) -> None:
    foreign = [c for c in name if not c.isspace() and not re.fullmatch(r"[A-Za-z0-9._-]", c)]
    try:
        spec = ClusterSpec(name=name)
    except ValidationError:
        assert not re.fullmatch(NAME_RE, name), "a name matching the pattern was refused"
    else:
        assert not foreign, f"accepted a name with {foreign!r}"
        assert re.fullmatch(NAME_RE, spec.name) and spec.name in name  # at most surrounding whitespace stripped


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, ms",
    [
        ("500ms", 500),
        ("5s", 5000),
        ("1m30s", 90_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1.5s", 1500),
        (" 10S ", 10_000),
        ("0", 0),
        ("2.5", 2500),
        (3, 3000),
        (0.25, 250),
        ("1h1m1s1ms", 3_661_001),
    ],
)
def test_parse_duration(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["", "5x", "-1s", "s", "1s 2", "1 s", "ms", True, None, -1, [], "1m-30s"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(bad)


@given(st.integers(min_value=0, max_value=MAX_DURATION_MS))
def test_duration_round_trip(ms: int) -> None:
    text = format_duration_ms(ms)
    assert parse_duration_ms(text) == ms
    assert re.fullmatch(r"\d+(ms|s|m|h|d)", text)


@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from(["d", "h", "m", "s", "ms"])), min_size=1, max_size=5))
def test_composite_durations_add_up(parts: list[tuple[int, str]]) -> None:
    unit = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    text = "".join(f"{n}{u}" for n, u in parts)
    total = sum(n * unit[u] for n, u in parts)
    if total > MAX_DURATION_MS:
        with pytest.raises(ValueError, match="at most 365d"):
            parse_duration_ms(text)
        return
    assert parse_duration_ms(text) == total
    assert parse_duration_ms(format_duration_ms(total)) == total


def test_durations_in_specs_read_back_as_text() -> None:
    c = ClusterSpec(name="c", timeouts={"connect": "1500ms", "read": 90})
    assert c.timeouts.connect == 1500 and c.timeouts.read == 90_000
    dumped = c.model_dump(mode="json")["timeouts"]
    assert dumped["connect"] == "1500ms" and dumped["read"] == "90s"
    assert ClusterSpec.model_validate(c.model_dump(mode="json")) == c
    with pytest.raises(ValidationError) as exc:
        ClusterSpec(name="c", timeouts={"connect": "soon"})
    assert errors_of(exc.value)[0][0] == "timeouts.connect"


# -- host patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, expected",
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("*.example.com", "*.example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("localhost", "localhost"),
    ],
)
def test_host_patterns(host: str, expected: str) -> None:
    assert check_host_pattern(host) == expected


@pytest.mark.parametrize(
    "host", ["*", "api.*.com", "example.com:8080", "a..b", "*.10.0.0.1", "-x.com", "ex ample.com", "**.x.com"]
)
def test_bad_host_patterns(host: str) -> None:
    with pytest.raises(ValueError):
        check_host_pattern(host)
    with pytest.raises(ValidationError):
        RouteSpec(name="r", cluster="c", hosts=[host])


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.lists(_label, min_size=2, max_size=4), st.booleans())
def test_generated_host_names_are_accepted(labels: list[str], wildcard: bool) -> None:
    if all(label.isdigit() for label in labels):
        labels[-1] = "com"
    host = ("*." if wildcard else "") + ".".join(labels)
    assert check_host_pattern(host.upper()) == host


# -- secrets -------------------------------------------------------------------------------


def test_api_key_is_stored_hashed_and_masked() -> None:
    c = ConsumerSpec(name="alice", credentials=[{"type": "api_key", "key": "alice-key-123456"}])
    cred = c.credentials[0]
    assert isinstance(cred, ApiKeyCredential)
    assert cred.key is None
    assert cred.key_sha256 == hashlib.sha256(b"alice-key-123456").hexdigest()
    assert "alice-key-123456" not in c.model_dump_json()
    masked = c.masked()["credentials"][0]
    assert masked["key"] == MASK
    # A keyed HMAC (controlplane.fingerprints), not a prefix of the unsalted SHA-256.
    assert re.fullmatch(r"hmac-sha256:[0-9a-f]{16}", masked["fingerprint"])
    assert masked["fingerprint"].removeprefix("hmac-sha256:") not in cred.key_sha256
    assert "key_sha256" not in masked


def test_jwt_secret_and_basic_auth_password() -> None:
    c = ConsumerSpec(
        name="alice",
        credentials=[
            {"type": "jwt", "issuer": "idp", "secret": "0123456789abcdef!"},
            {"type": "basic_auth", "username": "alice", "password": "pa55word"},
        ],
    ).keep_secrets_from(None)
    jwt, basic = c.credentials
    assert isinstance(jwt, JwtCredential) and jwt.secret == "0123456789abcdef!"  # the node needs it
    assert isinstance(basic, BasicAuthCredential) and basic.password is None
    assert basic.password_hash and verify_password("pa55word", basic.password_hash)
    assert not verify_password("wrong", basic.password_hash)
    masked = c.masked()["credentials"]
    assert masked[0]["secret"] == MASK and masked[1]["password"] == MASK
    assert "0123456789abcdef!" not in str(masked) and "pbkdf2" not in str(masked)
    with pytest.raises(ValidationError, match="at least 16"):
        JwtCredential(type="jwt", issuer="i", secret="short")


def test_writing_a_masked_consumer_back_keeps_every_secret() -> None:
    stored = ConsumerSpec(
        name="alice",
        credentials=[
            {"type": "api_key", "key": "first-key-0001"},
            {"type": "api_key", "key": "second-key-0002"},
            {"type": "jwt", "issuer": "idp", "secret": "0123456789abcdef!"},
            {"type": "basic_auth", "username": "alice", "password": "pa55word"},
        ],
    ).keep_secrets_from(None)
    back = ConsumerSpec.model_validate(stored.masked())
    assert back.keep_secrets_from(stored) == stored
    # Reordered keys still find their own stored hash by fingerprint.
    doc = stored.masked()
    doc["credentials"][0], doc["credentials"][1] = doc["credentials"][1], doc["credentials"][0]
    swapped = ConsumerSpec.model_validate(doc).keep_secrets_from(stored)
    assert [c.key_sha256 for c in swapped.credentials[:2]] == [  # type: ignore[union-attr]
        stored.credentials[1].key_sha256,  # type: ignore[union-attr]
        stored.credentials[0].key_sha256,  # type: ignore[union-attr]
    ]
    # A masked secret with nothing stored to keep is an error, not an empty secret.
    with pytest.raises(ValueError, match="no stored secret"):
        ConsumerSpec.model_validate(
            {"name": "bob", "credentials": [{"type": "jwt", "issuer": "x", "secret": MASK}]}
        ).keep_secrets_from(None)
    with pytest.raises(ValueError, match="no stored key"):
        ConsumerSpec.model_validate(
            {"name": "bob", "credentials": [{"type": "api_key", "key": MASK}]}
        ).keep_secrets_from(None)


def test_new_password_replaces_hash_and_same_password_keeps_it() -> None:
    first = ConsumerSpec(
        name="a", credentials=[{"type": "basic_auth", "username": "a", "password": "one"}]
    ).keep_secrets_from(None)
    same = ConsumerSpec(
        name="a", credentials=[{"type": "basic_auth", "username": "a", "password": "one"}]
    ).keep_secrets_from(first)
    assert same == first  # no new salt, so re-applying the same file is a no-op
    other = ConsumerSpec(
        name="a", credentials=[{"type": "basic_auth", "username": "a", "password": "two"}]
    ).keep_secrets_from(first)
    assert other != first
    assert verify_password("two", other.credentials[0].password_hash)  # type: ignore[union-attr]


def test_tunnel_token_masked_and_kept() -> None:
    t = TunnelSpec(name="edge", token="change-me", tokens=["t2", "t3"])
    m = t.masked()
    assert m["token"] == MASK and m["tokens"] == [MASK, MASK]
    assert "change-me" not in str(m)
    assert TunnelSpec.model_validate(m).keep_secrets_from(t) == t
    partly = TunnelSpec.model_validate({**m, "tokens": [MASK, "t4"]}).keep_secrets_from(t)
    assert partly.all_tokens() == ["change-me", "t2", "t4"]
    with pytest.raises(ValueError, match="token"):
        TunnelSpec.model_validate(m).keep_secrets_from(None)


def test_certificate_key_masked_and_kept() -> None:
    cert, key = self_signed("api.example.com")
    c = CertificateSpec(name="api", snis=["api.example.com"], cert=cert, key=key)
    m = c.masked()
    assert m["key"] == MASK and m["cert"] == cert.strip()
    assert "PRIVATE KEY" not in str(m)
    assert CertificateSpec.model_validate(m).keep_secrets_from(c) == c
    with pytest.raises(ValueError, match="key"):
        CertificateSpec.model_validate(m).keep_secrets_from(None)
    _, other_key = self_signed("other")
    with pytest.raises(ValidationError, match="does not match"):
        CertificateSpec(name="api", cert=cert, key=other_key)
    with pytest.raises(ValidationError, match="not a PEM certificate"):
        CertificateSpec(name="api", cert="junk", key=key)


def test_policy_secrets_masked_and_kept() -> None:
    p = PolicySpec(
        name="o",
        type="oauth2",
        config={"introspection_url": "https://idp/introspect", "client_id": "gw", "client_secret": "s3cret"},
    )
    m = p.masked()
    assert m["config"]["client_secret"] == MASK and m["config"]["client_id"] == "gw"
    assert PolicySpec.model_validate(m).keep_secrets_from(p) == p
    with pytest.raises(ValueError, match=r"config\.client_secret"):
        PolicySpec.model_validate(m).keep_secrets_from(None)


def test_field_error_without_a_resource_reads_without_a_leading_colon() -> None:
    # POST /api/v1/auth/token/verify {"policy": "nope"} answered "message": ": policy: unknown policy 'nope'"
    assert str(FieldError("", "policy", "unknown policy 'nope'")) == "policy: unknown policy 'nope'"
    assert str(FieldError("", "", "bad")) == "bad"
    assert str(FieldError("routes/a", "cluster", "unknown cluster 'x'")) == "routes/a: cluster: unknown cluster 'x'"
    assert str(FieldError("routes/a", "", "bad")) == "routes/a: bad"


def test_a_redis_url_password_is_masked_and_kept() -> None:
    """A rate_limit's `redis: redis://:PASSWORD@host/0` read back in clear, to read tokens too."""
    config = {"rate": 5, "per": "1m", "scope": "redis", "redis": "redis://:pw-value@127.0.0.1:6379/0"}
    stored = PolicySpec(name="rl", type="rate_limit", config=config)
    read = stored.masked()
    assert read["config"]["redis"] == f"redis://:{MASK}@127.0.0.1:6379/0"
    assert "pw-value" not in str(read)
    written_back = PolicySpec(name="rl", type="rate_limit", config=read["config"]).keep_secrets_from(stored)
    assert written_back.config["redis"] == "redis://:pw-value@127.0.0.1:6379/0"
    moved = dict(read["config"], redis=f"redis://:{MASK}@10.0.0.9:6379/1")  # same password, new host
    assert PolicySpec(name="rl", type="rate_limit", config=moved).keep_secrets_from(stored).config["redis"] == (
        "redis://:pw-value@10.0.0.9:6379/1"
    )
    plain = PolicySpec(name="rl", type="rate_limit", config=dict(config, redis="redis://127.0.0.1:6379/0"))
    assert plain.masked()["config"]["redis"] == "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="nothing stored"):
        PolicySpec(name="rl", type="rate_limit", config=read["config"]).keep_secrets_from(plain)
