"""Recorded-protocol fakes of Consul, Nacos and Eureka: small HTTP servers for the adapter tests.

These registries cannot run on the test machines (no Debian packages), so their adapters
are tested against these fakes, which answer the requests the adapters make with bodies
shaped as the real servers' documented JSON (field names, nesting, types, status codes):

- `FakeConsulRecordedProtocol`: Consul 1.x HTTP API. `GET /v1/catalog/services`,
  `GET /v1/health/service/<name>` with blocking-query semantics (`?index=N&wait=Ds`: the
  answer waits until the X-Consul-Index passes N, or the wait ends; X-Consul-Index on
  every answer; every write bumps one raft-like index and stamps the entries it touched),
  `PUT /v1/agent/service/register` (with an embedded TTL check), `PUT /v1/agent/service/
  deregister/<id>` and `PUT /v1/agent/check/pass/<check id>` (404 "Unknown check ID").
- `FakeNacosRecordedProtocol`: Nacos 2.2 open API v2 under /nacos: `GET /v2/ns/service/list`,
  `GET /v2/ns/instance/list`, `POST`/`DELETE /v2/ns/instance` (form / query parameters),
  `PUT /v2/ns/instance/beat` (an unwrapped `{"clientBeatInterval", "code": 10200 | 20404,
  "lightBeatEnabled"}`), `POST /v1/auth/login` when built with a username.
- `FakeEurekaRecordedProtocol`: Eureka's REST apps API under /eureka, JSON codec:
  `GET /apps`, `POST /apps/<APP>` (204), `PUT /apps/<APP>/<id>` renewals (200, 404 when
  unknown), `DELETE /apps/<APP>/<id>`.

Tests change a fake's contents through its Python methods (`register`, `add`, `remove`,
...), as other clients of the real registry would, and read what an adapter exported the
same way. Each fake records the requests it served (`requests`: (method, path)). They are
fakes: no consensus, no TTL reaping, no ACLs beyond the token/credential checks named here.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class _Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


class _FakeHttpServer:
    """A threading HTTP/1.1 server on 127.0.0.1:<free port>; subclasses implement `handle`."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                with fake.lock:
                    fake.requests.append((self.command, unquote(parts.path)))
                try:
                    fake.handle(self.command, parts.path, query, body, dict(self.headers.items()))
                    reply = _Reply(200, None)
                except _Reply as r:
                    reply = r
                except Exception as exc:  # a bug in the fake: answer 500 with the reason
                    reply = _Reply(500, f"fake failed: {exc!r}")
                self._send(reply)

            def _send(self, reply: _Reply) -> None:
                if reply.body is None:
                    data = b""
                elif isinstance(reply.body, bytes):
                    data = reply.body
                elif isinstance(reply.body, str):
                    data = reply.body.encode()
                else:
                    data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    if data and not isinstance(reply.body, (str, bytes)):
                        self.send_header("Content-Type", "application/json")
                    elif data:
                        self.send_header("Content-Type", "text/plain; charset=utf-8")
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client went away (an adapter cancelled its blocking query)

            do_GET = do_PUT = do_POST = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _FakeHttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> _FakeHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    closing = False

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> None:
        raise NotImplementedError

    def count(self, method: str, pattern: str) -> int:
        """How many requests matched `method` and the regex `pattern` on the path."""
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and re.fullmatch(pattern, p))


def _duration_s(text: str, default: float) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text or "")
    if not m:
        return default
    n = float(m.group(1))
    return n / 1000 if m.group(2) == "ms" else n * 60 if m.group(2) == "m" else n


# -- Consul --------------------------------------------------------------------------------------


class FakeConsulRecordedProtocol(_FakeHttpServer):
    """Consul's catalog/health/agent HTTP API with blocking queries (see the module docstring)."""

    AGENT_NODE = "agent-1"

    def __init__(self, *, token: str = "") -> None:
        super().__init__()
        self.token = token
        self.index = 1
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}  # (node, service id) -> NodeService
        self.checks: dict[tuple[str, str], dict[str, Any]] = {}  # (node, check id) -> HealthCheck
        self.service_index: dict[str, int] = {}  # service name -> ModifyIndex of its last change
        self.catalog_index = 1
        self._node(self.AGENT_NODE, "127.0.0.1")

    # -- state changes (under the lock) ------------------------------------------------------------

    def _bump(self, service: str, *, catalog: bool) -> int:
        self.index += 1
        self.service_index[service] = self.index
        if catalog:
            self.catalog_index = self.index
        self.lock.notify_all()
        return self.index

    def _node(self, name: str, address: str) -> dict[str, Any]:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = {
                "ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                "Node": name,
                "Address": address,
                "Datacenter": "dc1",
                "TaggedAddresses": {"lan": address, "wan": address},
                "Meta": {"consul-network-segment": ""},
                "CreateIndex": self.index,
                "ModifyIndex": self.index,
            }
            self.checks[(name, "serfHealth")] = {
                "Node": name,
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "Notes": "",
                "Output": "Agent alive and reachable",
                "ServiceID": "",
                "ServiceName": "",
                "ServiceTags": [],
                "Type": "",
                "Definition": {},
                "CreateIndex": self.index,
                "ModifyIndex": self.index,
            }
        return node

    def register(
        self,
        name: str,
        service_id: str,
        address: str,
        port: int,
        *,
        tags: list[str] | None = None,
        meta: dict[str, str] | None = None,
        weight: int = 1,
        node: str = "node-1",
        node_address: str = "127.0.0.1",
        check_status: str | None = "passing",
        check_ttl: str = "",
    ) -> None:
        """Register (or update) a service instance on a node, as an agent or the catalog API would."""
        with self.lock:
            self._node(node, node_address)
            existing = self.services.get((node, service_id))
            index = self._bump(name, catalog=True)
            self.services[(node, service_id)] = {
                "ID": service_id,
                "Service": name,
                "Tags": list(tags or []),
                "Address": address,
                "TaggedAddresses": {},
                "Meta": dict(meta or {}),
                "Port": port,
                "Weights": {"Passing": weight, "Warning": 1},
                "EnableTagOverride": False,
                "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
                "Connect": {},
                "CreateIndex": existing["CreateIndex"] if existing else index,
                "ModifyIndex": index,
            }
            if check_status is not None:
                self.checks[(node, f"service:{service_id}")] = {
                    "Node": node,
                    "CheckID": f"service:{service_id}",
                    "Name": f"Service '{name}' check",
                    "Status": check_status,
                    "Notes": "",
                    "Output": "",
                    "ServiceID": service_id,
                    "ServiceName": name,
                    "ServiceTags": list(tags or []),
                    "Type": "ttl" if check_ttl else "http",
                    "Definition": {"TTL": check_ttl} if check_ttl else {},
                    "CreateIndex": index,
                    "ModifyIndex": index,
                }

    def set_check(self, service_id: str, status: str, node: str = "node-1") -> None:
        with self.lock:
            check = self.checks[(node, f"service:{service_id}")]
            check["Status"] = status
            check["ModifyIndex"] = self._bump(check["ServiceName"], catalog=False)

    def deregister(self, service_id: str, node: str = "node-1") -> bool:
        with self.lock:
            svc = self.services.pop((node, service_id), None)
            if svc is None:
                return False
            self.checks.pop((node, f"service:{service_id}"), None)
            self._bump(svc["Service"], catalog=True)
            return True

    def instances(self, name: str, node: str | None = None) -> dict[str, dict[str, Any]]:
        """Service ID -> NodeService of one service (on `node`, or every node)."""
        with self.lock:
            return {
                sid: dict(s)
                for (n, sid), s in self.services.items()
                if s["Service"] == name and (node is None or n == node)
            }

    def check_status(self, service_id: str, node: str = AGENT_NODE) -> str | None:
        with self.lock:
            check = self.checks.get((node, f"service:{service_id}"))
            return check["Status"] if check else None

    # -- HTTP ------------------------------------------------------------------------------------

    def _block(self, query: dict[str, str], current: Any) -> int:
        """Consul's blocking query: wait while the index is still <= ?index, at most ?wait (5m default)."""
        index = int(query.get("index") or 0)
        wait = min(_duration_s(query.get("wait", ""), 300.0), 600.0)
        deadline = time.monotonic() + wait
        while index and current() <= index and not self.closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.lock.wait(left)
        return int(current())

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> None:
        if self.token and headers.get("X-Consul-Token", headers.get("x-consul-token")) != self.token:
            raise _Reply(403, "ACL not found")
        with self.lock:
            if method == "GET" and path == "/v1/catalog/services":
                index = self._block(query, lambda: self.catalog_index)
                out: dict[str, list[str]] = {"consul": []}
                for s in self.services.values():
                    tags = out.setdefault(s["Service"], [])
                    tags += [t for t in s["Tags"] if t not in tags]
                raise _Reply(200, out, {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true"})
            if method == "GET" and (m := re.fullmatch(r"/v1/health/service/([^/]+)", path)):
                name = unquote(m.group(1))
                index = self._block(query, lambda: self.service_index.get(name, self.catalog_index))
                entries = []
                for (node, sid), s in sorted(self.services.items()):
                    if s["Service"] != name:
                        continue
                    checks = [
                        dict(c)
                        for (n, cid), c in sorted(self.checks.items())
                        if n == node and (cid == "serfHealth" or c["ServiceID"] == sid)
                    ]
                    if query.get("passing") is not None and any(c["Status"] != "passing" for c in checks):
                        continue
                    entries.append({"Node": dict(self.nodes[node]), "Service": dict(s), "Checks": checks})
                raise _Reply(200, entries, {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true"})
        if method == "PUT" and path == "/v1/agent/service/register":
            doc = json.loads(body)
            check = doc.get("Check") or {}
            self.register(
                doc["Name"],
                doc.get("ID") or doc["Name"],
                doc.get("Address", ""),
                int(doc.get("Port", 0)),
                tags=doc.get("Tags"),
                meta=doc.get("Meta"),
                weight=(doc.get("Weights") or {}).get("Passing", 1),
                node=self.AGENT_NODE,
                check_status=check.get("Status", "critical") if check else None,
                check_ttl=check.get("TTL", ""),
            )
            raise _Reply(200)
        if method == "PUT" and (m := re.fullmatch(r"/v1/agent/service/deregister/(.+)", path)):
            if not self.deregister(unquote(m.group(1)), node=self.AGENT_NODE):
                raise _Reply(404, f'Unknown service ID "{unquote(m.group(1))}". Ensure that the service ID is passed')
            raise _Reply(200)
        if method == "PUT" and (m := re.fullmatch(r"/v1/agent/check/pass/(.+)", path)):
            check_id = unquote(m.group(1))
            with self.lock:
                check = self.checks.get((self.AGENT_NODE, check_id))
                if check is None:
                    raise _Reply(404, f'Unknown check ID "{check_id}". Ensure that the check ID is passed')
                if check["Status"] != "passing":
                    check["Status"] = "passing"
                    check["ModifyIndex"] = self._bump(check["ServiceName"], catalog=False)
            raise _Reply(200)
        raise _Reply(404, "")


# -- Nacos ---------------------------------------------------------------------------------------


class FakeNacosRecordedProtocol(_FakeHttpServer):
    """Nacos 2.2's open API v2 naming endpoints (see the module docstring)."""

    def __init__(self, *, username: str = "", password: str = "") -> None:
        super().__init__()
        self.username, self.password = username, password
        self.token = "fake-token-" + uuid.uuid4().hex[:8] if username else ""
        # (namespace, group, service) -> (ip, port, cluster) -> Instance JSON
        self.data: dict[tuple[str, str, str], dict[tuple[str, int, str], dict[str, Any]]] = {}
        self.beats: dict[tuple[str, str, str, str, int], float] = {}

    def add(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = "DEFAULT_GROUP",
        namespace: str = "public",
        cluster: str = "DEFAULT",
        weight: float = 1.0,
        healthy: bool = True,
        enabled: bool = True,
        ephemeral: bool = True,
        metadata: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            grouped = f"{group}@@{service}"
            self.data.setdefault((namespace, group, service), {})[(ip, port, cluster)] = {
                "instanceId": f"{ip}#{port}#{cluster}#{grouped}",
                "ip": ip,
                "port": port,
                "weight": weight,
                "healthy": healthy,
                "enabled": enabled,
                "ephemeral": ephemeral,
                "clusterName": cluster,
                "serviceName": grouped,
                "metadata": dict(metadata or {}),
                "instanceHeartBeatInterval": 5000,
                "instanceHeartBeatTimeOut": 15000,
                "ipDeleteTimeout": 30000,
                "instanceIdGenerator": "simple",
            }

    def remove(self, service: str, ip: str, port: int, *, group: str = "DEFAULT_GROUP", namespace: str = "public",
               cluster: str = "DEFAULT") -> bool:  # fmt: skip
        with self.lock:
            return self.data.get((namespace, group, service), {}).pop((ip, port, cluster), None) is not None

    def instances(self, service: str, *, group: str = "DEFAULT_GROUP", namespace: str = "public") -> list[dict]:
        with self.lock:
            return [dict(h) for _, h in sorted(self.data.get((namespace, group, service), {}).items())]

    @staticmethod
    def _ok(data: Any) -> _Reply:
        return _Reply(200, {"code": 0, "message": "success", "data": data})

    @staticmethod
    def _error(status: int, code: int, message: str, data: str) -> _Reply:
        return _Reply(status, {"code": code, "message": message, "data": data})

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> None:
        params = dict(query)
        if body and "x-www-form-urlencoded" in headers.get("Content-Type", headers.get("content-type", "")):
            params.update({k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()})
        if method == "POST" and path == "/nacos/v1/auth/login":
            if not self.username or (params.get("username"), params.get("password")) != (self.username, self.password):
                raise _Reply(403, "unknown user!")
            raise _Reply(
                200, {"accessToken": self.token, "tokenTtl": 18000, "globalAdmin": True, "username": self.username}
            )
        if self.token and params.get("accessToken") != self.token:
            raise _Reply(403, "user not found!")
        namespace = params.get("namespaceId") or "public"
        group = params.get("groupName") or "DEFAULT_GROUP"
        if method == "GET" and path == "/nacos/v2/ns/service/list":
            with self.lock:
                names = sorted(s for (ns, g, s), hosts in self.data.items() if ns == namespace and g == group)
            page, size = int(params.get("pageNo", 1)), min(500, int(params.get("pageSize", 20)))
            raise self._ok({"count": len(names), "services": names[(page - 1) * size : page * size]})
        if method == "GET" and path == "/nacos/v2/ns/instance/list":
            service = params.get("serviceName")
            if not service:
                raise self._error(400, 10000, "parameter missing", "Required parameter 'serviceName' is not present")
            hosts = self.instances(service, group=group, namespace=namespace)
            if params.get("healthyOnly") == "true":
                hosts = [h for h in hosts if h["healthy"]]
            raise self._ok({
                "name": f"{group}@@{service}",
                "groupName": group,
                "clusters": "",
                "cacheMillis": 10000,
                "hosts": hosts,
                "lastRefTime": int(time.time() * 1000),
                "checksum": "",
                "allIPs": False,
                "reachProtectionThreshold": False,
                "valid": True,
            })  # fmt: skip
        if path == "/nacos/v2/ns/instance" and method in ("POST", "DELETE"):
            service, ip, port = params.get("serviceName"), params.get("ip"), params.get("port")
            if not service or not ip or not port:
                raise self._error(400, 10000, "parameter missing", "Required parameter 'ip' is not present")
            cluster = params.get("clusterName") or "DEFAULT"
            if method == "DELETE":
                self.remove(service, ip, int(port), group=group, namespace=namespace, cluster=cluster)
                raise self._ok("ok")
            self.add(
                service,
                ip,
                int(port),
                group=group,
                namespace=namespace,
                cluster=cluster,
                weight=float(params.get("weight", 1.0)),
                healthy=params.get("healthy", "true") == "true",
                enabled=params.get("enabled", "true") == "true",
                ephemeral=params.get("ephemeral", "true") == "true",
                metadata=json.loads(params.get("metadata") or "{}"),
            )
            raise self._ok("ok")
        if method == "PUT" and path == "/nacos/v2/ns/instance/beat":
            beat = json.loads(params.get("beat") or "{}")
            grouped = params.get("serviceName", "")
            group, _, service = grouped.rpartition("@@")
            ip, port = beat.get("ip", params.get("ip", "")), int(beat.get("port", params.get("port", 0)))
            cluster = beat.get("cluster") or "DEFAULT"
            with self.lock:
                known = (ip, port, cluster) in self.data.get((namespace, group or "DEFAULT_GROUP", service), {})
                if known:
                    self.beats[(namespace, group, service, ip, port)] = time.time()
            raise _Reply(200, {"clientBeatInterval": 5000, "code": 10200 if known else 20404, "lightBeatEnabled": True})
        raise _Reply(404, {"timestamp": "", "status": 404, "error": "Not Found", "path": path})


# -- Eureka --------------------------------------------------------------------------------------


class FakeEurekaRecordedProtocol(_FakeHttpServer):
    """Eureka's REST apps API with the JSON codec (see the module docstring)."""

    def __init__(self, *, username: str = "", password: str = "") -> None:
        super().__init__()
        self.username, self.password = username, password
        self.apps: dict[str, dict[str, dict[str, Any]]] = {}  # APP -> instanceId -> InstanceInfo JSON
        self.renewals: dict[tuple[str, str], int] = {}

    def add(self, app: str, instance_id: str, ip: str, port: int, *, status: str = "UP", secure: bool = False,
            metadata: dict[str, str] | None = None) -> None:  # fmt: skip
        now = str(int(time.time() * 1000))
        app = app.upper()
        doc = {
            "instanceId": instance_id,
            "hostName": ip,
            "app": app,
            "ipAddr": ip,
            "status": status,
            "overriddenStatus": "UNKNOWN",
            "port": {"$": 80 if secure else port, "@enabled": "false" if secure else "true"},
            "securePort": {"$": port if secure else 443, "@enabled": "true" if secure else "false"},
            "countryId": 1,
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {
                "renewalIntervalInSecs": 30,
                "durationInSecs": 90,
                "registrationTimestamp": int(now),
                "lastRenewalTimestamp": int(now),
                "evictionTimestamp": 0,
                "serviceUpTimestamp": int(now),
            },
            "metadata": dict(metadata) if metadata else {"@class": "java.util.Collections$EmptyMap"},
            "homePageUrl": f"http://{ip}:{port}/",
            "statusPageUrl": f"http://{ip}:{port}/info",
            "healthCheckUrl": f"http://{ip}:{port}/health",
            "vipAddress": app.lower(),
            "secureVipAddress": app.lower(),
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": now,
            "lastDirtyTimestamp": now,
            "actionType": "ADDED",
        }
        with self.lock:
            self.apps.setdefault(app, {})[instance_id] = doc

    def remove(self, app: str, instance_id: str) -> bool:
        with self.lock:
            return self.apps.get(app.upper(), {}).pop(instance_id, None) is not None

    def instances(self, app: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {k: dict(v) for k, v in self.apps.get(app.upper(), {}).items()}

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> None:
        if self.username:
            import base64

            want = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if headers.get("Authorization", headers.get("authorization")) != want:
                raise _Reply(401, "", {"WWW-Authenticate": 'Basic realm="Realm"'})
        if method == "GET" and path == "/eureka/apps":
            with self.lock:
                apps = [
                    {"name": name, "instance": [dict(i) for _, i in sorted(insts.items())]}
                    for name, insts in sorted(self.apps.items())
                    if insts
                ]
                up = sum(1 for insts in self.apps.values() for i in insts.values() if i["status"] == "UP")
            raise _Reply(
                200, {"applications": {"versions__delta": "1", "apps__hashcode": f"UP_{up}_", "application": apps}}
            )
        if method == "POST" and (m := re.fullmatch(r"/eureka/apps/([^/]+)", path)):
            doc = json.loads(body).get("instance") or {}
            app = unquote(m.group(1)).upper()
            port = doc.get("port") or {}
            self.add(app, doc["instanceId"], doc.get("ipAddr") or doc["hostName"], int(port.get("$")),
                     status=doc.get("status", "UP"), metadata=doc.get("metadata"))  # fmt: skip
            raise _Reply(204)
        if (m := re.fullmatch(r"/eureka/apps/([^/]+)/([^/]+)", path)) and method in ("PUT", "DELETE"):
            app, iid = unquote(m.group(1)).upper(), unquote(m.group(2))
            with self.lock:
                known = iid in self.apps.get(app, {})
                if known and method == "PUT":
                    self.renewals[(app, iid)] = self.renewals.get((app, iid), 0) + 1
            if not known:
                raise _Reply(404)
            if method == "DELETE":
                self.remove(app, iid)
            raise _Reply(200)
        raise _Reply(404)
