"""The console's pure parts: sessions and CSRF, forms made from the spec models, diffs, rates."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from controlplane.api_tokens import BOOTSTRAP_ADMIN, Principal
from controlplane.secretbox import SecretBox, SecretKey
from controlplane.spec import KINDS
from controlplane.store.db import make_engine, migrate
from controlplane.ui.dashboard import RateMeter, counters_of, route_rates
from controlplane.ui.diffs import dry_run_diffs, version_diffs
from controlplane.ui.forms import defaults, fields_of, from_form, place_errors, to_form
from controlplane.ui.sessions import CsrfRefused, SessionStore, check_write
from controlplane.ui.views_auth import _safe_next

READER = Principal("viewer", "read")
BOX = SecretBox(SecretKey.generate())


@pytest.fixture
def engine(tmp_path: pathlib.Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'flux.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def sessions(engine: Engine, **kw: Any) -> SessionStore:
    return SessionStore(engine, BOX, **kw)


def test_sessions_end_on_idle_lifetime_and_logout(engine: Engine) -> None:
    store = sessions(engine, idle=10, lifetime=100, touch_every=0)
    sid, made = store.create("tok", READER, now=0)
    got = store.get(sid, 5)
    assert got is not None and (got.token, got.csrf, got.principal) == ("tok", made.csrf, READER)
    assert not got.can_write
    assert store.get(sid, 14) is not None  # used at 5: idle clock restarted
    assert store.get(sid, 30) is None  # idle past 10 s
    sid, _ = store.create("tok", BOOTSTRAP_ADMIN, now=0)
    for t in range(9, 100, 9):
        assert store.get(sid, t) is not None
    assert store.get(sid, 101) is None  # lifetime over, however busy
    sid, _ = store.create("tok", BOOTSTRAP_ADMIN, now=0)
    store.end(sid)
    assert store.get(sid, 1) is None
    assert store.get("", 1) is None and store.get("made-up", 1) is None and store.get("x" * 10_000, 1) is None


def test_the_last_use_is_written_at_most_every_touch_interval(engine: Engine) -> None:
    store = sessions(engine, idle=100, touch_every=60)
    sid, _ = store.create("tok", READER, now=0)
    got = store.get(sid, 30)
    assert got is not None and got.last_used == 0  # read, not written
    got = store.get(sid, 90)
    assert got is not None and got.last_used == 90
    assert store.get(sid, 180) is not None  # 90 s after the last use written, not 180 after login


def test_another_control_plane_of_the_database_serves_the_session(engine: Engine) -> None:
    """Two stores on one database are two control planes: a login on one is valid on the other,
    flashes written by one are read by the other, a logout on one ends it on both."""
    one, two = sessions(engine), sessions(engine)
    sid, made = one.create("tok", Principal("ops", "registry", frozenset({"orders"})), now=0)
    seen = two.get(sid, 1)
    assert seen is not None and seen.csrf == made.csrf and seen.principal.services == frozenset({"orders"})
    seen.flashes.append(("ok", "route saved"))
    two.save_flashes(seen)
    again = one.get(sid, 2)
    assert again is not None and again.flashes == [("ok", "route saved")]
    one.end(sid)
    assert two.get(sid, 3) is None


def test_session_rows_keep_no_usable_id_or_token_and_bound_themselves(engine: Engine, tmp_path: pathlib.Path) -> None:
    store = sessions(engine, limit=3)
    ids = [store.create("flux_0123456789ab_" + "s" * 43, READER, now=i)[0] for i in range(5)]
    assert len(store) == 3
    assert store.get(ids[0], 5) is None and store.get(ids[4], 5) is not None
    with engine.connect() as conn:
        rows = [tuple(map(str, r)) for r in conn.exec_driver_sql("SELECT * FROM console_sessions")]
    stored = " ".join(" ".join(r) for r in rows)
    assert not any(sid in stored for sid in ids)  # only digests are kept
    assert "s" * 43 not in stored and "flux_" not in stored  # the API token is sealed
    engine.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("flux.db*"))
    assert b"s" * 43 not in raw


def test_a_session_sealed_under_another_key_is_ended(engine: Engine) -> None:
    sid, _ = sessions(engine).create("tok", READER, now=0)
    other = SessionStore(engine, SecretBox(SecretKey.generate()))
    assert other.get(sid, 1) is None
    assert sessions(engine).get(sid, 2) is None  # the row is gone


def test_writes_need_the_csrf_token_and_our_origin(engine: Engine) -> None:
    _, session = sessions(engine).create("tok", BOOTSTRAP_ADMIN, now=0)
    here = "http://127.0.0.1:9080"
    check_write(session, session.csrf, "", here)  # no Origin (a non-browser client): token alone
    check_write(session, session.csrf, here, here)
    for token, origin in (("", here), ("wrong", here), (session.csrf, "http://evil.example"), (session.csrf, "null")):
        with pytest.raises(CsrfRefused):
            check_write(session, token, origin, here)


@pytest.mark.parametrize(
    ("target", "safe"),
    [("/ui/history", "/ui/history"), ("//evil.example/ui/", "/ui/"), ("https://evil.example/", "/ui/"),
     ("/ui/\\evil", "/ui/"), ("/api/v1/config", "/ui/")],
)  # fmt: skip
def test_login_redirects_only_into_the_console(target: str, safe: str) -> None:
    assert _safe_next(target) == safe


def test_route_form_round_trip_and_defaults() -> None:
    spec = KINDS["routes"].spec
    fields = fields_of(spec)
    widgets = {f.name: f.widget for f in fields}
    assert widgets["path_type"] == "select" and widgets["hosts"] == "list" and widgets["retry"] == "yaml"
    assert widgets["description"] == "textarea"
    route = {"name": "r", "hosts": ["a.example.com"], "path": "/x", "cluster": "c", "retry": {"attempts": 2}}
    values = to_form(fields, route)
    assert values["hosts"] == "a.example.com" and values["retry"].strip() == "attempts: 2"
    body, errors = from_form(fields, {**values, "methods": "get, post", "priority": "5", "timeout": "30s"})
    assert errors == {}
    assert body["methods"] == ["get", "post"] and body["priority"] == 5 and body["timeout"] == "30s"
    assert body["retry"] == {"attempts": 2} and "listener" not in body  # empty optional: the API's default
    spec.model_validate(body)
    assert defaults(fields_of(KINDS["alerts"].spec), KINDS["alerts"].spec)["window"] == "1m"  # not 60000 (ms)


def test_form_checkboxes_secrets_and_bad_yaml() -> None:
    fields = fields_of(KINDS["registries"].spec)
    widgets = {f.name: f.widget for f in fields}
    assert widgets["import"] == "checkbox" and widgets["password"] == "password"
    body, _ = from_form(fields, {"name": "r", "import": "on"})
    assert body["import"] is True and body["export"] is False
    body, errors = from_form(fields_of(KINDS["clusters"].spec), {"name": "c", "endpoints": "- {address: [unclosed"})
    assert "endpoints" in errors and "endpoints" not in body


def test_api_errors_land_on_their_fields() -> None:
    fields = fields_of(KINDS["clusters"].spec)
    by_field, general = place_errors(
        fields,
        [
            {"field": "endpoints[0].port", "message": "too big"},
            {"field": "lb", "message": "unknown"},
            {"field": "", "message": "whole body"},
        ],
    )
    assert by_field == {"endpoints": ["endpoints[0].port: too big"], "lb": ["unknown"]}
    assert general == ["whole body"]


def test_diffs_of_a_dry_run_and_of_two_versions() -> None:
    answer = {
        "changes": [
            {"kind": "routes", "name": "a", "action": "update"},
            {"kind": "clusters", "name": "b", "action": "unchanged"},
        ],
        "diff": {"routes/a": {"before": {"name": "a", "cluster": "x"}, "after": {"name": "a", "cluster": "y"}}},
    }
    (d,) = dry_run_diffs(answer)
    assert d.key == "routes/a" and d.action == "update"
    assert [line.text for line in d.lines if line.tag in ("add", "del")] == ["-cluster: x", "+cluster: y"]
    old = {"version": 1, "routes": [{"name": "a", "path": "/"}], "clusters": [{"name": "gone"}]}
    new = {"version": 2, "routes": [{"name": "a", "path": "/"}], "listeners": [{"name": "l", "port": 80}]}
    assert [(d.key, d.action) for d in version_diffs(old, new)] == [
        ("clusters/gone", "delete"),
        ("listeners/l", "create"),
    ]


def test_rates_from_load_reports() -> None:
    assert counters_of({"id": "n", "load": None}) is None
    node = {"load": {"requests": 100, "server_errors": 4, "at": "2026-01-01T00:00:00+00:00"}}
    at, requests, errors = counters_of(node) or (0, 0, 0)
    assert (requests, errors) == (100, 4)
    meter = RateMeter()
    assert meter.rate("n", at, 100, 4) is None  # one report: no rate yet
    assert meter.rate("n", at + 2, 300, 8) == (100.0, 2.0)
    assert meter.rate("n", at + 2, 300, 8) == (100.0, 2.0)  # the same report again: the same rate
    assert meter.rate("n", at + 3, 5, 0) is None  # the node restarted: counters from zero


def test_route_rates_are_summed_over_the_nodes() -> None:
    def node(name: str, at: str, api: tuple[int, int], web: tuple[int, int]) -> dict[str, Any]:
        routes = {
            "api": {"requests": api[0], "server_errors": api[1]},
            "web": {"requests": web[0], "server_errors": web[1]},
        }
        return {"id": name, "load": {"requests": 0, "server_errors": 0, "at": at, "routes": routes}}

    meter = RateMeter()
    t0, t1 = "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:02+00:00"
    assert route_rates([node("a", t0, (0, 0), (0, 0)), node("b", t0, (10, 0), (0, 0))], meter) == []  # one report each
    rows = route_rates([node("a", t1, (100, 10), (2, 0)), node("b", t1, (50, 0), (0, 0))], meter)
    assert [(r.name, r.requests, r.errors, r.nodes) for r in rows] == [("api", 70.0, 5.0, 2), ("web", 1.0, 0.0, 2)]
    assert route_rates([{"id": "x", "load": None}, {"id": "y"}], meter) == []  # no report, no row


def test_item_paths_never_hold_dot_segments() -> None:
    """/ui/resources/routes/.. read GET /api/v1/ (the client resolves `..`) and showed a blank route."""
    import httpx

    from controlplane.ui.kinds import UI_KINDS

    routes = UI_KINDS["routes"]
    for name in (".", ".."):
        path = httpx.URL("http://cp" + routes.item(name)).path
        assert path.startswith("/api/v1/routes/"), path
    assert routes.item("a.b") == "/api/v1/routes/a.b"
    assert routes.item("a/b") == "/api/v1/routes/a%2Fb"
