"""Shared rate limits against the real Redis at 127.0.0.1:6379 (skipped only when it does not answer).

The reactor runs as in the node (`await n.start(reactor.run)`), limiter calls are made by
reactor coroutines, every test uses its own key prefix and deletes its keys afterwards.
Bounds are checked with the time each call was submitted and answered: Redis decided
somewhere in between, so a window [submitted_i, answered_j] covers the true one.
"""

from __future__ import annotations

import logging
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, closing
from typing import Any

import coredis
import pytest
import trio

from dataplane.http.request import RequestHead
from dataplane.policies.base import LocalResponse, PolicyEnv, RequestContext, SharedServices
from dataplane.policies.ratelimit import RateLimitPolicy
from dataplane.policies.ratelimit.algorithms import Decision, make_limiter
from dataplane.policies.ratelimit.redis_backend import RedisLimiter, RedisLimiterClient
from dataplane.reactor import Reactor
from fluxcommon.policy_config import RateLimitConfig

REDIS_URL = "redis://127.0.0.1:6379"


def _redis_unreachable() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        return f"no Redis answers at 127.0.0.1:6379 ({exc})"
    if not answer.startswith(b"+PONG"):
        return f"127.0.0.1:6379 is not a usable Redis (answered {answer[:40]!r})"
    return ""


_REASON = _redis_unreachable()
pytestmark = pytest.mark.skipif(bool(_REASON), reason=_REASON)


async def _delete_keys(prefix: str) -> None:
    async with coredis.Redis.from_url(REDIS_URL) as redis:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(keys)


@pytest.fixture
def prefix() -> Any:
    name = f"flux-test-{secrets.token_hex(6)}"
    yield name
    trio.run(_delete_keys, name)


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def node(*urls: str, **kwargs: Any) -> AsyncIterator[tuple[Reactor, trio.Nursery, list[RedisLimiterClient]]]:
    """A reactor like the node's and one started RedisLimiterClient per URL."""
    reactor = Reactor()
    async with trio.open_nursery() as nursery:
        await nursery.start(reactor.run)
        clients = [RedisLimiterClient(url, reactor, **kwargs) for url in urls]
        for client in clients:
            client.start(nursery)
        try:
            yield reactor, nursery, clients
        finally:
            for client in clients:
                client.close()
            nursery.cancel_scope.cancel()


async def on_reactor(reactor: Reactor, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` as a reactor task and wait (in trio) for its result."""
    done = trio.Event()
    box: dict[str, Any] = {}

    async def wrapper() -> None:
        try:
            box["value"] = await coro
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    reactor.spawn(wrapper())
    with trio.fail_after(10):
        await done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def ask(limiter: RedisLimiter, key: str, n: int = 1, cost: int = 1) -> tuple[float, float, list[Any]]:
    """(reactor side) n decisions in one batch: (submitted, answered, decisions)."""
    submitted = time.monotonic()
    calls = [limiter.submit(key, cost) for _ in range(n)]
    for call in calls:
        assert call is not None, f"redis client is {limiter.client.state}: {limiter.client.last_error}"
        await call.done
    answered = time.monotonic()
    return submitted, answered, [limiter.decision(call) for call in calls]  # type: ignore[arg-type]


CONFIGS: dict[str, dict[str, Any]] = {
    "token_bucket": {"algorithm": "token_bucket", "rate": 20, "per": 1.0, "burst": 0},
    "token_bucket_burst": {"algorithm": "token_bucket", "rate": 20, "per": 1.0, "burst": 5},
    "leaky_reject": {"algorithm": "leaky_bucket", "rate": 20, "per": 1.0, "burst": 3},
    "leaky_queue": {"algorithm": "leaky_bucket", "rate": 20, "per": 1.0, "burst": 5, "leaky_mode": "queue",
                    "max_delay": 0.12},
    "fixed_window": {"algorithm": "fixed_window", "rate": 20, "per": 1.0},
    "sliding_log": {"algorithm": "sliding_window", "rate": 20, "per": 1.0, "sliding_mode": "log"},
    "sliding_counter": {"algorithm": "sliding_window", "rate": 20, "per": 1.0},
}  # fmt: skip


def capacity(cfg: dict[str, Any]) -> int:
    """Admissions in a zero-length interval (see test_ratelimit_algorithms)."""
    rate, burst = cfg["rate"], cfg.get("burst", 0)
    return {
        "token_bucket": burst if burst > 0 else rate,
        "leaky_bucket": burst + 1,
        "fixed_window": 2 * rate,
        "sliding_window": rate + 1 if cfg.get("sliding_mode") != "log" else rate,
    }[cfg["algorithm"]]


def redis_limiter(client: RedisLimiterClient, prefix: str, name: str, cfg: dict[str, Any]) -> RedisLimiter:
    return RedisLimiter(
        client,
        name,
        cfg["algorithm"],
        cfg["rate"],
        cfg["per"],
        cfg.get("burst", 0),
        prefix=prefix,
        leaky_mode=cfg.get("leaky_mode", "reject"),
        max_delay=cfg.get("max_delay", 1.0),
        sliding_mode=cfg.get("sliding_mode", "counter"),
    )


def local_limiter(cfg: dict[str, Any]) -> Any:
    return make_limiter(
        cfg["algorithm"],
        cfg["rate"],
        cfg["per"],
        cfg.get("burst", 0),
        leaky_mode=cfg.get("leaky_mode", "reject"),
        max_delay=cfg.get("max_delay", 1.0),
        sliding_mode=cfg.get("sliding_mode", "counter"),
    )


# -- the scripts have the local algorithms' semantics ------------------------------------------


def test_scripts_decide_like_the_local_algorithms(prefix: str) -> None:
    """One batch shares one Redis TIME: its decisions must equal the local limiter's at one `now`."""

    async def main() -> None:
        async with node(REDIS_URL) as (reactor, _n, (client,)):
            for name, cfg in CONFIGS.items():
                limiter = redis_limiter(client, prefix, name, cfg)
                _s, _a, got = await on_reactor(reactor, ask(limiter, "same", 27))
                local = local_limiter(cfg)
                want = [local.acquire("same", 5000.0) for _ in range(27)]
                assert [d.allowed for d in got] == [d.allowed for d in want], name
                assert [d.remaining for d in got] == [d.remaining for d in want], name
                for g, w in zip(got, want, strict=True):
                    assert g.limit == w.limit == cfg["rate"]
                    assert g.delay == pytest.approx(w.delay, abs=2e-6), name
                    if cfg["algorithm"] in ("fixed_window", "sliding_window") and cfg.get("sliding_mode") != "log":
                        # window-aligned times depend on where in its window Redis' clock is
                        assert 0 <= g.reset_after <= 2 * cfg["per"] and 0 <= g.retry_after <= 2 * cfg["per"]
                    else:
                        assert g.reset_after == pytest.approx(w.reset_after, abs=2e-6), name
                        assert g.retry_after == pytest.approx(w.retry_after, abs=2e-6), name
                # a cost the limit can never grant: rejected, retry "never"
                _s, _a, (big,) = await on_reactor(reactor, ask(limiter, "big", 1, cost=cfg["rate"] + 30))
                assert not big.allowed and big.retry_after == float("inf"), name

    trio.run(main)


def test_scripts_keep_the_bounds_under_random_arrivals(prefix: str) -> None:
    """Every algorithm at once for ~1.2 s of real time: random batches, costs and pauses."""
    results: dict[str, list[tuple[float, float, int, Decision]]] = {name: [] for name in CONFIGS}
    rng = random.Random(7)

    async def drive(limiter: RedisLimiter, name: str, reactor: Reactor, until: float) -> None:
        interval = CONFIGS[name]["per"] / CONFIGS[name]["rate"]
        while time.monotonic() < until:
            cost = rng.choice((1, 1, 1, 2))
            submitted, answered, decisions = await ask(limiter, "k", rng.randint(1, 6), cost)
            for d in decisions:
                assert d is not None
                results[name].append((submitted, answered, cost, d))
            # about 8x the rate on average: a busy machine that answers slowly must still
            # ask for more than a full bucket plus 1.2 s of refill, so refusals happen
            await reactor.sleep(rng.uniform(0, interval))

    async def main() -> None:
        async with node(REDIS_URL) as (reactor, _n, (client,)):
            with trio.fail_after(3):
                await client.wait_up()
            until = time.monotonic() + 1.2
            async with trio.open_nursery() as inner:
                for name, cfg in CONFIGS.items():
                    limiter = redis_limiter(client, prefix, name, cfg)
                    inner.start_soon(on_reactor, reactor, drive(limiter, name, reactor, until))

    trio.run(main)
    for name, cfg in CONFIGS.items():
        events = results[name]
        passed = [(s, a, c, d) for s, a, c, d in events if d.allowed]
        assert passed and len(passed) < len(events), f"{name}: the test must both pass and refuse requests"
        rate = cfg["rate"] / cfg["per"]
        cap = capacity(cfg)
        for i in range(len(passed)):
            total = 0
            for j in range(i, len(passed)):
                total += passed[j][2]
                longest = passed[j][1] - passed[i][0]  # the Redis-side interval is inside this one
                assert total <= rate * longest + cap + 1e-6, (name, i, j, total, longest)
                if cfg.get("sliding_mode") == "log" and longest < cfg["per"]:
                    assert total <= cfg["rate"], (name, i, j)
        if cfg.get("leaky_mode") == "queue":
            assert all(d.delay <= cfg["max_delay"] + 2e-6 for _s, _a, _c, d in passed)
            assert any(d.delay > 0 for _s, _a, _c, d in passed)


def test_two_nodes_share_one_limit(prefix: str) -> None:
    """Two clients (two connections, like two nodes) hammer the same keys: the total stays in bounds."""
    tb = CONFIGS["token_bucket"]
    log = CONFIGS["sliding_log"]
    admitted: dict[tuple[str, int], int] = {}
    span: list[float] = []

    async def hammer(limiter: RedisLimiter, node_no: int, name: str, reactor: Reactor, until: float) -> None:
        while time.monotonic() < until:
            submitted, answered, decisions = await ask(limiter, "shared", 3)
            span.extend((submitted, answered))
            admitted[(name, node_no)] = admitted.get((name, node_no), 0) + sum(d.allowed for d in decisions)
            await reactor.sleep(0.005)

    async def main() -> None:
        # a generous timeout: this test is about the shared bound, not the fallback on a slow Redis
        async with node(REDIS_URL, REDIS_URL, timeout=2.0) as (reactor, _n, clients):
            for client in clients:
                with trio.fail_after(3):
                    await client.wait_up()
            until = time.monotonic() + 1.0
            async with trio.open_nursery() as inner:
                for node_no, client in enumerate(clients):
                    for name, cfg in (("tb", tb), ("log", log)):
                        limiter = redis_limiter(client, prefix, name, cfg)
                        for _ in range(3):
                            inner.start_soon(on_reactor, reactor, hammer(limiter, node_no, name, reactor, until))

    trio.run(main)
    elapsed = max(span) - min(span)
    for name, cfg in (("tb", tb), ("log", log)):
        per_node = [admitted.get((name, 0), 0), admitted.get((name, 1), 0)]
        total = sum(per_node)
        bound = cfg["rate"] + cfg["rate"] / cfg["per"] * elapsed  # one window's slack: capacity + rate * time
        assert total <= bound, (name, per_node, bound)
        assert total >= cfg["rate"], (name, per_node)  # at least the first full budget
        assert all(n > 0 for n in per_node), (name, per_node)


# -- batching ------------------------------------------------------------------------------------


def test_concurrent_callers_share_few_pipelines(prefix: str) -> None:
    async def one(limiter: RedisLimiter, key: str) -> bool:
        call = limiter.submit(key)
        assert call is not None
        await call.done
        decision = limiter.decision(call)
        assert decision is not None
        return decision.allowed

    async def many(reactor: Reactor, limiter: RedisLimiter, n: int, rounds: int) -> int:
        done = 0

        async def task(i: int) -> None:
            nonlocal done
            for _ in range(rounds):
                await one(limiter, f"k{i % 50}")
            done += 1

        for i in range(n):
            reactor.spawn(task(i))
        while done < n:
            await reactor.sleep(0.002)
        return n * rounds

    async def main() -> None:
        async with node(REDIS_URL) as (reactor, _n, (client,)):
            with trio.fail_after(3):
                await client.wait_up()
            limiter = redis_limiter(client, prefix, "batch", {"algorithm": "token_bucket", "rate": 10**6, "per": 1.0})
            calls = await on_reactor(reactor, many(reactor, limiter, 500, 1))
            assert client.calls == calls == 500
            assert client.pipelines <= 5, client.pipelines
            before = client.pipelines
            calls = await on_reactor(reactor, many(reactor, limiter, 200, 20))
            assert client.calls == 500 + calls
            assert client.pipelines - before <= calls / 20, client.pipelines - before
            assert client.failed_calls == 0

    trio.run(main)


def test_script_flush_is_survived(prefix: str) -> None:
    async def main() -> None:
        async with node(REDIS_URL) as (reactor, _n, (client,)):
            limiter = redis_limiter(client, prefix, "flush", CONFIGS["token_bucket"])
            _s, _a, (first,) = await on_reactor(reactor, ask(limiter, "k"))
            assert first.allowed and first.remaining == 19
            loads = client.script_loads
            async with coredis.Redis.from_url(REDIS_URL) as redis:
                await redis.script_flush()
            _s, _a, (second,) = await on_reactor(reactor, ask(limiter, "k"))
            assert second is not None and second.allowed and second.remaining == 18
            assert client.script_loads > loads
            assert client.failed_calls == 0 and client.state == "up"

    trio.run(main)


def test_connection_closed_while_idle_reconnects_quietly(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flux.ratelimit")

    async def main() -> None:
        async with node(REDIS_URL) as (reactor, _n, (client,)):
            limiter = redis_limiter(client, prefix, "idle", CONFIGS["fixed_window"])
            _s, _a, (first,) = await on_reactor(reactor, ask(limiter, "k"))
            assert first.allowed
            client_id = client._conn.client_id
            async with coredis.Redis.from_url(REDIS_URL) as redis:
                await redis.client_kill(identifier=client_id)  # like a server-side idle timeout
            for _ in range(60):  # the client notices within 0.5 s and reconnects at once
                if client.connects >= 2 and client.up:
                    break
                await trio.sleep(0.05)  # poll interval of a condition loop
            assert client.connects == 2 and client.up
            _s, _a, (second,) = await on_reactor(reactor, ask(limiter, "k"))
            assert second is not None
            assert client.outages == 0 and client.failed_calls == 0

    trio.run(main)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- Redis unreachable: the policy's on_redis_error, promptly --------------------------------------


def _ctx(ip: str = "10.1.2.3") -> RequestContext:
    return RequestContext(RequestHead(), ip, "main", "r", time.monotonic())


async def _decide(policy: RateLimitPolicy, ctx: RequestContext) -> Any:
    result = policy.on_request(ctx)
    if result is None or type(result) is LocalResponse:
        return result
    return await result  # type: ignore[misc]


def _policies(url: str, n: trio.Nursery, reactor: Reactor) -> dict[str, RateLimitPolicy]:
    env = PolicyEnv(services=SharedServices(nursery=n), reactor=reactor, workers=1)
    return {
        mode: RateLimitPolicy(
            f"rl-{mode}",
            RateLimitConfig(rate=2, per="60s", scope="redis", redis=url, on_redis_error=mode, prefix="flux-test-x"),
            env,
        )
        for mode in ("allow", "deny", "local")
    }


def _check_fallbacks(policies: dict[str, RateLimitPolicy], outcomes: dict[str, list[Any]]) -> None:
    assert outcomes["allow"] == [None, None, None]
    assert all(r.status == 429 and r.reason == "rate_limit_unavailable" for r in outcomes["deny"])
    local = outcomes["local"]
    assert local[:2] == [None, None] and local[2].status == 429 and local[2].reason == "rate_limited"
    for policy in policies.values():
        assert policy.fallbacks == 3


@pytest.mark.parametrize("kind", ["closed_port", "silent_server"])
def test_unreachable_redis_falls_back_promptly(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flux.ratelimit")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts TCP in the kernel, never answers HELLO
    port = silent.getsockname()[1] if kind == "silent_server" else _free_port()
    url = f"redis://127.0.0.1:{port}"
    timings: list[float] = []

    async def main() -> None:
        reactor = Reactor()
        async with trio.open_nursery() as n:
            await n.start(reactor.run)
            policies = _policies(url, n, reactor)
            outcomes: dict[str, list[Any]] = {}

            async def requests() -> None:
                for mode, policy in policies.items():
                    outcomes[mode] = []
                    for _ in range(3):
                        start = time.monotonic()
                        outcomes[mode].append(await _decide(policy, _ctx()))
                        timings.append(time.monotonic() - start)

            await on_reactor(reactor, requests())
            _check_fallbacks(policies, outcomes)
            client = policies["allow"].client
            assert client is not None and client.state == "down"
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        silent.close()
    assert max(timings) < 1.0, timings
    for mode in ("allow", "deny", "local"):
        said = [r.getMessage() for r in caplog.records if f"policy 'rl-{mode}' falls back to {mode}" in r.getMessage()]
        assert len(said) == 1, said  # once per state change, not per request
    assert sum("unreachable" in r.getMessage() and "rate limits that use it" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_client_recovers_when_redis_comes_back(prefix: str, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flux.ratelimit")
    port = _free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(tmp_path)]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                time.sleep(0.02)  # poll interval: until the port answers
        proc.kill()
        raise AssertionError("redis-server did not start")

    server = start()
    try:

        async def main() -> None:
            nonlocal server
            async with node(f"redis://127.0.0.1:{port}") as (reactor, _n, (client,)):
                env = PolicyEnv(services=SharedServices(), reactor=reactor)
                env.services.get(("rate_limit.redis", client.url), lambda: client)
                policy = RateLimitPolicy(
                    "rl-back", RateLimitConfig(rate=100, scope="redis", redis=client.url, prefix=prefix), env
                )
                assert policy.client is client
                with trio.fail_after(3):
                    await client.wait_up()
                assert await on_reactor(reactor, _decide(policy, _ctx())) is None
                assert policy.fallbacks == 0
                # a Redis that stops answering: callers fall back after the client's timeout (0.2 s)
                server.send_signal(signal.SIGSTOP)
                start_t = time.monotonic()
                assert await on_reactor(reactor, _decide(policy, _ctx())) is None
                assert time.monotonic() - start_t < 1.0
                assert policy.fallbacks == 1 and client.state == "down"
                server.send_signal(signal.SIGCONT)
                with trio.fail_after(5):
                    await client.wait_up()
                assert await on_reactor(reactor, _decide(policy, _ctx())) is None
                assert policy.fallbacks == 1
                # a Redis that is gone
                server.kill()
                server.wait()
                start_t = time.monotonic()
                assert await on_reactor(reactor, _decide(policy, _ctx())) is None  # local fallback allows
                assert time.monotonic() - start_t < 1.0
                assert policy.fallbacks == 2 and client.state == "down"
                server = start()
                with trio.fail_after(5):
                    await client.wait_up()
                assert await on_reactor(reactor, _decide(policy, _ctx())) is None
                assert policy.fallbacks == 2  # decided by Redis again
                assert client.outages == 2 and client.connects == 3

        trio.run(main)
    finally:
        server.kill()
        server.wait()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("falls back to local" in m for m in messages) == 2  # once per outage
    assert any("reachable again" in m for m in messages)
    assert any("uses redis at" in m and "again" in m for m in messages)
