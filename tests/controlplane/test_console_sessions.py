"""Console sessions live in the database: two control planes on one MariaDB database behind a
load balancer serve one login, a restart keeps it, a logout on one ends it on both, and a
rotation of the secret key ends every session (real control-plane processes, no browser:
the console's forms are posted as a browser would, with its cookie, Origin and CSRF token)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from support.processes import ControlPlaneProcess, executable, mariadb_database, mariadb_unreachable

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlaneProcess, ControlPlaneProcess]]:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)
    with mariadb_database() as url:
        a = ControlPlaneProcess(tmp_path_factory.mktemp("cp-a"), url, token="console-shared", cp_id="cp-a").start()
        try:
            b = ControlPlaneProcess(tmp_path_factory.mktemp("cp-b"), url, token="console-shared", cp_id="cp-b").start()
        except BaseException:
            a.stop()
            raise
        try:
            yield a, b
        finally:
            b.stop()
            a.stop()


def log_in(cp: ControlPlaneProcess) -> str:
    """The session cookie a browser gets from logging in on `cp` with the admin token."""
    r = httpx.post(
        cp.url + "/ui/login",
        data={"token": cp.token, "next": "/ui/"},
        headers={"Origin": cp.url},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/", r.text
    cookie = r.cookies.get("flux_console")
    assert cookie
    return cookie


def page(cp: ControlPlaneProcess, cookie: str, path: str = "/ui/") -> httpx.Response:
    return httpx.get(cp.url + path, cookies={"flux_console": cookie}, follow_redirects=False)


def post(cp: ControlPlaneProcess, cookie: str, path: str, csrf: str) -> httpx.Response:
    """A console form posted as the browser would: its cookie, its Origin, the CSRF token."""
    return httpx.post(
        cp.url + path,
        data={"csrf_token": csrf},
        headers={"Origin": cp.url},
        cookies={"flux_console": cookie},
        follow_redirects=False,
    )


def logged_in(r: httpx.Response) -> bool:
    """A console page (200) rather than the way to the login page (303)."""
    if r.status_code == 303:
        assert r.headers["location"].startswith("/ui/login")
        return False
    assert r.status_code == 200, r.text
    return 'data-testid="user"' in r.text


def test_a_login_on_one_control_plane_is_served_by_the_other(
    pair: tuple[ControlPlaneProcess, ControlPlaneProcess],
) -> None:
    a, b = pair
    with a.client() as api:
        r = api.put("/api/v1/clusters/gone", json={"name": "gone", "endpoints": [{"address": "10.0.0.1", "port": 80}]})
        assert r.status_code in (200, 201), r.text
    cookie = log_in(a)
    for cp in (a, b, a, b):  # a load balancer sending each request to either
        assert logged_in(page(cp, cookie))
    # a write posted to B with the CSRF token A's page carried; its message shows on A's next page
    found = CSRF.search(page(a, cookie, "/ui/resources/clusters/gone").text)
    assert found
    r = post(b, cookie, "/ui/resources/clusters/gone/delete", found.group(1))
    assert r.status_code == 303 and r.headers["location"] == "/ui/resources/clusters", r.text
    shown = page(a, cookie, "/ui/resources/clusters").text
    assert "cluster gone deleted" in shown
    assert "cluster gone deleted" not in page(b, cookie, "/ui/resources/clusters").text  # shown once
    # without the token, on either: refused
    assert post(a, cookie, "/ui/resources/clusters/x/delete", "forged").status_code == 403


def test_a_restart_keeps_the_login_and_a_logout_on_one_ends_it_on_both(
    pair: tuple[ControlPlaneProcess, ControlPlaneProcess],
) -> None:
    a, b = pair
    cookie = log_in(b)
    a.restart()
    assert logged_in(page(a, cookie))
    found = CSRF.search(page(b, cookie).text)
    assert found
    r = post(a, cookie, "/ui/logout", found.group(1))
    assert r.status_code == 303 and "logout" in r.headers["location"]
    assert not logged_in(page(b, cookie)) and not logged_in(page(a, cookie))


def test_rotating_the_secret_key_ends_every_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On SQLite with a key file (the embedded default): the rotation logs everyone out, and the
    database keeps no session sealed under the old key."""
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("cp-rotate"), token="rotate-admin")
    with cp:
        cookie = log_in(cp)
        assert logged_in(page(cp, cookie))
        cp.stop()
        rotated = subprocess.run(
            [executable("flux-controlplane"), "rotate-secret-key", "--db", cp.db, "--data-dir", str(cp.workdir)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cp.workdir,
        )
        assert rotated.returncode == 0, rotated.stderr
        with sqlite3.connect(cp.workdir / "flux.db") as db:
            assert db.execute("SELECT count(*) FROM console_sessions").fetchone() == (0,)
        cp.start()
        assert not logged_in(page(cp, cookie))
        assert logged_in(page(cp, log_in(cp)))  # a new login works under the new key
