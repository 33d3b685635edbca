"""`flux-node`: the FLUX Gateway data-plane node."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import socket
import sys

import trio

from dataplane.discovery import startup
from dataplane.http.proxy import ProxySettings
from dataplane.worker import NodeOptions, NodeWorker
from fluxcommon.durations import parse_duration_ms
from fluxcommon.logs import setup_logging
from fluxcommon.netaddr import split_host_port
from fluxcommon.tracing.tracer import tracing_from_env
from fluxcommon.version import version_text

log = logging.getLogger("flux.node")


def _duration_s(text: str) -> float:
    try:
        return parse_duration_ms(text) / 1000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _workers(text: str) -> int:
    if text == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--workers takes a number or 'auto'") from None
    if n < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flux-node", description="FLUX Gateway data-plane node.")
    p.add_argument("--version", action="version", version=version_text("flux-node"))
    p.add_argument(
        "--control-plane",
        default=os.environ.get("FLUX_CONTROL_PLANE", "127.0.0.1:18000"),
        help="control-plane gRPC address(es), comma-separated for fail-over (default 127.0.0.1:18000)",
    )
    p.add_argument(
        "--node-id",
        default=os.environ.get("FLUX_NODE_ID") or socket.gethostname(),
        help="this node's id (default: host name)",
    )
    p.add_argument("--group", default="default", help="node group whose config to serve (default: default)")
    p.add_argument(
        "--zone",
        default=os.environ.get("FLUX_NODE_ZONE", ""),
        help="this node's zone: services with strategy prefer_zone send it to instances in the same zone first",
    )
    p.add_argument("--admin", default="127.0.0.1:9901", help="admin endpoint address (default 127.0.0.1:9901)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="keep the last good snapshot here and start from it when no control plane answers",
    )
    p.add_argument(
        "--join-token",
        default=os.environ.get("FLUX_JOIN_TOKEN", ""),
        help="enrol with this join token (`fluxctl nodes join-token`); needed once, the key and certificate "
        "are kept in --cache-dir (env FLUX_JOIN_TOKEN)",
    )
    p.add_argument("--workers", type=_workers, default=1, help="worker processes sharing the listeners, or 'auto'")
    p.add_argument("--drain-timeout", type=_duration_s, default=10.0, help="graceful shutdown deadline (default 10s)")
    p.add_argument(
        "--idle-timeout",
        type=_duration_s,
        default=60.0,
        help="client keep-alive idle timeout of listeners that set no timeouts.idle (default 60s)",
    )
    p.add_argument("--access-log", default="stdout", help="'stdout' (default), 'off', or a file path")
    p.add_argument("--log-level", default=os.environ.get("FLUX_LOG_LEVEL", "info"))
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--report-file", default=None, help=argparse.SUPPRESS)
    return p


def _access_log_fd(spec: str) -> int | None:
    if spec == "off":
        return None
    if spec == "stdout":
        return 1
    return os.open(spec, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def options_from(args: argparse.Namespace, worker_index: int, admin: tuple[str, int]) -> NodeOptions:
    node_id = args.node_id if args.workers == 1 else f"{args.node_id}/w{worker_index}"
    return NodeOptions(
        control_planes=[a.strip() for a in args.control_plane.split(",") if a.strip()],
        node_id=node_id,
        group=args.group,
        zone=args.zone,
        admin_address=admin[0],
        admin_port=admin[1],
        cache_dir=args.cache_dir,
        drain_timeout=args.drain_timeout,
        access_log_fd=_access_log_fd(args.access_log),
        worker_index=worker_index,
        workers=args.workers,
        settings=ProxySettings(idle_timeout=args.idle_timeout),
        # OTEL_EXPORTER_OTLP_ENDPOINT and friends (README "Tracing"); None when no endpoint is set
        tracing=tracing_from_env(
            "flux-node", instance=node_id, attributes={"flux.node.group": args.group, "flux.node.worker": worker_index}
        ),
    )


async def _run_worker(opts: NodeOptions, report_file: str | None) -> None:
    worker = NodeWorker(opts)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(worker.run)
        if report_file:
            await trio.to_thread.run_sync(_report, report_file, port)


def _report(report_file: str, port: int) -> None:
    """Tell the supervisor which admin port this worker took."""
    tmp = pathlib.Path(report_file + ".tmp")
    tmp.write_text(json.dumps({"admin_port": port, "pid": os.getpid()}))
    tmp.replace(report_file)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        admin = split_host_port(args.admin)
    except ValueError as exc:
        print(f"flux-node: --admin: {exc}", file=sys.stderr)
        sys.exit(2)
    control_planes = [a.strip() for a in args.control_plane.split(",") if a.strip()]
    if not control_planes:
        print("flux-node: --control-plane needs at least one address", file=sys.stderr)
        sys.exit(2)
    try:
        startup.prepare(args, control_planes)
    except startup.StartRefused as exc:
        print(f"flux-node: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(0)
    if args.workers > 1 and args.worker_index is None:
        from dataplane.supervisor import run_supervisor

        try:
            sys.exit(run_supervisor(args, admin))
        except (OSError, BaseExceptionGroup) as exc:
            _exit_if_oserror(exc)
            raise
    index = args.worker_index or 0
    opts = options_from(args, index, admin)
    if not opts.control_planes:
        print("flux-node: --control-plane needs at least one address", file=sys.stderr)
        sys.exit(2)
    try:
        trio.run(_run_worker, opts, args.report_file)
    except KeyboardInterrupt:
        pass
    except (OSError, BaseExceptionGroup) as exc:  # trio groups what its nurseries raise
        _exit_if_oserror(exc)
        raise
    sys.exit(0)


def _exit_if_oserror(exc: BaseException) -> None:
    """A start that failed on a socket (--admin taken, say): one line and exit 2, no traceback."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, OSError):
        print(f"flux-node: cannot start: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
