"""What `flux-node` does about its credentials before its workers start.

- Stored credentials of this node id in `--cache-dir`, not expired: used; a `--join-token`
  is not needed (and not used again). A certificate of another group than `--group`: the
  node serves the certificate's group (that is what the control plane sends it).
- Otherwise, with `--join-token` (or `FLUX_JOIN_TOKEN`): enrol now, retrying while no
  control plane answers; a refusal (unknown, expired or used-up token, another group, CA
  pin mismatch) stops the node with one line. A node that has a cached snapshot serves it
  meanwhile: it enrols in the background and connects once that is done.
- Otherwise: a node with a cached snapshot serves it and says it cannot connect; one
  without stops with one line saying how to enrol.

Workers (`--workers N`) never enrol: the supervisor did, and they read the files.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import threading

from dataplane.discovery.cache import SnapshotFile
from dataplane.discovery.credentials import CredentialStore, EnrolmentError, enroll_until_done
from fluxcommon.trust import JoinToken

log = logging.getLogger("flux.node.trust")

HOW = "start it once with --join-token TOKEN (from `fluxctl nodes join-token --group GROUP`)"


class StartRefused(Exception):
    """The node cannot start; the message is the one line to print."""


def prepare(args: argparse.Namespace, addresses: list[str]) -> None:
    """Make sure the node can authenticate, as the module docstring says. May change
    `args.group` (to its certificate's). Raises StartRefused."""
    token_text = (args.join_token or "").strip()
    if args.worker_index is not None:  # a worker: the supervisor saw to it; only follow the certificate's group
        found = CredentialStore(args.cache_dir).load() if args.cache_dir else None
        if found is not None and found.node_id == args.node_id:
            args.group = found.group
        return
    if not args.cache_dir:
        if token_text:
            raise StartRefused("--join-token needs --cache-dir DIR (where the node keeps its key and certificate)")
        raise StartRefused(f"no credentials for the config stream (no --cache-dir): {HOW} and --cache-dir DIR")
    store = CredentialStore(args.cache_dir)
    existing = store.load()
    reason = f"no credentials in {store.dir}"
    if existing is not None:
        if existing.node_id != args.node_id:
            reason = f"the credentials in {store.dir} are for node {existing.node_id}, not {args.node_id}"
        elif existing.expired():
            reason = f"the stored certificate expired at {existing.not_after.isoformat(timespec='seconds')}"
        else:
            if existing.group != args.group:
                log.warning("node %s: its certificate is for group %s, not %s (--group): serving group %s",
                            args.node_id, existing.group, args.group, existing.group)  # fmt: skip
                args.group = existing.group
            if token_text:
                log.info("node %s is enrolled already (%s): --join-token not used", args.node_id, existing.describe())
            return
    cached = SnapshotFile(args.cache_dir, args.group).path
    has_snapshot = cached is not None and pathlib.Path(cached).exists()
    if not token_text:
        if has_snapshot:
            log.error("node %s: %s: serving the cached config without a control plane; %s", args.node_id, reason, HOW)
            return
        raise StartRefused(f"{reason}: {HOW}")
    try:
        token = JoinToken.parse(token_text)
    except ValueError as exc:
        raise StartRefused(f"--join-token: {exc}") from None
    if has_snapshot:
        threading.Thread(
            target=_enrol_in_background, args=(addresses, token, args.node_id, args.group, store),
            name="enrolment", daemon=True,
        ).start()  # fmt: skip
        return
    try:
        enroll_until_done(addresses, token, args.node_id, args.group, store)
    except EnrolmentError as exc:
        raise StartRefused(f"node {args.node_id}: {exc}") from None


def _enrol_in_background(
    addresses: list[str], token: JoinToken, node_id: str, group: str, store: CredentialStore
) -> None:
    try:
        enroll_until_done(addresses, token, node_id, group, store)
    except EnrolmentError as exc:
        log.error("node %s: %s; serving the cached config without a control plane", node_id, exc)
