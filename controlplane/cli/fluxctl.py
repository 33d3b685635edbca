"""`fluxctl`: the control plane's REST API from the command line.

    fluxctl apply -f flux.yaml [--prune] [--diff] [--wait 30s | --no-wait] [--canary 25 --bake 2m] [--by-group]
    fluxctl get routes [NAME] [-o table|yaml|json]
    fluxctl delete route orders-api
    fluxctl nodes
    fluxctl nodes join-token --group edge [--ttl 1h] [--uses 10]
    fluxctl nodes revoke edge-1
    fluxctl history
    fluxctl rollback 12
    fluxctl rollouts [get|abort|promote ID]
    fluxctl tokens create ci --role read [--services a,b] [--ttl 90d]
    fluxctl tokens list
    fluxctl tokens delete ci
    fluxctl tunnels agent-config edge --user office [--server-addr gw.example.com] [-f frpc.toml]

Reads FLUX_SERVER (default http://127.0.0.1:9080) and FLUX_TOKEN or FLUX_ADMIN_TOKEN
(the admin token or an API token), or --server / --token. Reads (get, nodes, history,
version, apply --diff/--dry-run) work with a read token.

apply, rollback and delete wait (--wait 30s, --no-wait) for every connected node of the
node groups the new version changes to ACK or NACK it, and print each node that refused it.
Exit codes: 0 done; 1 an error; 2 a node refused the version; 3 a rollout was rolled back;
4 nodes had not answered when the wait ran out.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx
import yaml

from controlplane.cli import rollouts, waiting
from controlplane.cli.paths import segment
from controlplane.spec.configset import KINDS, kind_of
from fluxcommon import yamlsafe
from fluxcommon.didyoumean import suggest
from fluxcommon.version import version_text

Row = dict[str, Any]


def _join(values: Any, limit: int = 3) -> str:
    values = list(values or [])
    text = ",".join(str(v) for v in values[:limit])
    return text + (f",+{len(values) - limit}" if len(values) > limit else "") if values else "-"


def _endpoints(c: Row) -> str:
    if c.get("service"):
        return f"service:{c['service'].get('name')}"
    return _join(
        [
            f"{e['address']}:{e['port']}" + (f"*{e['weight']}" if e.get("weight", 1) != 1 else "")
            for e in c.get("endpoints", [])
        ],
        2,
    )


ELLIPSIS = "\u2026"
MAX_CELL = 60
"""Table cells longer than this are cut, ending in an ellipsis (`-o yaml|json` shows them whole)."""


def _cut(text: str, width: int = MAX_CELL) -> str:
    """`text` in at most `width` characters: cut ones end in an ellipsis, so a reader sees the cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + ELLIPSIS


def _route_clusters(r: Row) -> str:
    return r.get("cluster") or _join([f"{c['name']}:{c['weight']}" for c in r.get("clusters", [])])


def _expiry(r: Row) -> str:
    """When a certificate expires, with a warning under 14 days (and once expired)."""
    days = r.get("expires_in_days")
    if days is None:
        return "-"
    when = str(r.get("not_after", ""))[:10]
    if days < 0:
        return f"{when} EXPIRED"
    return f"{when} ({days:.0f}d){' WARNING: under 14 days' if days < 14 else ''}"


COLUMNS: dict[str, list[tuple[str, Callable[[Row], Any]]]] = {
    "listeners": [
        ("NAME", lambda r: r["name"]), ("PROTOCOL", lambda r: r["protocol"]),
        ("ADDRESS", lambda r: f"{r['address']}:{r['port']}"), ("GROUP", lambda r: r["node_group"]),
        ("POLICIES", lambda r: _join(r.get("policies"))),
    ],
    "clusters": [
        ("NAME", lambda r: r["name"]), ("LB", lambda r: r["lb"]), ("ENDPOINTS", _endpoints),
        ("HEALTH", lambda r: (r.get("health_check") or {}).get("type", "-")),
    ],
    "routes": [
        ("NAME", lambda r: r["name"]), ("LISTENER", lambda r: r.get("listener") or "*"),
        ("HOSTS", lambda r: _join(r.get("hosts")) if r.get("hosts") else "*"),
        ("PATH", lambda r: f"{r['path']} ({r['path_type']})"),
        ("METHODS", lambda r: _join(r.get("methods"), 4) if r.get("methods") else "*"),
        ("CLUSTER", _route_clusters),
        ("PRIORITY", lambda r: r.get("priority", 0)),
    ],
    "policies": [
        ("NAME", lambda r: r["name"]), ("TYPE", lambda r: r["type"]),
        ("GLOBAL", lambda r: "yes" if r.get("global") else "no"),
    ],
    "consumers": [
        ("NAME", lambda r: r["name"]), ("GROUPS", lambda r: _join(r.get("groups"))),
        ("CREDENTIALS", lambda r: _join([c["type"] for c in r.get("credentials", [])])),
    ],
    "certificates": [
        ("NAME", lambda r: r["name"]), ("SNIS", lambda r: _join(r.get("snis") or r.get("names"))),
        ("EXPIRES", _expiry),
    ],
    "tunnels": [
        ("NAME", lambda r: r["name"]), ("GROUP", lambda r: r["node_group"]),
        ("BIND", lambda r: f"{r['bind_address']}:{r['bind_port']}"),
        ("ALLOW_PORTS", lambda r: r["allow_ports"]),
        ("MAPPINGS", lambda r: len(r.get("mappings", []))),
    ],
    "services": [
        ("NAME", lambda r: r["name"]), ("NAMESPACE", lambda r: r["namespace"]), ("GROUP", lambda r: r["group"] or "-"),
        ("TAGS", lambda r: _join(r.get("tags"))),
        ("INSTANCES", lambda r: f"{r.get('healthy_instances', 0)}/{r.get('instances', 0)}"),
        ("STRATEGY", lambda r: r["strategy"]), ("INDEX", lambda r: r["modify_index"]),
    ],
    "registries": [
        ("NAME", lambda r: r["name"]), ("TYPE", lambda r: r["type"]), ("ADDRESS", lambda r: r["address"]),
        ("IMPORT", lambda r: ("yes: " + (_join(r.get("services")) if r.get("services") else "all"))
                             if r.get("import", True) else "no"),
        ("EXPORT", lambda r: ("yes: " + (_join(r.get("export_services")) if r.get("export_services") else "all"))
                             if r.get("export") else "no"),
        ("INTERVAL", lambda r: r.get("interval", "-")),
    ],
    "alerts": [
        ("NAME", lambda r: r["name"]), ("KIND", lambda r: r["kind"]), ("SERVICE", lambda r: r.get("service", "*")),
        ("THRESHOLD", lambda r: r.get("threshold", "-")),
        ("WINDOW", lambda r: r.get("window", "-") if r["kind"] == "flapping" else "-"),
        ("COOLDOWN", lambda r: r.get("cooldown", "-")), ("WEBHOOK", lambda r: r.get("webhook", "-")),
    ],
    "nodes": [
        ("ID", lambda r: r["id"]), ("GROUP", lambda r: r["group"]),
        ("ADDRESS", lambda r: r["address"] or "-"),
        ("STATE", lambda r: "connected" if r["connected"] else "gone"),
        ("ACKED", lambda r: r["acked_version"] or "-"),
        ("SYNC", lambda r: "yes" if r["in_sync"] else "no"),
        ("FAILING", lambda r: ", ".join(f"{f['kind']}s/{f['name']}" for f in r.get("failing_resources") or []) or "-"),
        ("LAST NACK", lambda r: (f"v{r['last_nack']['version']}: {r['last_nack']['message']}"
                                 if r.get("last_nack") else "-")),
        ("LAST SEEN", lambda r: (r.get("last_seen") or "-")[:19]),
    ],
    "history": [
        ("VERSION", lambda r: r["version"]), ("CREATED", lambda r: r["created_at"][:19]),
        ("AUTHOR", lambda r: r["author"]), ("RESOURCES", lambda r: r["resources"]),
        ("SUMMARY", lambda r: r["summary"]),
    ],
    "tokens": [
        ("NAME", lambda r: r["name"]), ("ROLE", lambda r: r["role"]), ("SERVICES", lambda r: _join(r.get("services"))),
        ("CREATED", lambda r: r["created_at"][:19]),
        ("EXPIRES", lambda r: (r.get("expires_at") or "never")[:19] + (" (expired)" if r.get("expired") else "")),
        ("LAST USED", lambda r: (r.get("last_used_at") or "-")[:19]),
    ],
}  # fmt: skip


def table(rows: list[Row], columns: list[tuple[str, Callable[[Row], Any]]], *, whole: bool = False) -> str:
    """Rows under a header, columns aligned; a cell past MAX_CELL characters is cut with an ellipsis
    (`whole`: never, as `fluxctl nodes` shows NACK reasons)."""
    keep = str if whole else lambda v: _cut(str(v))
    cells = [[h for h, _ in columns]] + [[keep(f(r)) for _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


class CliError(Exception):
    pass


def _error_lines(status: int, body: Row) -> list[str]:
    """A refusal as the control plane gave it: every problem on a line, as `flux-tunnel verify`."""
    errors = body.get("errors") or []
    head = f"error ({status} {body.get('error', '')})"
    if len(errors) < 2:
        return [f"{head}: {body.get('message', '')}"]
    lines = [f"{head}: {len(errors)} problems; nothing was changed"]
    for e in errors:
        where = ": ".join(x for x in (e.get("resource"), e.get("field")) if x)
        lines.append(f"  {where}: {e.get('message')}" if where else f"  {e.get('message')}")
    return lines


class Client:
    def __init__(self, server: str, token: str | None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        if "://" not in self.server:  # `--server 127.0.0.1:9080`: plain HTTP, as the default
            self.server = f"http://{self.server}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["X-Flux-Author"] = os.environ.get("USER", "fluxctl")
        if os.environ.get("TRACEPARENT"):  # OpenTelemetry's environment carrier: the write joins that trace
            headers["traceparent"] = os.environ["TRACEPARENT"]
            if os.environ.get("TRACESTATE"):
                headers["tracestate"] = os.environ["TRACESTATE"]
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the control plane at {self.server}: {exc}") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                raise CliError(f"{resp.status_code}: {resp.text[:200]}") from None
            if not isinstance(body, dict) or "error" not in body or "message" not in body:
                raise CliError(self.not_control_plane(f"{method} {path}: {resp.status_code} {resp.text[:200]!r}"))
            lines = _error_lines(resp.status_code, body)
            if resp.status_code == 401:
                lines.append(
                    "  (set FLUX_TOKEN or FLUX_ADMIN_TOKEN, or pass --token: the admin token, which the control"
                    " plane printed where it is, or an API token)"
                )
            raise CliError("\n".join(lines))
        try:
            return resp.json()
        except ValueError:
            raise CliError(self.not_control_plane(f"{method} {path}: {resp.text[:200]!r}")) from None

    def not_control_plane(self, answer: str) -> str:
        return (
            f"{self.server} does not answer as a FLUX control plane ({answer}):"
            " is --server (FLUX_SERVER) the control plane's REST address, such as http://127.0.0.1:9080?"
        )

    def list_all(self, plural: str) -> list[Row]:
        items: list[Row] = []
        offset = 0
        while True:
            page = self.call("GET", f"/api/v1/{plural}", params={"limit": 1000, "offset": offset})
            items += page["items"]
            offset += len(page["items"])
            if offset >= page["total"] or not page["items"]:
                return items


def _load_files(paths: list[str]) -> dict[str, list[Row]]:
    """The files' resources by kind; CliError naming every problem of every file at once."""
    merged: dict[str, list[Row]] = {}
    problems: list[str] = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
            docs = list(yamlsafe.load_all(text))  # no anchors/aliases: no expansion bombs
        except OSError as exc:
            problems.append(f"cannot read {path}: {exc.strerror}")
            continue
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}")
            continue
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                problems.append(f"{path}: the top level must be a mapping of kinds (listeners:, routes:, ...)")
                continue
            for plural, items in doc.items():
                if plural == "version":  # GET /api/v1/config/export names its version; POST /apply skips it too
                    continue
                if plural == "services":
                    problems.append(
                        f"{path}: services are the registry's, not config: curl -X POST $FLUX_SERVER/api/v1/"
                        f'services:import -H "Authorization: Bearer $FLUX_ADMIN_TOKEN" --data-binary @{path}'
                    )
                elif plural not in KINDS:
                    hint = suggest(str(plural), KINDS)
                    problems.append(f"{path}: unknown kind {plural!r}{hint}; use {', '.join(KINDS)}")
                elif items is not None and not isinstance(items, list):
                    problems.append(f"{path}: {plural}: a list of resources ({plural}: [{{name: ...}}, ...])")
                else:
                    merged.setdefault(plural, []).extend(items or [])
    if len(problems) == 1:
        raise CliError(problems[0])
    if problems:
        raise CliError("\n".join([f"{len(problems)} problems; nothing was sent", *(f"  {p}" for p in problems)]))
    return merged


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    body = _load_files(args.filename)
    dry = args.diff or args.dry_run
    params: dict[str, Any] = {"prune": args.prune, "dry_run": dry}
    if args.canary:
        params["canary"] = args.canary
    if args.by_group:
        params["by_group"] = True
    if args.bake is not None:
        params["bake"] = args.bake
    result = client.call("POST", "/api/v1/apply", json=body, params=params)
    symbols = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}
    for change in result["changes"]:
        if change["action"] == "unchanged" and not args.verbose:
            continue
        print(
            f"{symbols[change['action']]} {change['kind']}/{change['name']} {change['action']}"
            f"{'' if not dry or change['action'] == 'unchanged' else ' (dry run)'}"
        )
        if args.diff and change["action"] != "unchanged":
            d = result.get("diff", {}).get(f"{change['kind']}/{change['name']}", {})
            before = _dump(d["before"]).splitlines() if d.get("before") else []
            after = _dump(d["after"]).splitlines() if d.get("after") else []
            for line in list(difflib.unified_diff(before, after, "current", "file", lineterm="", n=2))[2:]:
                print(f"    {line}")
    n = sum(1 for c in result["changes"] if c["action"] != "unchanged")
    if dry:
        print(f"{n} change(s) would be made; nothing committed (current version {result['version']})")
    elif result["committed"]:
        print(f"applied {n} change(s): config version {result['version']}")
        if result.get("rollout") and not args.no_wait:
            return waiting.follow_rollout(client, result["rollout"], args.wait)
        if result.get("rollout"):
            print(f"rollout {result['rollout']['id']} started: fluxctl rollouts get {result['rollout']['id']}")
            return 0
        return waiting.after_commit(client, args, result["version"])
    else:
        print(f"no changes: config version {result['version']}")
    return 0


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    if args.kind == "all":
        doc = client.call("GET", "/api/v1/config/export")
        doc.pop("version", None)
        print(_dump(doc) if args.output != "json" else json.dumps(doc, indent=2))
        return 0
    try:
        plural = "services" if args.kind in ("services", "service") else kind_of(args.kind).plural  # registry
    except KeyError as exc:  # `get` also reads the registry's services and the whole config
        raise CliError(str(exc).strip("'\"") + "; or services (the registry), all") from None
    if args.name:
        item = client.call("GET", f"/api/v1/{plural}/{segment(args.name)}")
        rows = [item]
    else:
        rows = client.list_all(plural)
    if args.output == "json":
        print(json.dumps(rows[0] if args.name else rows, indent=2))
    elif args.output == "yaml" or (args.name and args.output == "table"):
        print(_dump({plural: rows}), end="")
    else:
        print(table(rows, COLUMNS[plural]) if rows else f"no {plural}")
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    if args.kind in ("services", "service"):  # the registry's: no config version to wait for
        gone = client.call("DELETE", f"/api/v1/services/{segment(args.name)}")
        print(f"deleted services/{args.name}: registry index {gone['index']}")
        return 0
    try:
        plural = kind_of(args.kind).plural
    except KeyError as exc:
        raise CliError(str(exc).strip("'\"")) from None
    result = client.call("DELETE", f"/api/v1/{plural}/{segment(args.name)}")
    print(f"deleted {plural}/{args.name}: config version {result['version']}")
    return waiting.after_commit(client, args, result["version"])


def cmd_nodes(client: Client, args: argparse.Namespace) -> int:
    if args.nodes_action == "join-token":
        body = {"group": args.group, "ttl": args.ttl, "uses": args.uses}
        made = client.call("POST", "/api/v1/nodes/join-tokens", json=body)
        if args.output == "json":
            print(json.dumps(made, indent=2))
            return 0
        print(made["token"])
        print(f"join token {made['id']} for group {made['group']}: {made['uses']} use(s) until "
              f"{made['expires_at']}; CA {made['ca_pin']}. Shown this once:\n  {made['usage']}",
              file=sys.stderr)  # fmt: skip
        return 0
    if args.nodes_action == "revoke":
        gone = client.call("DELETE", f"/api/v1/nodes/{segment(args.node_id)}")
        print(f"revoked node {gone['revoked']}: {gone['certificates']} certificate(s); its streams are cut")
        return 0
    result = client.call("GET", "/api/v1/nodes")
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.output == "yaml":
        print(_dump(result), end="")
    else:
        print(f"config version {result['version']}")
        print(table(result["items"], COLUMNS["nodes"], whole=True) if result["items"] else "no nodes have connected")
        for node in result["items"]:
            for f in node.get("failing_resources") or []:
                kept = "keeps its previous version" if f.get("kept_previous") else "not served"
                print(f"  {node['id']}: {f['kind']}s/{f['name']} ({kept}): {f['message']}")
    return 0


def cmd_history(client: Client, args: argparse.Namespace) -> int:
    result = client.call("GET", "/api/v1/config/history", params={"limit": args.limit})
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(table(result["items"], COLUMNS["history"]) if result["items"] else "no history yet")
    return 0


def cmd_rollback(client: Client, args: argparse.Namespace) -> int:
    result = client.call("POST", "/api/v1/config/rollback", json={"version": args.version})
    for change in result["changes"]:
        print(f"  {change['action']} {change['kind']}/{change['name']}")
    if result["committed"]:
        print(f"rolled back to version {args.version}: config version {result['version']}")
        return waiting.after_commit(client, args, result["version"])
    else:
        print(f"version {args.version} is the current config already (version {result['version']})")
    return 0


def cmd_version(client: Client, args: argparse.Namespace) -> int:
    result = client.call("GET", "/api/v1/config")
    print(f"config version {result['version']} (digest {result['digest'][:12]})")
    for plural, count in result["resources"].items():
        print(f"  {plural:<13} {count}")
    return 0


def cmd_tokens(client: Client, args: argparse.Namespace) -> int:
    if args.action == "create":
        body: Row = {"name": args.name, "role": args.role}
        if args.services:
            body["services"] = [s.strip() for s in args.services.split(",") if s.strip()]
        if args.ttl:
            body["ttl"] = args.ttl
        result = client.call("POST", "/api/v1/tokens", json=body)
        if args.output == "json":
            print(json.dumps(result, indent=2))
            return 0
        print(result["token"])
        expires = f"expires {result['expires_at'][:19]}" if result.get("expires_at") else "no expiry"
        note = f"token {result['name']!r} (role {result['role']}, {expires}): shown this once, keep it now"
        print(note, file=sys.stderr)
    elif args.action == "delete":
        client.call("DELETE", f"/api/v1/tokens/{segment(args.name)}")
        print(f"revoked token {args.name}")
    else:
        result = client.call("GET", "/api/v1/tokens")
        if args.output == "json":
            print(json.dumps(result["items"], indent=2))
        elif args.output == "yaml":
            print(_dump({"tokens": result["items"]}), end="")
        else:
            print(table(result["items"], COLUMNS["tokens"]) if result["items"] else "no API tokens")
    return 0


def cmd_tunnels(client: Client, args: argparse.Namespace) -> int:
    """`tunnels agent-config`: a ready flux-tunnel config for one tunnel user (admin: it holds the token)."""
    body = {"user": args.user, "server": args.server_addr}
    result = client.call("POST", f"/api/v1/tunnels/{segment(args.name)}/agent-config", json=body)
    config: str = result["config"]
    directory = os.path.dirname(os.path.abspath(args.file)) if args.file else os.getcwd()
    if result["ca_pem"]:
        ca = os.path.join(directory, result["ca_file"])
        with open(ca, "w", encoding="utf-8") as f:
            f.write(result["ca_pem"])
        print(f"wrote the node's CA to {ca}", file=sys.stderr)
        if not args.file:  # printed: point at the CA wherever the config is saved
            config = config.replace(json.dumps(result["ca_file"]), json.dumps(ca), 1)
    if not args.file:
        sys.stdout.write(config)
        return 0
    fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the user's token
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(config)
    print(f"wrote {args.file}; start the agent with: flux-tunnel -c {args.file}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluxctl", description="Manage FLUX Gateway through its control plane.")
    p.add_argument(
        "--server",
        default=os.environ.get("FLUX_SERVER", "http://127.0.0.1:9080"),
        help="control plane URL (FLUX_SERVER, default http://127.0.0.1:9080)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("FLUX_TOKEN") or os.environ.get("FLUX_ADMIN_TOKEN"),
        help="the admin token or an API token (FLUX_TOKEN, else FLUX_ADMIN_TOKEN); reads need a read token at least",
    )
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.add_argument("--version", action="version", version=version_text("fluxctl"))
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument(
        "-o",
        "--output",
        choices=["table", "yaml", "json"],
        default=argparse.SUPPRESS,
        help="output format (default table)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("apply", parents=[out], help="create or update what a YAML file describes")
    a.add_argument("-f", "--filename", action="append", required=True, help="YAML file ('-' for stdin); repeatable")
    a.add_argument("--prune", action="store_true", help="delete resources of the file's kinds that it does not name")
    a.add_argument("--diff", action="store_true", help="show what would change, field by field; commit nothing")
    a.add_argument("--dry-run", action="store_true", help="validate and list the changes; commit nothing")
    a.add_argument("-v", "--verbose", action="store_true", help="list unchanged resources too")
    a.add_argument(
        "--canary",
        type=waiting.percent,
        metavar="PERCENT",
        help="config canary: the new version to this share of each changed group's nodes first (at least one); "
        "the rest follow if the canaries ACK and their 5xx rate and latency hold up during --bake",
    )
    a.add_argument("--bake", default=None, metavar="DURATION", help="how long each stage is watched (default 1m)")
    a.add_argument("--by-group", action="store_true", help="release the changed node groups one after another")
    waiting.add_wait_args(a)
    a.set_defaults(func=cmd_apply)

    g = sub.add_parser("get", parents=[out], help="list resources of a kind, or show one")
    g.add_argument("kind", help=f"{', '.join(KINDS)}, services (or singular), or 'all'")
    g.add_argument("name", nargs="?")
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("delete", parents=[out], help="delete one resource")
    d.add_argument("kind")
    d.add_argument("name")
    waiting.add_wait_args(d)
    d.set_defaults(func=cmd_delete)

    n = sub.add_parser("nodes", parents=[out], help="connected data-plane nodes and their config state")
    nsub = n.add_subparsers(dest="nodes_action", metavar="[ACTION]")
    nj = nsub.add_parser("join-token", parents=[out], help="a join token nodes enrol with (admin; printed once)")
    nj.add_argument("--group", default="default", help="the node group it enrols nodes in (default: default)")
    nj.add_argument("--ttl", default="1h", help="how long it allows enrolment (default 1h)")
    nj.add_argument("--uses", type=int, default=1, help="how many nodes may enrol with it (default 1)")
    nr = nsub.add_parser("revoke", parents=[out], help="revoke a node: its certificate is refused, its stream cut")
    nr.add_argument("node_id")
    n.set_defaults(func=cmd_nodes)
    h = sub.add_parser("history", parents=[out], help="committed config versions")
    h.add_argument("--limit", type=int, default=20)
    h.set_defaults(func=cmd_history)
    r = sub.add_parser("rollback", parents=[out], help="make an earlier config version current again")
    r.add_argument("version", type=int)
    waiting.add_wait_args(r)
    r.set_defaults(func=cmd_rollback)
    rollouts.add_parser(sub, out)
    sub.add_parser("version", parents=[out], help="current config version and resource counts").set_defaults(
        func=cmd_version
    )

    t = sub.add_parser("tokens", help="API tokens with roles (admin token needed)")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", parents=[out], help="create a token; it is printed once")
    tc.add_argument("name")
    tc.add_argument("--role", choices=["read", "registry", "admin"], required=True)
    tc.add_argument("--services", default="", help="registry role: the services it may register (a,b)")
    tc.add_argument("--ttl", default="", help="lifetime, e.g. 90d (default: until deleted)")
    tsub.add_parser("list", parents=[out], help="tokens: name, role, services, expiry, last use")
    td = tsub.add_parser("delete", parents=[out], help="revoke a token at once")
    td.add_argument("name")
    t.set_defaults(func=cmd_tokens)

    tu = sub.add_parser("tunnels", help="tunnel helpers")
    tusub = tu.add_subparsers(dest="action", required=True, metavar="ACTION")
    ac = tusub.add_parser(
        "agent-config", help="a ready flux-tunnel config (frpc.toml) for a tunnel user, its CA beside it (admin)"
    )
    ac.add_argument("name", help="the tunnel")
    ac.add_argument("--user", required=True, help="the tunnel user (tunnels[].users[].name)")
    ac.add_argument("--server-addr", default="", help="HOST or HOST:PORT agents dial (default: the nodes' address)")
    ac.add_argument("-f", "--file", default="", help="write the config here (mode 0600) instead of printing it")
    tu.set_defaults(func=cmd_tunnels)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # an ellipsis where the terminal cannot show one: "?"
    client = Client(args.server, args.token)
    try:
        code = args.func(client, args)
        sys.stdout.flush()
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        code = 1
    except (KeyError, TypeError) as exc:
        # an answer without the fields a control plane's has: --server names something else (the gateway?)
        shape = f"an answer without {exc}" if isinstance(exc, KeyError) else f"an answer of another shape: {exc}"
        print(client.not_control_plane(shape), file=sys.stderr)
        code = 1
    except BrokenPipeError:
        # `fluxctl history | head -1`: the reader went away. Stop quietly, as a tool killed by
        # SIGPIPE would (128 + 13), and keep the flush at exit from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    main()
