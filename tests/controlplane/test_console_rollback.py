"""The console's rollback page offers only what the API would do: version 0 (the empty config
before the first write) is no rollback target (POST /api/v1/config/rollback refuses it)."""

from __future__ import annotations

import httpx
from support.processes import ControlPlaneProcess


def test_no_rollback_page_for_version_zero(module_controlplane: ControlPlaneProcess) -> None:
    cp = module_controlplane
    with httpx.Client(base_url=cp.url, headers={"Origin": cp.url}, follow_redirects=False) as c:
        r = c.post("/ui/login", data={"token": cp.token, "next": "/ui/"})
        assert r.status_code == 303, r.text
        confirm = c.get("/ui/history/0/rollback")
        assert confirm.status_code == 404, confirm.text
        assert "confirm-rollback" not in confirm.text
        with cp.client() as api:
            assert api.post("/api/v1/config/rollback", json={"version": 0}).status_code == 422
