"""Issue 12, parts 1 and 2, as an attacker tries them against a real node: path spellings that
walked around route policies, Host tricks, repeated fields read in part, proxy-only headers.

Route `/admin` (prefix) and `/secret` (exact) carry an ip_acl that refuses 127.0.0.1; a
catch-all `/` carries none. Before the fix every spelling below reached the upstream with 200
through the catch-all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support.node import UpstreamProcess
from support.processes import free_port

from .conftest import SnapshotNode, exchange, status_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, echo: UpstreamProcess) -> Iterator[dict[str, Any]]:
    port, keep_port = free_port(), free_port()
    doc = {
        "listeners": [
            {"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port},
            {
                "name": "keep",
                "protocol": "http",
                "address": "127.0.0.1",
                "port": keep_port,
                "path_normalization": {"escaped_slashes": "keep", "merge_slashes": False},
            },
        ],
        "clusters": [{"name": "echo", "endpoints": [echo.endpoint()]}],
        "policies": [
            {"name": "office-only", "type": "ip_acl", "config": {"allow": ["10.0.0.0/8"]}},
            {
                "name": "behind-lb",
                "type": "ip_acl",
                "config": {"allow": ["10.0.0.0/8"], "trusted_proxies": ["127.0.0.1/32"]},
            },
            {"name": "no-curl", "type": "ua_filter", "config": {"deny": ["curl"]}},
        ],
        "routes": [
            {"name": "admin", "path": "/admin", "cluster": "echo", "policies": ["office-only"]},
            {"name": "secret", "path": "/secret", "path_type": "exact", "cluster": "echo", "policies": ["office-only"]},
            {"name": "lb", "path": "/lb", "cluster": "echo", "policies": ["behind-lb"]},
            {"name": "ua", "path": "/ua", "cluster": "echo", "policies": ["no-curl"]},
            {"name": "api", "hosts": ["api.example.com"], "path": "/", "cluster": "echo", "policies": ["office-only"]},
            {"name": "all", "path": "/", "cluster": "echo"},
        ],
    }
    n = SnapshotNode(tmp_path_factory.mktemp("edge"), doc).start()
    try:
        yield {"node": n, "port": port, "keep": keep_port}
    finally:
        n.stop()


def get(port: int, target: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}", *headers]
    if version == "1.1" and not any(h.lower().startswith("host:") for h in headers):
        lines.append("Host: gw.test")
    raw = ("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode("latin-1")
    return exchange(port, raw)


def upstream_saw(response: bytes) -> dict[str, Any]:
    return json.loads(response.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("target", ["/admin/", "//admin/", "/./admin/", "/x/../admin/", "/%61dmin/", "/%2e/admin/",
                                    "/%2E%2E/admin", "///admin", "/admin/./x/..", "/ADMIN/../admin/"])  # fmt: skip
def test_prefix_route_policy_holds_for_every_spelling(node: dict[str, Any], target: str) -> None:
    assert status_of(get(node["port"], target)) == 403


@pytest.mark.parametrize("target", ["/secret", "//secret", "/./secret", "/%73ecret", "/secret/.", "/secret/",
                                    "/x/../secret", "/secret?x=1"])  # fmt: skip
def test_exact_route_policy_holds_for_every_spelling(node: dict[str, Any], target: str) -> None:
    assert status_of(get(node["port"], target)) == 403


def test_the_upstream_gets_the_path_the_policies_judged(node: dict[str, Any]) -> None:
    r = get(node["port"], "//anything/./a/../%62?q=%2F..")
    assert status_of(r) == 200
    assert upstream_saw(r)["url"] == "/anything/b?q=%2F.."  # the query is not touched


@pytest.mark.parametrize("target", ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00b", "/a%0D%0AX-Injected:%201",
                                    "/a%", "/a%zz", "/a#frag"])  # fmt: skip
def test_encoded_slashes_and_control_bytes_are_400(node: dict[str, Any], target: str) -> None:
    assert status_of(get(node["port"], target)) == 400


def test_a_listener_may_keep_encoded_slashes_and_repeated_slashes(node: dict[str, Any]) -> None:
    r = get(node["keep"], "/anything/a%2fb//c")
    assert status_of(r) == 200
    assert upstream_saw(r)["url"] == "/anything/a%2Fb//c"
    assert status_of(get(node["keep"], "/a%00")) == 400  # control bytes never


@pytest.mark.parametrize("host", ["API.Example.COM", "api.example.com.", "api.example.com:8080", "API.EXAMPLE.COM.:80"])
def test_hosts_compare_lowercase_without_dot_or_port(node: dict[str, Any], host: str) -> None:
    assert status_of(get(node["port"], "/anything", f"Host: {host}")) == 403  # the api route's policy


@pytest.mark.parametrize("host", ["a b", "user@evil.com", "api.example.com@evil", "evil:99999", "a/b"])
def test_a_host_that_is_not_host_port_is_400(node: dict[str, Any], host: str) -> None:
    assert status_of(get(node["port"], "/anything", f"Host: {host}")) == 400


def test_two_host_headers_are_400(node: dict[str, Any]) -> None:
    assert status_of(get(node["port"], "/anything", "Host: gw.test", "Host: api.example.com")) == 400


def test_absolute_form_authority_replaces_host(node: dict[str, Any]) -> None:
    # The target names api.example.com: that route (and its policy) applies, whatever Host says.
    assert status_of(get(node["port"], "http://api.example.com/anything", "Host: gw.test")) == 403
    r = get(node["port"], "http://other.test/anything", "Host: api.example.com")
    assert status_of(r) == 200
    assert upstream_saw(r)["headers"]["Host"] == "other.test"


def test_http10_without_host_goes_upstream_with_a_host(node: dict[str, Any], echo: UpstreamProcess) -> None:
    r = get(node["port"], "/anything", version="1.0")
    assert status_of(r) == 200
    assert upstream_saw(r)["headers"]["Host"] == f"127.0.0.1:{echo.port}"


def test_every_x_forwarded_for_line_is_judged(node: dict[str, Any]) -> None:
    port = node["port"]
    # Behind a trusted proxy (the test is 127.0.0.1): the client is the last untrusted hop.
    assert status_of(get(port, "/lb", "X-Forwarded-For: 10.1.2.3")) == 200
    assert status_of(get(port, "/lb", "X-Forwarded-For: 10.1.2.3", "X-Forwarded-For: 8.8.8.8")) == 403
    assert status_of(get(port, "/lb", "X-Forwarded-For: 8.8.8.8", "X-Forwarded-For: 10.1.2.3")) == 200


def test_a_second_user_agent_is_400(node: dict[str, Any]) -> None:
    port = node["port"]
    assert status_of(get(port, "/ua", "User-Agent: curl/8")) == 403
    assert status_of(get(port, "/ua", "User-Agent: Mozilla/5.0")) == 200
    assert status_of(get(port, "/ua", "User-Agent: Mozilla/5.0", "User-Agent: curl/8")) == 400


def test_connect_is_405_on_a_reverse_proxy(node: dict[str, Any]) -> None:
    r = exchange(node["port"], b"CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n")
    assert status_of(r) == 405


def test_proxy_credentials_never_reach_the_upstream(node: dict[str, Any]) -> None:
    r = get(node["port"], "/anything", "Proxy-Authorization: Basic c2VjcmV0", "Proxy-Connection: keep-alive")
    seen = {k.lower() for k in upstream_saw(r)["headers"]}
    assert "proxy-authorization" not in seen and "proxy-connection" not in seen


def test_metrics_count_the_refusals(node: dict[str, Any]) -> None:
    get(node["port"], "/a%2Fb")
    assert node["node"].metric("flux_node_events_total", event="bad_request_400") >= 1


@pytest.mark.parametrize("chunked", [False, True])
def test_an_h2c_upgrade_never_reaches_the_upstream(node: dict[str, Any], chunked: bool) -> None:
    """h2c smuggling: a backend that accepts `Upgrade: h2c` (the echo upstream answers 101 to any
    upgrade) would give the client a raw HTTP/2 connection to itself, past routes and policies.
    The node declines the upgrade and serves the request, body and all, as HTTP/1.1."""
    body = b"smuggle " * 100
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        if chunked
        else b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    raw = (b"POST /sink HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n" + framing + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # fmt: skip
    answer = exchange(node["port"], raw)
    assert status_of(answer) == 200, answer[:200]
    assert upstream_saw(answer)["received"] == len(body)
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"upgrade" not in head and b"connection: close" in head  # the bytes after the body are not read
    ask = b"GET /echo HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    get_answer = exchange(node["port"], ask + b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    assert status_of(get_answer) == 200
    assert not any(k.lower() == "upgrade" for k in upstream_saw(get_answer)["headers"])
