"""`fluxctl rollouts`: list, show, abort or promote config rollouts.

fluxctl rollouts                 recent rollouts
fluxctl rollouts get r-1a2b3c    one, with its events and its nodes' answers
fluxctl rollouts abort r-1a2b3c  roll it back now
fluxctl rollouts promote r-1a2b3c
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from controlplane.cli.paths import segment
from controlplane.cli.waiting import Print


def _line(r: dict[str, Any]) -> str:
    how = " ".join(
        x
        for x in (
            f"canary {r['canary_percent']}%" if r.get("canary_percent") else "",
            "by group" if r.get("by_group") else "",
            f"bake {r['bake_ms'] / 1000:g}s" if r.get("bake_ms") else "",
        )
        if x
    )
    return (
        f"{r['id']}  {r['status']:<11}  v{r['from_version']} -> v{r['to_version']}  {how}  "
        f"groups {','.join(r['groups'])}  {r['created_at'][:19]}  {r.get('reason') or ''}".rstrip()
    )


def cmd_rollouts(client: Any, args: argparse.Namespace, out: Print = print) -> int:
    action = args.rollouts_action or "list"
    if action == "list":
        result = client.call("GET", "/api/v1/rollouts")
        if args.output == "json":
            out(json.dumps(result["items"], indent=2))
        else:
            out("\n".join(_line(r) for r in result["items"]) if result["items"] else "no rollouts")
        return 0
    method = "GET" if action == "get" else "POST"
    path = f"/api/v1/rollouts/{segment(args.rollout_id)}" + ("" if action == "get" else f"/{action}")
    doc = client.call(method, path)
    if args.output == "json":
        out(json.dumps(doc, indent=2))
        return 0
    out(_line(doc))
    if doc.get("canaries"):
        out(f"  canaries: {', '.join(doc['canaries'])}")
    if doc.get("analysis"):
        out(f"  analysis: {doc['analysis'].get('reason', '')}")
    for e in doc.get("events", []):
        out(f"  {e['at'][11:19]} {e['message']}")
    for n in doc.get("nodes", []):
        extra = f": {n['resource'] or '-'}: {n['reason']}" if n["state"] in ("refused", "failing") else ""
        out(f"  node {n['id']} (group {n['group']}, {n['role']}): {n['state']} v{n['acked_version'] or '-'}{extra}")
    return 0


def add_parser(sub: Any, out_parent: argparse.ArgumentParser) -> None:
    ro = sub.add_parser("rollouts", parents=[out_parent], help="config rollouts: list, get, abort, promote")
    rsub = ro.add_subparsers(dest="rollouts_action", metavar="[ACTION]")
    rsub.add_parser("list", parents=[out_parent], help="recent rollouts")
    for name, text in (
        ("get", "one rollout: stage, canaries, analysis, events, nodes"),
        ("abort", "roll a running rollout back now (admin)"),
        ("promote", "release every node of a running rollout now (admin)"),
    ):
        x = rsub.add_parser(name, parents=[out_parent], help=text)
        x.add_argument("rollout_id")
    ro.set_defaults(func=cmd_rollouts)
