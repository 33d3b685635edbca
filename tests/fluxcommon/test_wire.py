"""fluxcommon.wire: what config text may go on the wire (properties and examples), and the text
rule every schema applies through fluxcommon.textfields."""

from __future__ import annotations

import re
import string
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fluxcommon import wire
from fluxcommon.textfields import TextChecked, text_in_value_problem

CONTROLS = [chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"]
TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
PCHAR = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"

anything = st.text(st.characters(codec="utf-8"), max_size=40) | st.text(max_size=40)
near_miss = st.text(st.sampled_from(list(TCHAR + PCHAR + "/?#% \t\r\n\x00\x7f[]:@é€\x85")), max_size=30)


# -- properties: whatever is accepted is safe ------------------------------------------------


@given(anything | near_miss, anything | near_miss)
def test_an_accepted_header_line_is_one_clean_latin1_line(name: str, value: str) -> None:
    if wire.header_name_problem(name) is None:
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name)
    if wire.header_value_problem("X", value) is None:
        assert not any(c in value for c in CONTROLS)
        raw = value.encode("latin-1")  # what the node sends
        assert b"\r" not in raw and b"\n" not in raw and b"\x00" not in raw


@given(anything | near_miss)
def test_an_accepted_path_is_an_origin_form_target(value: str) -> None:
    if wire.path_problem(value) is None:
        assert value.startswith("/")
        raw = value.encode("ascii")
        assert not re.search(rb"[\x00-\x20\x7f#\[\]\\]", raw)
        assert urllib.parse.urlsplit(value).path == value.partition("?")[0]
    if wire.path_problem(value, query=False) is None:
        assert "?" not in value


@given(st.lists(st.text(st.sampled_from(list(PCHAR)), max_size=8), min_size=1, max_size=5))
def test_every_rfc3986_path_is_accepted(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    if path.startswith("//"):  # reads as //host: refused, see test_refused
        assert wire.path_problem(path) is not None
        return
    assert wire.path_problem(path) is None
    assert wire.path_problem(path + "?a=1&b=/x?") is None
    assert wire.path_problem(path, query=False) is None


@given(anything | near_miss)
def test_an_accepted_url_is_a_clean_http_url(tail: str) -> None:
    for value in (tail, "http://" + tail, "https://api.example.com" + tail):
        if wire.url_problem(value) is None:
            raw = value.encode("ascii")
            assert not re.search(rb"[\x00-\x20\x7f\\]", raw)
            parts = urllib.parse.urlsplit(value)
            assert parts.scheme in ("http", "https") and parts.hostname and "@" not in parts.netloc


@given(anything | near_miss)
def test_an_accepted_location_names_no_other_host_by_accident(value: str) -> None:
    for candidate in (value, "/" + value, "//" + value):
        if wire.location_problem(candidate) is None:
            candidate.encode("latin-1")  # RedirectPolicy encodes it so
            assert not any(c in candidate for c in [*CONTROLS, " "])
            assert not candidate.startswith("//")
            assert candidate.startswith(("/", "http://", "https://"))


@given(anything | near_miss)
def test_an_accepted_host_is_a_host(value: str) -> None:
    if wire.host_problem(value) is None:
        value.encode("idna")
        assert not re.search(r"[\x00-\x20\x7f/@?#\\]", value)
    if wire.host_problem(value, port=False) is None:
        assert not re.search(r":\d+$", value) or value.endswith("]")


@given(anything | near_miss)
def test_text_checks(value: str) -> None:
    if wire.text_problem(value) is None:
        assert not any(c in value for c in CONTROLS)
        value.encode("utf-8")  # no lone surrogates
    if wire.multiline_text_problem(value) is None:
        assert not any(c in value for c in CONTROLS if c not in "\r\n")
    if any(c in value for c in "\r\n\x00"):
        assert wire.text_problem(value) is not None
    if "\x00" in value:
        assert wire.multiline_text_problem(value) is not None


@given(st.text(st.sampled_from(list(TCHAR)), min_size=1, max_size=20))
def test_every_token_is_a_header_name(name: str) -> None:
    assert wire.header_name_problem(name) is None
    assert wire.token_problem(name) is None


@given(near_miss, st.text(st.sampled_from(list(PCHAR + "/")), max_size=20))
def test_an_accepted_path_regex_replacement_never_puts_controls_in_a_path(replacement: str, path_tail: str) -> None:
    pattern = re.compile(r"^/(?P<first>[^/]*)(.*)$")
    if wire.regex_replacement_problem(replacement, pattern.groups, set(pattern.groupindex)) is None:
        out = pattern.sub(replacement, "/" + path_tail)
        assert not any(c in out for c in [*CONTROLS, " "])


# -- examples ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (lambda v: wire.path_problem(v, query=False), "/x HTTP/1.1\r\nX-Injected: 1\r\nY: "),
        (wire.path_problem, "/a b"),
        (wire.path_problem, "/a%zz"),
        (wire.path_problem, "a/b"),
        (wire.path_problem, "/a#frag"),
        (wire.path_problem, "//evil.example/x"),
        (wire.url_problem, "http://a.example/\r\nX: 1"),
        (wire.url_problem, "http://user@a.example/"),
        (wire.url_problem, "ftp://a.example/"),
        (wire.url_problem, "http:///path"),
        (wire.location_problem, "//evil.example/"),
        (wire.location_problem, "/ok\r\nSet-Cookie: x=1"),
        (wire.location_problem, "javascript:alert(1)"),
        (wire.host_problem, "a b"),
        (wire.host_problem, "user@evil"),
        (wire.host_problem, "a.example:99999"),
        (lambda v: wire.host_problem(v, port=False), "a.example:80"),
        (wire.text_problem, "a\rb"),
        (wire.text_problem, "a\ud800b"),
        (wire.multiline_text_problem, "-----BEGIN\x00"),
        (lambda v: wire.regex_replacement_problem(v, 1, set()), "/\\n"),
        (lambda v: wire.regex_replacement_problem(v, 1, set()), "/\\0"),
        (lambda v: wire.regex_replacement_problem(v, 1, set()), "/\\2"),
        (lambda v: wire.regex_replacement_problem(v, 1, set()), "/a b/\\1"),
    ],
)
def test_refused(check: object, value: str) -> None:
    problem = check(value)  # type: ignore[operator]
    assert problem, value
    assert not re.match(r"^\w+: ", problem) or problem.startswith("X: "), "a problem never starts with 'word: '"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (wire.path_problem, "/orders/v1;x=1/%2Fa?q=1&r=/s"),
        (wire.url_problem, "https://idp.example.com:8443/.well-known/jwks.json?x=1#k"),
        (wire.url_problem, "http://[::1]:8080/"),
        (wire.location_problem, "/login?next=%2F"),
        (wire.location_problem, "https://example.com"),
        (wire.host_problem, "api.internal:8080"),
        (wire.host_problem, "[2001:db8::1]"),
        (wire.multiline_text_problem, "-----BEGIN CERTIFICATE-----\r\nAAAA\n-----END CERTIFICATE-----\n"),
        (wire.text_problem, "tab\tis fine, so is é"),
        (lambda v: wire.regex_replacement_problem(v, 2, {"id"}), "/v2/\\1/\\g<id>/\\g<2>"),
    ],
)
def test_accepted(check: object, value: str) -> None:
    assert check(value) is None  # type: ignore[operator]


def test_policy_config_reexports_the_one_implementation() -> None:
    from fluxcommon import policy_config

    assert policy_config.header_name_problem is wire.header_name_problem
    assert policy_config.header_value_problem is wire.header_value_problem
    assert policy_config.checked_headers is wire.checked_headers
    assert policy_config.host_problem is wire.host_problem


# -- the text rule of every schema -------------------------------------------------------------


class _Sample(TextChecked):
    multiline_fields = TextChecked.multiline_fields | {"body"}
    name: str = ""
    tags: list[str] = []
    meta: dict[str, str] = {}
    body: str = ""
    description: str = ""


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\x1b", "\x7f"])
@pytest.mark.parametrize(
    "make", [lambda b: {"name": f"a{b}"}, lambda b: {"tags": ["ok", f"a{b}"]}, lambda b: {"meta": {f"k{b}": "v"}},
             lambda b: {"meta": {"k": f"v{b}"}}],
)  # fmt: skip
def test_the_text_rule_refuses_controls_anywhere(bad: str, make: object) -> None:
    body = make(bad)  # type: ignore[operator]
    with pytest.raises(ValidationError) as info:
        _Sample.model_validate(body)
    assert info.value.errors()[0]["loc"] == (next(iter(body)),)
    assert "control character" in str(info.value)


def test_multiline_fields_take_line_breaks_but_not_nul() -> None:
    assert _Sample(body="a\r\nb", description="one\ntwo").body == "a\r\nb"
    for field in ("body", "description"):
        with pytest.raises(ValidationError, match="NUL"):
            _Sample.model_validate({field: "a\x00b"})


def test_text_in_value_problem_says_where() -> None:
    assert (
        text_in_value_problem({"k": ["a", "b\n"]})
        == "value of 'k': item 1: a control character (LF) at position 1 is not allowed"
    )
    assert text_in_value_problem(["x", 1, None, {"y": 2}]) is None
