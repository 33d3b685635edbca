"""NEW_PROXY options as the node checks them (`fluxcommon.tunnel.protocol.proxies`).

Per proxy type: what it needs and what it may not carry, each refusal naming the field at
fault. Field checks for domains, subdomains, locations and headers (good and bad values, and
the normalisation they do). Properties: the wire form (`wire_options`) parses back to equal
options for random valid proxies of every type, and random junk is either accepted (and then
round-trips too) or refused with `ProxyOptionsError`, never anything else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fluxcommon.tunnel.protocol.proxies import (
    DOMAIN_TYPES,
    HTTP_USER_TYPES,
    PUBLIC_PORT_TYPES,
    SECRET_TYPES,
    STREAM_TYPES,
    VHOST_TYPES,
    NewProxyRequest,
    ProxyOptions,
    ProxyOptionsError,
    parse_new_proxy,
    wire_options,
)

ALL_TYPES = ("tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp")

# The least each type needs to be accepted.
MINIMAL: dict[str, dict[str, Any]] = {
    "tcp": {},
    "udp": {},
    "http": {"custom_domains": ["app.example.com"]},
    "https": {"custom_domains": ["app.example.com"]},
    "tcpmux": {"custom_domains": ["app.example.com"]},
    "stcp": {"secret_key": "s3cret"},
    "sudp": {"secret_key": "s3cret"},
    "xtcp": {"secret_key": "s3cret"},
}


def accept(proxy_type: str, name: str = "alice.web", **options: Any) -> NewProxyRequest:
    return parse_new_proxy(name, proxy_type, {**MINIMAL[proxy_type], **options})


def refuse(proxy_type: str, field: str, name: str = "alice.web", **options: Any) -> str:
    """Refused, naming the proxy and `field`; returns the message."""
    with pytest.raises(ProxyOptionsError) as info:
        parse_new_proxy(name, proxy_type, {**MINIMAL[proxy_type], **options})
    message = str(info.value)
    assert message.startswith(f"proxy {name!r}: "), message
    assert f"{field}:" in message, message
    return message


# -- the types ----------------------------------------------------------------------------


def test_type_sets_partition_the_proxy_types() -> None:
    assert set(ALL_TYPES) == PUBLIC_PORT_TYPES | DOMAIN_TYPES | SECRET_TYPES
    assert VHOST_TYPES < DOMAIN_TYPES and {"http", "tcpmux"} == HTTP_USER_TYPES
    assert not PUBLIC_PORT_TYPES & DOMAIN_TYPES and not DOMAIN_TYPES & SECRET_TYPES
    assert not PUBLIC_PORT_TYPES & SECRET_TYPES
    assert set(ALL_TYPES) - {"udp", "sudp"} == STREAM_TYPES


@pytest.mark.parametrize("proxy_type", ALL_TYPES)
def test_the_minimal_proxy_of_each_type_is_accepted(proxy_type: str) -> None:
    request = accept(proxy_type)
    assert request.name == "alice.web"
    assert request.proxy_type == proxy_type
    assert isinstance(request.options, ProxyOptions)


def test_options_default_to_nothing_and_the_wire_form_of_defaults_is_empty() -> None:
    options = ProxyOptions()
    assert options.remote_port == 0 and options.custom_domains == () and options.subdomain == ""
    assert not options.use_encryption and not options.use_compression and options.bandwidth_limit == 0
    assert wire_options(options) == {}
    assert parse_new_proxy("p", "tcp", {}).options == options


def test_proxy_options_error_is_a_value_error() -> None:
    assert issubclass(ProxyOptionsError, ValueError)


def test_options_are_frozen() -> None:
    options = accept("tcp", remote_port=6000).options
    with pytest.raises(ValidationError):
        options.remote_port = 7000  # type: ignore[misc]


@pytest.mark.parametrize("proxy_type", ["http", "https"])
def test_a_vhost_proxy_needs_a_domain_or_a_subdomain(proxy_type: str) -> None:
    message = refuse(proxy_type, "custom_domains", custom_domains=[])
    assert "custom_domains or a subdomain" in message
    assert accept(proxy_type, custom_domains=[], subdomain="web").options.subdomain == "web"


@pytest.mark.parametrize("proxy_type", sorted(SECRET_TYPES))
def test_a_secret_proxy_needs_a_secret_key(proxy_type: str) -> None:
    message = refuse(proxy_type, "secret_key", secret_key="")
    assert proxy_type in message
    assert accept(proxy_type, allow_users=["bob", "*"]).options.allow_users == ("bob", "*")


@pytest.mark.parametrize("proxy_type", sorted(PUBLIC_PORT_TYPES))
def test_tcp_and_udp_take_a_remote_port_in_range(proxy_type: str) -> None:
    assert accept(proxy_type, remote_port=0).options.remote_port == 0
    assert accept(proxy_type, remote_port=65535).options.remote_port == 65535
    refuse(proxy_type, "remote_port", remote_port=65536)
    refuse(proxy_type, "remote_port", remote_port=-1)
    refuse(proxy_type, "remote_port", remote_port="not a port")


@pytest.mark.parametrize("proxy_type", sorted(VHOST_TYPES | SECRET_TYPES))
def test_only_tcp_and_udp_take_a_remote_port(proxy_type: str) -> None:
    message = refuse(proxy_type, "remote_port", remote_port=6000)
    assert f"not {proxy_type}" in message


@pytest.mark.parametrize("proxy_type", [t for t in ALL_TYPES if t != "http"])
@pytest.mark.parametrize(
    "option",
    [
        {"locations": ["/api"]},
        {"host_header_rewrite": "internal.svc"},
        {"request_headers": {"X-From": "tunnel"}},
        {"response_headers": {"X-Served-By": "flux"}},
    ],
    ids=["locations", "host_header_rewrite", "request_headers", "response_headers"],
)
def test_http_only_options_are_refused_on_other_types(proxy_type: str, option: dict[str, Any]) -> None:
    message = refuse(proxy_type, "locations", **option)
    assert "are for http proxies" in message


@pytest.mark.parametrize("proxy_type", [t for t in ALL_TYPES if t not in ("http", "tcpmux")])
@pytest.mark.parametrize("option", [{"http_user": "u", "http_password": "p"}, {"route_by_http_user": "u"}])
def test_basic_auth_users_are_for_http_and_tcpmux_only(proxy_type: str, option: dict[str, Any]) -> None:
    assert "are for http and tcpmux proxies" in refuse(proxy_type, "http_user", **option)


@pytest.mark.parametrize("proxy_type", ["http", "tcpmux"])
def test_http_and_tcpmux_take_basic_auth_and_route_by_user(proxy_type: str) -> None:
    o = accept(proxy_type, http_user="alice", http_password="pw", route_by_http_user="alice").options
    assert (o.http_user, o.http_password, o.route_by_http_user) == ("alice", "pw", "alice")


def test_tcpmux_needs_a_name_and_takes_no_port() -> None:
    refuse("tcpmux", "custom_domains", custom_domains=[])
    refuse("tcpmux", "remote_port", remote_port=6000)
    refuse("tcp", "custom_domains", custom_domains=["a.example.com"])


def test_http_takes_every_http_option() -> None:
    options = accept(
        "http",
        locations=["/api", ""],
        http_user="u",
        http_password="p",
        host_header_rewrite="internal.svc",
        request_headers={"X-From": "tunnel"},
        response_headers={"X-Served-By": "flux"},
    ).options
    assert options.locations == ("/api", "")
    assert (options.http_user, options.http_password) == ("u", "p")
    assert options.host_header_rewrite == "internal.svc"
    assert options.request_headers == {"X-From": "tunnel"}
    assert options.response_headers == {"X-Served-By": "flux"}


@pytest.mark.parametrize("option", [{"http_user": "u"}, {"http_password": "p"}])
def test_http_user_and_password_go_together(option: dict[str, str]) -> None:
    message = refuse("http", "http_password", **option)
    assert "go together" in message


@pytest.mark.parametrize("proxy_type", ALL_TYPES)
def test_a_group_key_needs_a_group(proxy_type: str) -> None:
    refuse(proxy_type, "group_key", group_key="k")
    options = accept(proxy_type, group="g", group_key="k").options
    assert (options.group, options.group_key) == ("g", "k")


def test_proxy_protocol_is_refused_on_udp_only() -> None:
    refuse("udp", "proxy_protocol", proxy_protocol="v1")
    for proxy_type in ("tcp", "http", "https", "stcp", "xtcp", "sudp"):
        assert accept(proxy_type, proxy_protocol="v2").options.proxy_protocol == "v2"
    refuse("tcp", "proxy_protocol", proxy_protocol="v3")


def test_bandwidth_limit_is_not_negative() -> None:
    assert accept("tcp", bandwidth_limit=1 << 20).options.bandwidth_limit == 1 << 20
    refuse("tcp", "bandwidth_limit", bandwidth_limit=-1)


def test_unknown_options_are_refused_by_name() -> None:
    refuse("tcp", "local_port", local_port=8080)  # stays on the agent, never sent
    refuse("http", "customDomains", customDomains=["a.example.com"])  # frpc.toml spelling is not the wire form


def test_name_and_type_are_checked() -> None:
    with pytest.raises(ProxyOptionsError, match=r"^proxy '': name: "):
        parse_new_proxy("", "tcp", {})
    with pytest.raises(ProxyOptionsError, match=r": name: "):
        parse_new_proxy("x" * 129, "tcp", {})
    assert parse_new_proxy("x" * 128, "tcp", {}).name == "x" * 128
    with pytest.raises(ProxyOptionsError, match=r"^proxy 'p': proxy_type: "):
        parse_new_proxy("p", "ftp", {})


@pytest.mark.parametrize("options", [None, [], "custom_domains", 7])
def test_options_that_are_not_an_object_are_refused(options: Any) -> None:
    with pytest.raises(ProxyOptionsError, match=r"^proxy 'p': "):
        parse_new_proxy("p", "tcp", options)


# -- field checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_domain", "stored"),
    [
        ("app.example.com", "app.example.com"),
        ("*.example.com", "*.example.com"),
        ("*.apps.example.com", "*.apps.example.com"),
        ("App.Example.COM", "app.example.com"),
        ("app.example.com.", "app.example.com"),
        ("  app.example.com  ", "app.example.com"),
        ("localhost", "localhost"),
        ("a_b.example.com", "a_b.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("1.2.3.4", "1.2.3.4"),
        ("a" * 63 + ".example.com", "a" * 63 + ".example.com"),
    ],
)
def test_good_domains_are_kept_normalised(given_domain: str, stored: str) -> None:
    options = accept("http", custom_domains=[given_domain]).options
    assert options.custom_domains == (stored,)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        ".",
        "*",
        "*.",
        "**.example.com",
        "a.*.example.com",
        "*.*.example.com",
        "a..example.com",
        ".example.com",
        "app example.com",
        "-app.example.com",
        "app-.example.com",
        "-",
        "app.example.-com",
        "app.example.com-",
        "app.example.com/path",
        "http://app.example.com",
        "app.example.com:8080",
        "bücher.example",
        "a" * 64 + ".example.com",
        "a\n.example.com",
    ],
)
def test_bad_domains_are_refused_by_index(bad: str) -> None:
    message = refuse("http", "custom_domains", custom_domains=["good.example.com", bad])
    assert "[1]" in message and "is not a domain name" in message


@pytest.mark.parametrize(
    ("given_sub", "stored"),
    [("web", "web"), ("Web", "web"), (" web ", "web"), ("a-1", "a-1"), ("a.b", "a.b"), ("0", "0")],
)
def test_good_subdomains_are_kept_lower_case(given_sub: str, stored: str) -> None:
    assert accept("http", custom_domains=[], subdomain=given_sub).options.subdomain == stored


@pytest.mark.parametrize("bad", ["-web", "web-", "we_b", "a..b", ".web", "web.", "*", "a b", "a/b", "a" * 64])
def test_bad_subdomains_are_refused(bad: str) -> None:
    message = refuse("http", "subdomain", custom_domains=[], subdomain=bad)
    assert "is not a valid subdomain label" in message


@pytest.mark.parametrize("good", [(), ("",), ("/",), ("/api",), ("/api/v1/",), ("/api", "/static", "")])
def test_good_locations_are_kept_as_given(good: tuple[str, ...]) -> None:
    assert accept("http", locations=list(good)).options.locations == good


@pytest.mark.parametrize("bad", ["api", "*", " /api", "api/", "./api"])
def test_locations_must_start_with_a_slash(bad: str) -> None:
    message = refuse("http", "locations", locations=["/ok", bad])
    assert "[1]" in message and "must start with '/'" in message


@pytest.mark.parametrize("field", ["request_headers", "response_headers"])
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "198.51.100.7"},
        {"x_y": ""},
        {"!#$%&'*+.^_`|~": "v"},
        {"X-Spaces": "  a value\twith tabs  "},
        {"X-A": "1", "X-B": "2"},
    ],
)
def test_good_headers_are_kept(field: str, headers: dict[str, str]) -> None:
    assert getattr(accept("http", **{field: headers}).options, field) == headers


@pytest.mark.parametrize("field", ["request_headers", "response_headers"])
@pytest.mark.parametrize("bad_name", ["", "X Y", "X:Y", "X-Ä", "X(Y)", "X\tY", "\nX"])
def test_bad_header_names_are_refused(field: str, bad_name: str) -> None:
    message = refuse("http", field, **{field: {bad_name: "v"}})
    assert "is not a header name" in message


@pytest.mark.parametrize("field", ["request_headers", "response_headers"])
@pytest.mark.parametrize("bad_value", ["a\rb", "a\nb", "a\0b", "a\r\nX-Injected: 1", "\n"])
def test_header_values_may_not_hold_cr_lf_or_nul(field: str, bad_value: str) -> None:
    message = refuse("http", field, **{field: {"X-A": bad_value}})
    assert "X-A: header values may not hold CR, LF or NUL" in message


@pytest.mark.parametrize("field", ["request_headers", "response_headers"])
@pytest.mark.parametrize("bad_value", ["5 €", "\u2028", "a\x1fb", "\x7f", "\x85", "\U0001f600"])
def test_header_values_are_printable_latin_1(field: str, bad_value: str) -> None:
    # The node's rewrite policies send them with .encode("latin-1"): anything else fails every request.
    message = refuse("http", field, **{field: {"X-A": bad_value}})
    assert "X-A: header values are printable latin-1 text" in message


@pytest.mark.parametrize(
    "good", ["internal.svc", "Internal.SVC", "localhost", "svc:8080", "10.0.0.1:80", "[::1]:8080", "bücher.example"]
)
def test_good_host_header_rewrites_are_kept_as_given(good: str) -> None:
    assert accept("http", host_header_rewrite=good).options.host_header_rewrite == good


@pytest.mark.parametrize(
    "bad",
    [
        "a..b",
        ".svc",
        "x" * 64 + ".svc",
        "-svc",
        "svc-",
        "a b",
        " svc",
        "svc/x",
        "svc:",
        "svc:0",
        "svc:65536",
        "svc:80:80",
        ":80",
        "[zz]:80",
        "[::1",
        "svc\n",
        "svc\0",
    ],
)
def test_bad_host_header_rewrites_are_refused(bad: str) -> None:
    message = refuse("http", "host_header_rewrite", host_header_rewrite=bad)
    assert repr(bad) in message


# -- regressions (header injection through `$`, options ignored on other types) ------------


@pytest.mark.parametrize("field", ["request_headers", "response_headers"])
def test_a_header_name_ending_in_a_newline_is_refused(field: str) -> None:
    refuse("http", field, **{field: {"X-A\n": "v"}})


def test_a_subdomain_label_ending_in_a_newline_is_refused() -> None:
    refuse("http", "subdomain", custom_domains=[], subdomain="a\n.b")


def test_host_header_rewrite_may_not_hold_cr_or_lf() -> None:
    refuse("http", "host_header_rewrite", host_header_rewrite="internal.svc\r\nX-Injected: 1")


@pytest.mark.parametrize("proxy_type", ["tcp", "https"])
def test_response_headers_are_refused_on_other_types(proxy_type: str) -> None:
    refuse(proxy_type, "locations", response_headers={"X-Served-By": "flux"})


# -- properties ---------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


def _spell_domain(wild: bool, labels: list[str], upper: bool, trailing_dot: bool) -> str:
    """A domain as an agent may write it (any case, a trailing dot); the node normalises it."""
    domain = ("*." if wild else "") + ".".join(labels)
    return (domain.upper() if upper else domain) + ("." if trailing_dot else "")


_labels = st.lists(_label, min_size=1, max_size=4)
_domain = st.builds(_spell_domain, st.booleans(), _labels, st.booleans(), st.booleans())
_subdomain = st.lists(_label, min_size=1, max_size=2).map(".".join)
_location = st.one_of(st.just(""), st.just("/"), st.from_regex(r"/[a-z0-9/_.-]{0,12}", fullmatch=True))
_header_name = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}", fullmatch=True)
# Printable latin-1 (and tab): what the node's rewrite policies can send.
_header_value = st.text(
    st.one_of(st.just("\t"), st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_categories=("Cc",))),
    max_size=20,
)
_host = st.builds(
    lambda labels, port: ".".join(labels) + (f":{port}" if port else ""),
    st.lists(_label, min_size=1, max_size=3),
    st.one_of(st.none(), st.integers(1, 65535)),
)
_headers = st.dictionaries(_header_name, _header_value, max_size=3)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def valid_proxies(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """A random proxy every rule accepts: (name, type, wire-like options)."""
    proxy_type = draw(st.sampled_from(ALL_TYPES))
    name = draw(st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True))
    options: dict[str, Any] = {}

    def maybe(key: str, strategy: st.SearchStrategy[Any]) -> None:
        if draw(st.booleans()):
            options[key] = draw(strategy)

    if proxy_type in PUBLIC_PORT_TYPES:
        maybe("remote_port", st.integers(0, 65535))
    if proxy_type in DOMAIN_TYPES:
        domains = draw(st.lists(_domain, max_size=3))
        subdomain = draw(st.one_of(st.just(""), _subdomain))
        if not domains and not subdomain:
            domains = [draw(_domain)]
        if domains or draw(st.booleans()):
            options["custom_domains"] = domains
        if subdomain:
            options["subdomain"] = subdomain
    if proxy_type in HTTP_USER_TYPES:
        if draw(st.booleans()):
            options["http_user"] = draw(_text.filter(bool))
            options["http_password"] = draw(_text.filter(bool))
        maybe("route_by_http_user", _text)
    if proxy_type == "http":
        maybe("locations", st.lists(_location, max_size=3))
        maybe("host_header_rewrite", st.one_of(st.just(""), _host))
        maybe("request_headers", _headers)
        maybe("response_headers", _headers)
    if proxy_type in SECRET_TYPES:
        options["secret_key"] = draw(_text.filter(bool))
        maybe("allow_users", st.lists(_text, max_size=3))
    if draw(st.booleans()):
        options["group"] = draw(_text.filter(bool))
        maybe("group_key", _text)
    maybe("use_encryption", st.booleans())
    maybe("use_compression", st.booleans())
    maybe("bandwidth_limit", st.integers(0, 1 << 40))
    if proxy_type != "udp":
        maybe("proxy_protocol", st.sampled_from(["", "v1", "v2"]))
    maybe("metadata", st.dictionaries(_text, _text, max_size=3))
    return name, proxy_type, options


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_proxies())
def test_the_wire_form_round_trips(proxy: tuple[str, str, dict[str, Any]]) -> None:
    name, proxy_type, options = proxy
    first = parse_new_proxy(name, proxy_type, options)
    wire = wire_options(first.options)
    # What an agent sends is plain JSON, and only what differs from the defaults.
    assert json.loads(json.dumps(wire)) == wire
    defaults = ProxyOptions().model_dump(mode="json")
    assert all(value != defaults[key] for key, value in wire.items())
    second = parse_new_proxy(name, proxy_type, json.loads(json.dumps(wire)))
    assert second.options == first.options
    assert second == first
    assert wire_options(second.options) == wire  # normalisation is done once


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=8,
)
_field_names = st.sampled_from(sorted(ProxyOptions.model_fields))
_junk_options = st.dictionaries(st.one_of(_field_names, _text), _json, max_size=6)
_near_valid_values = st.one_of(
    _json,
    st.lists(st.one_of(_domain, _location, _text), max_size=3),
    st.dictionaries(st.one_of(_header_name, _text), st.one_of(_header_value, _text), max_size=2),
    st.integers(-2, 70000),
    st.sampled_from(["", "v1", "v2", "/", "*.example.com", "web"]),
)
_near_valid_options = st.dictionaries(_field_names, _near_valid_values, max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.one_of(_text, st.just("p")),
    proxy_type=st.one_of(st.sampled_from(ALL_TYPES), _text),
    options=st.one_of(_junk_options, _near_valid_options, _json),
)
def test_junk_is_accepted_whole_or_refused_with_proxy_options_error(name: str, proxy_type: str, options: Any) -> None:
    try:
        request = parse_new_proxy(name, proxy_type, options)
    except ProxyOptionsError as exc:
        assert str(exc).startswith(f"proxy {name!r}: ")
        return
    # Accepted: a proxy the rules allow, whose wire form parses back to the same options.
    assert request.proxy_type in ALL_TYPES and request.name == name
    again = parse_new_proxy(name, proxy_type, wire_options(request.options))
    assert again.options == request.options
