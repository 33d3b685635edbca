"""`fluxctl` waiting for nodes: after apply, rollback and delete, and through a rollout.

`wait_for_version` asks `GET /api/v1/config/versions/{v}/nodes` (which itself waits a few
seconds at a time) until every connected node of the groups the version changed has
ACKed or NACKed it, then prints one line per node that refused it (node, resource,
reason). `follow_rollout` prints a rollout's events as they happen
(`GET /api/v1/rollouts/{id}`) and, once promoted, waits for the rest of the nodes.

Exit codes (what `fluxctl` returns): 0 every node took it; 2 a node refused it or could
not apply one of its resources (the rest applied: FAILING lines);
3 the rollout was rolled back; 4 nodes still had not answered when the wait ran out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, Protocol

from fluxcommon.durations import parse_duration_ms

OK, REFUSED, ROLLED_BACK, TIMED_OUT = 0, 2, 3, 4
POLL = 1.0  # seconds between looks at a rollout


class _Client(Protocol):
    def call(self, method: str, path: str, **kw: Any) -> Any: ...


Print = Callable[[str], None]


def _refusals(nodes: list[dict[str, Any]], out: Print) -> None:
    for n in nodes:
        if n["state"] == "refused":
            where = n.get("resource") or "-"
            out(f"  REFUSED {n['id']} (group {n['group']}): {where}: {n.get('reason', '')}")
        elif n["state"] == "failing":
            for f in n.get("failing_resources", []):
                kept = "keeps its previous version" if f.get("kept_previous") else "not served"
                out(f"  FAILING {n['id']} (group {n['group']}): {f['kind']}s/{f['name']} ({kept}): {f['message']}")


def wait_for_version(client: _Client, version: int, wait: float, out: Print = print) -> int:
    """Wait up to `wait` seconds for the nodes of the groups `version` changed; an exit code."""
    deadline = time.monotonic() + wait
    while True:
        left = max(0.0, deadline - time.monotonic())
        step = min(left, 5.0)
        status = client.call("GET", f"/api/v1/config/versions/{version}/nodes", params={"wait": f"{step:.2f}s"})
        if status["done"] or time.monotonic() >= deadline:
            break
    groups = ", ".join(status["groups"]) or "none"
    total = len(status["nodes"])
    if not status["groups"]:
        out(f"version {version} changes no node group's config: nothing to wait for")
        return OK
    if not total:
        out(f"version {version}: no node of group(s) {groups} is connected")
        return OK
    out(
        f"version {version} on group(s) {groups}: {status['acked']} of {total} node(s) took it"
        + (f", {status['failing']} applied it without some of its resources" if status.get("failing") else "")
        + (f", {status['refused']} refused it" if status["refused"] else "")
        + (f", {status['pending']} did not answer within {wait:g}s" if status["pending"] else "")
    )
    _refusals(status["nodes"], out)
    for n in status["nodes"]:
        if n["state"] == "pending":
            out(f"  PENDING {n['id']} (group {n['group']}): still on version {n.get('acked_version') or '-'}")
    if status["refused"] or status.get("failing"):
        return REFUSED
    return TIMED_OUT if status["pending"] else OK


def follow_rollout(client: _Client, rollout: dict[str, Any], wait: float, out: Print = print) -> int:
    """Print a rollout's events until it ends, then wait for the remaining nodes; an exit code.

    The wait is `wait` per stage plus each stage's bake (a rollout takes as long as it bakes)."""
    rid = rollout["id"]
    stages = (1 if rollout.get("canary_percent") else 0) + (len(rollout["groups"]) if rollout.get("by_group") else 0)
    deadline = time.monotonic() + (wait + rollout.get("bake_ms", 0) / 1000) * max(1, stages) + wait
    out(f"rollout {rid}: version {rollout['to_version']} (from {rollout['from_version']}) to group(s) "
        f"{', '.join(rollout['groups'])}" + (f"; canaries {', '.join(rollout['canaries'])}"
                                              if rollout.get("canaries") else ""))  # fmt: skip
    shown = 0
    doc = rollout
    while True:
        for e in doc.get("events", [])[shown:]:
            out(f"  {e['at'][11:19]} {e['message']}")
        shown = len(doc.get("events", []))
        if doc["status"] != "running":
            break
        if time.monotonic() >= deadline:
            out(f"rollout {rid} still running after {wait:g}s and its bakes: fluxctl rollouts get {rid}")
            return TIMED_OUT
        time.sleep(POLL)
        doc = client.call("GET", f"/api/v1/rollouts/{rid}")
    if doc["status"] == "rolled_back":
        out(f"rollout {rid} ROLLED BACK: {doc['reason'].removeprefix('rolled back: ')}")
        return ROLLED_BACK
    out(f"rollout {rid} {doc['reason']}")
    return wait_for_version(client, doc["to_version"], max(wait, 1.0), out)


def duration_seconds(text: str) -> float:
    """`--wait 30s` / `--bake 2m` as seconds (argparse type)."""
    try:
        return parse_duration_ms(text) / 1000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def percent(text: str) -> int:
    """`--canary 25` (argparse type): 1 to 100."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole percent, 1 to 100") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("a whole percent, 1 to 100")
    return value


def add_wait_args(parser: Any) -> None:
    """`--wait DURATION` (default 30s) and `--no-wait` on a command that commits a version."""
    parser.add_argument(
        "--wait",
        type=duration_seconds,
        default=30.0,
        metavar="DURATION",
        help="wait this long for every connected node of the changed groups to ACK or NACK (default 30s); "
        "exit 2 if a node refused, 4 if one had not answered",
    )
    parser.add_argument("--no-wait", action="store_true", help="return once the version is committed")


def after_commit(client: _Client, args: Any, version: int, out: Print = print) -> int:
    """Wait for the nodes unless --no-wait; the exit code."""
    if getattr(args, "no_wait", False):
        return OK
    return wait_for_version(client, version, args.wait, out)
