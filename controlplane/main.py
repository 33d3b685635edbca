"""`flux-controlplane`: REST API + gRPC discovery server in one asyncio process.

`flux-controlplane rotate-secret-key` re-encrypts the stored secrets with a new key
(controlplane.cli.rotate_secret_key); with no command it serves, as always.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import socket
import sys
from datetime import timedelta

import grpc
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from controlplane.api.app import create_app
from controlplane.api.state import ControlPlane
from controlplane.auth import load_admin_token
from controlplane.discovery.authn import NodeAuthenticator, ServerTLS
from controlplane.discovery.cache import SnapshotCache
from controlplane.discovery.enrolment import EnrolmentServicer
from controlplane.discovery.nodes import NodeRegistry
from controlplane.discovery.server import DiscoveryServicer
from controlplane.discovery.watcher import ConfigWatcher
from controlplane.filemodes import private_dir
from controlplane.pki import CertificateAuthority, CertificateError
from controlplane.registry.adapters.manager import RegistrySourceManager
from controlplane.registry.alerts import AlertManager, alert_rules
from controlplane.registry.health import HealthProber
from controlplane.registry.store import RegistryStore
from controlplane.rollouts.driver import RolloutManager
from controlplane.rollouts.store import RolloutStore
from controlplane.secretbox import SecretBox, SecretKeyError, load_secret_key
from controlplane.store import encryption
from controlplane.store.config_store import ConfigStore
from controlplane.store.db import make_engine, migrate, normalize_url
from controlplane.store.trust import TrustStore, load_or_create_ca
from controlplane.tracing import ConfigTracing
from controlplane.tunnel_sessions import TunnelSessions
from flux.v1 import discovery_pb2_grpc, enrolment_pb2_grpc
from fluxcommon.durations import parse_duration_ms
from fluxcommon.logs import setup_logging
from fluxcommon.netaddr import split_host_port
from fluxcommon.tracing.tracer import tracing_from_env
from fluxcommon.trust import pin_hex
from fluxcommon.version import version_text

log = logging.getLogger("flux.controlplane")

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC binds with SO_REUSEPORT by default: a second control plane given a taken --grpc port
    # would start and take half of the nodes' connections (of another database, maybe)
    ("grpc.so_reuseport", 0),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="flux-controlplane",
        description="FLUX Gateway control plane: REST API on --http, config stream (gRPC) on --grpc.",
        epilog="flux-controlplane rotate-secret-key --help: re-encrypt the stored secrets with a new key.",
    )
    p.add_argument(
        "--db",
        default=os.environ.get("FLUX_DB", "sqlite:///data/flux.db"),
        help="sqlite:///PATH (default sqlite:///data/flux.db) or mysql+pymysql://USER:PASS@HOST/DB",
    )
    p.add_argument("--version", action="version", version=version_text("flux-controlplane"))
    p.add_argument("--http", default="127.0.0.1:9080", help="REST listen address (default 127.0.0.1:9080)")
    p.add_argument("--grpc", default="127.0.0.1:18000", help="discovery listen address (default 127.0.0.1:18000)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the admin token and secret key are kept (default: the SQLite file's folder, else ./data)",
    )
    p.add_argument("--id", default=None, help="this control plane's id (default HOSTNAME:PID)")
    p.add_argument("--history-limit", type=int, default=1000, help="config versions kept for rollback")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.2,
        help="seconds between checks for versions written by other control planes",
    )
    p.add_argument(
        "--forget-nodes-after",
        type=_grace,
        default=timedelta(hours=24),
        metavar="DURATION",
        help="drop a node disconnected this long from /api/v1/nodes and the nodes table (default 24h; 0: never)",
    )
    p.add_argument("--log-level", default=os.environ.get("FLUX_LOG_LEVEL", "info"))
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    tls = p.add_argument_group(
        "node trust",
        "The config stream is mutual TLS, always. By default the node CA is made on the first start and kept in "
        "the database (its key encrypted with the secret key), shared by every control plane of the database.",
    )
    tls.add_argument("--tls-cert", default=None, help="your CA (or intermediate CA) certificate to sign nodes with")
    tls.add_argument("--tls-key", default=None, help="the private key of --tls-cert")
    tls.add_argument("--tls-ca", default=None, help="the trust root nodes pin (default: --tls-cert)")
    tls.add_argument(
        "--node-cert-ttl",
        type=_duration_s,
        default=86400.0,
        help="lifetime of node certificates (default 24h); nodes renew at two thirds of it",
    )
    return p.parse_args(argv)


def _duration_s(text: str) -> float:
    try:
        seconds = parse_duration_ms(text) / 1000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 10:
        raise argparse.ArgumentTypeError("at least 10s")
    return seconds


def _grace(text: str) -> timedelta | None:
    """--forget-nodes-after: a duration (at least 1s), or 0 for never."""
    try:
        ms = parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if ms == 0:
        return None
    if ms < 1000:
        raise argparse.ArgumentTypeError("at least 1s (or 0: never)")
    return timedelta(milliseconds=ms)


def _node_ca(args: argparse.Namespace, engine: Engine, box: SecretBox) -> tuple[CertificateAuthority, str]:
    """The node CA from --tls-* files, or the database's (made now if it has none); (ca, how)."""
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key):
            raise CertificateError("--tls-cert and --tls-key go together (--tls-ca is optional)")
        return CertificateAuthority.from_files(args.tls_ca, args.tls_cert, args.tls_key), "files"
    ca, created = load_or_create_ca(engine, box)
    return ca, "database, new" if created else "database"


def _data_dir(args: argparse.Namespace) -> pathlib.Path:
    if args.data_dir:
        return pathlib.Path(args.data_dir)
    url = make_url(normalize_url(args.db))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return pathlib.Path(url.database).expanduser().resolve().parent
    return pathlib.Path("data")


def _bind(address: str) -> socket.socket:
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listening
    # socket says so; with proto 0 every response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen for the REST API on {address}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace) -> int:
    cp_id = args.id or f"{socket.gethostname()}:{os.getpid()}"
    data_dir = _data_dir(args)
    if data_dir.exists():
        private_dir(data_dir)  # 0700; created so by the first file written into it otherwise
    engine = make_engine(args.db)
    loaded_key = load_secret_key(data_dir)
    await asyncio.to_thread(lambda: migrate(engine, secrets=encryption.migration_box(engine, loaded_key)))
    token = load_admin_token(data_dir)
    secret_key, _ = await asyncio.to_thread(encryption.start, engine, loaded_key)
    store = ConfigStore(engine, history_limit=args.history_limit, secrets=SecretBox(secret_key.key))
    node_ca, ca_source = await asyncio.to_thread(_node_ca, args, engine, SecretBox(secret_key.key))
    trust = TrustStore(engine, node_ca, timedelta(seconds=args.node_cert_ttl))
    authenticator = NodeAuthenticator(node_ca, trust)
    registry = RegistryStore(engine, cp_id)
    await asyncio.to_thread(registry.load)
    cache = SnapshotCache(registry=registry)
    nodes = NodeRegistry(engine, cp_id, forget_after=args.forget_nodes_after)
    tunnels = TunnelSessions()
    # OTEL_EXPORTER_OTLP_ENDPOINT and friends (README "Tracing"): writes traced through to the nodes
    otel = tracing_from_env("flux-controlplane", instance=cp_id)
    tracing = ConfigTracing(otel) if otel is not None else None
    servicer = DiscoveryServicer(cache, nodes, cp_id, tunnels, auth=authenticator, tracing=tracing)
    cp = ControlPlane(
        store=store,
        token=token,
        nodes=nodes,
        cache=cache,
        control_plane_id=cp_id,
        servicer=servicer,
        registry=registry,
        tunnel_sessions=tunnels,
        tracing=tracing,
    )
    watcher = ConfigWatcher(store, cache, poll_interval=args.poll_interval, tracing=tracing)
    rollouts = RolloutManager(store, RolloutStore(engine), nodes, cache, cp_id)  # canaries, groups in turn
    watcher.before_publish = rollouts.sync_hold
    loop = asyncio.get_running_loop()
    registry.bind_loop(loop)
    registry.subscribe(cache.registry_changed)
    if otel is not None and tracing is not None:
        otel.start()  # the exporter's thread
        store.on_commit(tracing.on_commit)  # before the watcher's poke: the version's trace is known when it loads
    store.on_commit(lambda _v: watcher.poke_threadsafe(loop))
    await watcher.load_once()

    http_sock = _bind(args.http)  # before gRPC starts: a taken port stops us with nothing to undo
    grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(servicer, grpc_server)
    enrolment = EnrolmentServicer(trust, authenticator)
    enrolment_pb2_grpc.add_EnrolmentServiceServicer_to_server(enrolment, grpc_server)
    server_tls = ServerTLS.issue(node_ca, split_host_port(args.grpc)[0])
    try:
        grpc_port = grpc_server.add_secure_port(args.grpc, server_tls.credentials())
    except RuntimeError:  # grpcio raises "Failed to bind" where older versions returned 0
        grpc_port = 0
    if not grpc_port:
        log.error("cannot listen for the config stream (gRPC) on %s: the address is in use or not local", args.grpc)
        http_sock.close()
        return 2
    await grpc_server.start()

    http_host, http_port = http_sock.getsockname()[:2]
    prober = HealthProber(registry)  # active health checks (registry leader only)
    alerts = AlertManager(registry, lambda: alert_rules(store.current()[1]), lambda: cache.version)
    app = create_app(cp)
    app.state.health_prober, app.state.alerts = prober, alerts
    sources = RegistrySourceManager(registry)  # external registries (etcd, ZooKeeper, ...): leader only
    app.state.registry_sources = sources
    app.state.node_trust = trust
    app.state.rollouts = rollouts
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    grpc_host = split_host_port(args.grpc)[0]
    shown_host = http_host if ":" not in http_host else f"[{http_host}]"
    print(
        f"FLUX control plane {cp_id} ready\n"
        f"  REST API     http://{shown_host}:{http_port}/api/v1  (docs: http://{shown_host}:{http_port}/docs)\n"
        f"  config gRPC  {grpc_host}:{grpc_port} (mutual TLS)\n"
        f"  node CA      {pin_hex(node_ca.pin)} ({ca_source}); join tokens: fluxctl nodes join-token --group G\n"
        f"  database     {make_url(normalize_url(args.db)).render_as_string(hide_password=True)}"
        f" (config version {cache.version})\n"
        f"  secret key   {secret_key.shown_source} (id {secret_key.key.id}{', new' if secret_key.created else ''})\n"
        f"  admin token  {'from FLUX_ADMIN_TOKEN' if token.source == 'env' else token.source}"
        f"{' (new)' if token.created else ''}",
        flush=True,
    )
    log.info("ready http=%s:%d grpc=%s:%d", http_host, http_port, grpc_host, grpc_port)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    tasks = [
        asyncio.create_task(server.serve(sockets=[http_sock]), name="http"),
        asyncio.create_task(watcher.run(), name="watcher"),
        asyncio.create_task(nodes.run_flusher(), name="node-status"),
        asyncio.create_task(registry.run_poller(args.poll_interval), name="registry-poller"),
        asyncio.create_task(registry.run_flusher(), name="registry-heartbeats"),
        asyncio.create_task(registry.run_maintenance(), name="registry-expiry"),
        asyncio.create_task(prober.run(), name="registry-health-checks"),
        asyncio.create_task(alerts.run(), name="registry-alerts"),
        asyncio.create_task(sources.run(store, cache), name="registry-sources"),
        asyncio.create_task(servicer.watch_revocations(), name="node-revocations"),
        asyncio.create_task(rollouts.run(), name="rollouts"),
        asyncio.create_task(_prune_trust(trust), name="node-trust-prune"),
    ]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stopper and task.exception():
            log.error("%s failed: %r", task.get_name(), task.exception())
    log.info("shutting down")
    registry.hub.close()  # long-polls and event streams answer now
    server.should_exit = True
    await grpc_server.stop(grace=1.0)
    for task in tasks[1:]:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(tasks[0], timeout=5)
    for t in tasks[1:]:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    for state in nodes.list():
        if state.control_plane_id == cp_id and state.connected:
            nodes.disconnect(state)
    await asyncio.to_thread(nodes.flush)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sources.close(), timeout=8)  # stops adapters, withdraws their exports
    await asyncio.to_thread(registry.shutdown)
    if otel is not None:  # the last spans, within a few seconds
        await asyncio.to_thread(otel.shutdown, 3.0)
    engine.dispose()
    return 0


async def _prune_trust(trust: TrustStore, interval: float = 3600.0) -> None:
    """Forget long-expired node certificates and join tokens, hourly."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(trust.prune)
        except Exception:
            log.exception("could not prune expired node certificates; will retry")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rotate-secret-key"]:
        from controlplane.cli.rotate_secret_key import main as rotate_main

        sys.exit(rotate_main(argv[1:]))
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        code = asyncio.run(serve(args))
    except KeyboardInterrupt:
        code = 0
    except SecretKeyError as exc:  # no key, a bad key, or not the key of this database
        log.error("%s", exc)
        code = 2
    except CertificateError as exc:  # unusable --tls-* files
        log.error("%s", exc)
        code = 2
    except OSError as exc:
        log.error("%s", exc)
        code = 2
    except (ValueError, ArgumentError) as exc:  # a bad --db URL
        log.error("%s", exc)
        code = 2
    except OperationalError as exc:  # the database does not answer
        log.error("cannot use the database %s: %s", args.db, exc.orig if exc.orig is not None else exc)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
