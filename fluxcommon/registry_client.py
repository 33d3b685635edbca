"""A small Python client of the FLUX service registry, for applications.

It imports nothing from the control plane (only httpx and the standard library), so an
application can depend on it alone, or copy this one file.

Register an instance for as long as the application runs::

    from fluxcommon.registry_client import RegistryClient

    # every call needs a token: a registry token of the services it registers will do
    # (fluxctl tokens create orders-app --role registry --services orders)
    client = RegistryClient("http://127.0.0.1:9080", token=os.environ["FLUX_TOKEN"])
    with client.register("orders", "10.0.0.5", 8080, version="v2", zone="eu-1", ttl="10s") as reg:
        serve_forever()          # reg.id == "10.0.0.5:8080"
    # deregistered here (also on reg.close(), client.close(), and at interpreter exit if never closed)

While registered, a daemon thread sends `PUT /api/v1/services/{name}/instances/{id}/heartbeat`
every ttl/3 (or `heartbeat_interval`). When a heartbeat answers 404 (the instance expired,
say after a network partition longer than its TTL, or the control plane lost it) the thread
registers it again at once. Connection errors are logged and retried on the next period.

Discover and watch::

    client.instances("orders", healthy=True, tag="v2")      # -> [ {id, address, port, ...}, ... ]
    for index, instances in client.watch("orders", healthy=True):
        update_pool(instances)   # first the current list, then once per change

`watch` long-polls `GET /api/v1/services/{name}/instances?index=N&wait=30s`: the control plane
answers as soon as the service's index (header `X-Flux-Index`) passes N, or after `wait` with
the same list. The generator yields `(index, instances)` first for the current state and then
only when the index moves; if the index goes backwards (registry data replaced) it starts
over from 0. Errors are retried with a growing pause (up to 10 s); stop by breaking out of
the loop, or pass `stop=threading.Event()` and set it.

Errors answered by the control plane raise `RegistryError` (`status`, `code`, `message`,
`field` from its JSON error body).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

__all__ = ["Registration", "RegistryClient", "RegistryError"]

log = logging.getLogger("flux.registry_client")

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str | float) -> float:
    """'10s', '1m30s', '500ms' or a number of seconds -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        raise ValueError(f"bad duration {value!r}: use e.g. '10s', '500ms', '1m'")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


class RegistryError(Exception):
    """The control plane refused a request (4xx/5xx)."""

    def __init__(self, status: int, body: Any) -> None:
        body = body if isinstance(body, dict) else {"message": str(body)}
        self.status = status
        self.code = str(body.get("error", ""))
        self.message = str(body.get("message", ""))
        self.field = str(body.get("field", ""))
        super().__init__(f"{status} {self.code}: {self.message}")


class Registration:
    """A registered instance kept alive by a heartbeat thread; a context manager."""

    def __init__(
        self, client: RegistryClient, service: str, body: dict[str, Any], instance: dict[str, Any], interval: float
    ) -> None:
        self.client = client
        self.service = service
        self.body = body
        self.instance = instance
        self.id: str = instance["id"]
        self.interval = interval
        self.heartbeats = 0
        self.reregistrations = 0
        self.failures = 0
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"flux-heartbeat-{service}/{self.id}", daemon=True)
        self._thread.start()
        client._track(self)
        atexit.register(self.close)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.heartbeat(self.service, self.id)
                self.heartbeats += 1
            except RegistryError as exc:
                if exc.status != 404:
                    self.failures += 1
                    log.warning("heartbeat of %s/%s refused: %s", self.service, self.id, exc)
                    continue
                try:  # expired or unknown: register again
                    self.instance = self.client._register(self.service, self.body)
                    self.reregistrations += 1
                    log.info("re-registered %s/%s after a 404 heartbeat", self.service, self.id)
                except (RegistryError, httpx.HTTPError) as again:
                    self.failures += 1
                    log.warning("could not re-register %s/%s: %s", self.service, self.id, again)
            except httpx.HTTPError as exc:
                self.failures += 1
                log.warning("heartbeat of %s/%s failed: %s", self.service, self.id, exc)

    def close(self, *, deregister: bool = True) -> None:
        """Stop heartbeats and deregister (a 404 is fine: it is gone already)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self.client.timeout + 1)
        atexit.unregister(self.close)
        self.client._untrack(self)
        if deregister:
            try:
                self.client.deregister(self.service, self.id)
            except RegistryError as exc:
                if exc.status != 404:
                    log.warning("could not deregister %s/%s: %s", self.service, self.id, exc)
            except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the client was closed
                log.warning("could not deregister %s/%s: %s", self.service, self.id, exc)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RegistryClient:
    """REST client of the registry API of one control plane (thread-safe)."""

    def __init__(self, server: str, token: str | None = None, *, timeout: float = 10.0) -> None:
        """`token`: the API token every call sends (reads included); None: FLUX_TOKEN, if set."""
        self.server = server.rstrip("/")
        self.timeout = timeout
        token = os.environ.get("FLUX_TOKEN") if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)
        self._registrations: list[Registration] = []
        self._lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def _path(*parts: str) -> str:
        return "/api/v1/services/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = self.http.request(method, path, **kw)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text[:500]
            raise RegistryError(resp.status_code, body)
        return resp

    def _track(self, reg: Registration) -> None:
        with self._lock:
            self._registrations.append(reg)

    def _untrack(self, reg: Registration) -> None:
        with self._lock:
            if reg in self._registrations:
                self._registrations.remove(reg)

    def close(self) -> None:
        """Deregister every instance this client still keeps registered, then close the connections."""
        with self._lock:
            registrations = list(self._registrations)
        for reg in registrations:
            reg.close()
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registration ------------------------------------------------------------------------

    def register(
        self,
        service: str,
        address: str,
        port: int,
        *,
        weight: int = 1,
        version: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        ttl: str = "10s",
        ephemeral: bool = True,
        instance_id: str | None = None,
        heartbeat_interval: float | None = None,
    ) -> Registration:
        """Register an instance and keep it alive until `close()` / the end of a `with` block."""
        body: dict[str, Any] = {
            "address": address,
            "port": port,
            "weight": weight,
            "version": version,
            "zone": zone,
            "tags": list(tags),
            "metadata": dict(metadata or {}),
            "ephemeral": ephemeral,
            "ttl": ttl,
        }
        if instance_id:
            body["id"] = instance_id
        interval = heartbeat_interval if heartbeat_interval is not None else max(0.2, _seconds(ttl) / 3)
        instance = self._register(service, body)
        return Registration(self, service, body, instance, interval)

    def _register(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", self._path(service, "instances"), json=body).json()  # type: ignore[no-any-return]

    def heartbeat(self, service: str, instance_id: str) -> dict[str, Any]:
        return self._call("PUT", self._path(service, "instances", instance_id, "heartbeat")).json()  # type: ignore[no-any-return]

    def deregister(self, service: str, instance_id: str) -> None:
        self._call("DELETE", self._path(service, "instances", instance_id))

    # -- discovery ---------------------------------------------------------------------------

    @staticmethod
    def _filters(
        healthy: bool | None, tag: str | Iterable[str] | None, version: str | None, zone: str | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if healthy is not None:
            params["healthy"] = "true" if healthy else "false"
        if tag:
            params["tag"] = [tag] if isinstance(tag, str) else list(tag)
        if version:
            params["version"] = version
        if zone:
            params["zone"] = zone
        return params

    def query(
        self,
        service: str,
        *,
        healthy: bool | None = True,
        tag: str | Iterable[str] | None = None,
        version: str | None = None,
        zone: str | None = None,
        index: int | None = None,
        wait: str = "30s",
    ) -> tuple[int, list[dict[str, Any]]]:
        """(index, instances); with `index`, waits up to `wait` for the service's index to pass it."""
        params = self._filters(healthy, tag, version, zone)
        timeout = self.timeout
        if index is not None:
            params["index"] = index
            params["wait"] = wait
            timeout += _seconds(wait)
        resp = self._call("GET", self._path(service, "instances"), params=params, timeout=timeout)
        return int(resp.headers.get("x-flux-index", 0)), resp.json()["instances"]

    def instances(
        self,
        service: str,
        *,
        healthy: bool | None = True,
        tag: str | Iterable[str] | None = None,
        version: str | None = None,
        zone: str | None = None,
    ) -> list[dict[str, Any]]:
        """The instances of a service (by default only those that take traffic)."""
        return self.query(service, healthy=healthy, tag=tag, version=version, zone=zone)[1]

    def watch(
        self,
        service: str,
        *,
        index: int = 0,
        wait: str = "30s",
        healthy: bool | None = True,
        tag: str | Iterable[str] | None = None,
        version: str | None = None,
        zone: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Yield (index, instances) now and after every change of the service (long-poll)."""
        known = index
        first = index == 0  # from 0: the current state first; from an index: only changes after it
        pause = 0.0
        while stop is None or not stop.is_set():
            started = time.monotonic()
            try:
                new, instances = self.query(
                    service,
                    healthy=healthy,
                    tag=tag,
                    version=version,
                    zone=zone,
                    index=known,
                    wait="0s" if first and known == 0 else wait,
                )
            except (RegistryError, httpx.HTTPError) as exc:
                pause = min(10.0, pause * 2 or 0.2)
                log.warning("watch of %s failed (%s); retrying in %.1fs", service, exc, pause)
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)
                continue
            pause = 0.0
            if new < known:  # the index went backwards: start over
                known, first = 0, True
                continue
            if first or new > known:
                first = False
                known = new
                yield new, instances
            elif time.monotonic() - started < 0.05:
                time.sleep(0.1)  # answered at once without a change (e.g. the server is stopping)
