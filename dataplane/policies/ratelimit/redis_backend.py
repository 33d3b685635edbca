"""Shared rate limits in Redis: atomic Lua versions of the local algorithms, called in batches.

Each algorithm of `algorithms.py` has a Lua script with the same semantics
(same formulas, the same float slack), working in microseconds and reading
the time from Redis (`redis.call('TIME')`) so every node and worker shares
one clock. State lives under `{prefix}:{policy}:{tag}:{key}` (tag: tb, lb, fw,
swl, swc, so a policy that changes its algorithm never meets a key of the
wrong type) with a TTL of the time the state takes to become "fresh" again.

Calling Redis once per request would cost a round trip and a trio task
switch per request, so a `RedisLimiterClient` (one per Redis URL, kept in
`SharedServices`) batches: reactor code adds a call to the open batch
(`submit`, no I/O) and awaits the batch's `REvent`; a trio task sends the
batch as one pipeline over one connection, with ONE EVALSHA per limit in the
batch deciding for all its keys (KEYS = the keys, ARGV = the limit's
parameters then each key's cost; the script loops, so every decision is
atomic and they all share one TIME), and hands the results back. Up to
`max_in_flight` pipelines are in flight; while they are, the next batch
fills, so batches grow with load. Results go back to the reactor through
one reactor task (`_distributor`) so waking N callers costs one reactor
wake-up, not N. Measured on a 2-core VM with Redis on the same host: about
100k decisions/s from one node process (Redis spends about 3.5 us per decision).

A script call touches many keys, so this needs a single Redis (or a primary
with replicas), not Redis Cluster.

The pipeline is sent with coredis' connection primitive `create_request_batch`
(what its non-transactional pipelines use) given small command objects, which
halves the client's cost per call compared with `Pipeline`.

Failures: a batch that fails (connection lost, no answer within `timeout`)
fails all its callers at once; the client then counts as down, and `submit`
returns None (the caller falls back at once, without waiting) until the
background task has reconnected (exponential back-off from 50 ms to 2 s).
Every state change is logged once. NOSCRIPT (after SCRIPT FLUSH or a
restart) reloads the scripts and resends the affected calls.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import trio
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import NoScriptError
from coredis.pool import ConnectionPool

from dataplane.policies.ratelimit.algorithms import Decision

if TYPE_CHECKING:
    from dataplane.policies.base import TaskSpawner
    from dataplane.reactor import Reactor, REvent

log = logging.getLogger("flux.ratelimit")

__all__ = [
    "SCRIPTS",
    "LuaScript",
    "RedisCall",
    "RedisLimiter",
    "RedisLimiterClient",
    "redacted",
]

# Each algorithm reads the limit's parameters from ARGV[1..n] and defines `limit(key, cost)`
# returning allowed, remaining, reset_us, retry_us (-1: never), delay_us. A script call
# decides for every key it is given (KEYS[i] costs ARGV[n + i]), all at one TIME, so one
# EVALSHA serves every request of a batch that uses the same limit.
_TEMPLATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
@FUNCTION@
local out = {}
for i = 1, #KEYS do
  local allowed, remaining, reset, retry, delay = limit(KEYS[i], tonumber(ARGV[@NPARAMS@ + i]))
  local j = (i - 1) * 5
  out[j + 1] = allowed
  out[j + 2] = remaining
  out[j + 3] = reset
  out[j + 4] = retry
  out[j + 5] = delay
end
return out
"""

# ARGV: rate, per_us, capacity. State: the time the bucket is full again (us).
TOKEN_BUCKET = """
local rate, per, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = per / rate
local fill = cap * interval
local function limit(key, cost)
  local full_at = tonumber(redis.call('GET', key))
  if not full_at or full_at < now then full_at = now end
  local debt = full_at + cost * interval - now
  if debt <= fill + 0.001 then
    redis.call('SET', key, string.format('%.3f', now + debt), 'PX', math.ceil(debt / 1000) + 1)
    return 1, math.floor((fill - debt) / interval + 1e-9), math.ceil(debt), 0, 0
  end
  local owed = full_at - now
  local retry = -1
  if cost <= cap then retry = math.ceil(debt - fill) end
  local rem = math.floor((fill - owed) / interval + 1e-9)
  if rem < 0 then rem = 0 end
  return 0, rem, math.ceil(owed), retry, 0
end
"""

# ARGV: rate, per_us, burst, queue (0|1), max_delay_us. State: the TAT (us).
LEAKY_BUCKET = """
local rate, per, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local queue, maxd = ARGV[4] == '1', tonumber(ARGV[5])
local interval = per / rate
local tol = (burst + 1) * interval
local function remaining(b)
  local n = math.floor((tol - b) / interval + 1e-9)
  if queue then n = math.min(n, math.floor((maxd - b) / interval + 1e-9) + 1) end
  if n < 0 then n = 0 end
  return n
end
local function limit(key, cost)
  local tat = tonumber(redis.call('GET', key))
  if not tat or tat < now then tat = now end
  local wait = tat - now
  local backlog = wait + cost * interval
  if backlog <= tol + 0.001 and ((not queue) or wait <= maxd + 0.001) then
    redis.call('SET', key, string.format('%.3f', now + backlog), 'PX', math.ceil(backlog / 1000) + 1)
    local delay = 0
    if queue then delay = math.ceil(wait) end
    return 1, remaining(backlog), math.ceil(backlog), 0, delay
  end
  local retry = -1
  if cost * interval <= tol + 0.001 then
    retry = backlog - tol
    if queue then retry = math.max(retry, wait - maxd) end
    retry = math.ceil(math.max(retry, 0))
  end
  return 0, remaining(wait), math.ceil(wait), retry, 0
end
"""

# ARGV: rate, per_us. State: hash {w: window number, c: count}.
FIXED_WINDOW = """
local rate, per = tonumber(ARGV[1]), tonumber(ARGV[2])
local function limit(key, cost)
  local w = math.floor(now / per)
  local v = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  if tonumber(v[1]) == w then count = tonumber(v[2]) end
  local reset = (w + 1) * per - now
  if count + cost <= rate then
    redis.call('HSET', key, 'w', string.format('%.0f', w), 'c', count + cost)
    redis.call('PEXPIRE', key, math.ceil(reset / 1000) + 1)
    return 1, rate - count - cost, math.ceil(reset), 0, 0
  end
  local retry = -1
  if cost <= rate then retry = math.ceil(reset) end
  local rem = rate - count
  if rem < 0 then rem = 0 end
  return 0, rem, math.ceil(reset), retry, 0
end
"""

# ARGV: rate, per_us. State: sorted set of admitted units scored by time (us).
SLIDING_LOG = """
local rate, per = tonumber(ARGV[1]), tonumber(ARGV[2])
local function limit(key, cost)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - per))
  local count = redis.call('ZCARD', key)
  if count + cost <= rate then
    local stamp = string.format('%.0f', now)
    local i = 1
    while i <= cost do
      local args, n = {}, 0
      while i <= cost and n < 1000 do
        args[n + 1] = stamp
        args[n + 2] = stamp .. ':' .. (count + i)
        n = n + 2
        i = i + 1
      end
      redis.call('ZADD', key, unpack(args))
    end
    redis.call('PEXPIRE', key, math.ceil(per / 1000) + 1)
    return 1, rate - count - cost, per, 0, 0
  end
  local reset = 0
  if count > 0 then
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    reset = tonumber(newest[2]) + per - now
  end
  local retry = -1
  if cost <= rate then
    local idx = count + cost - rate - 1
    local oldest = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
    retry = math.ceil(tonumber(oldest[2]) + per - now)
  end
  return 0, rate - count, math.ceil(reset), retry, 0
end
"""

# ARGV: rate, per_us. State: hash {w: window number, p: previous count, c: current count}.
SLIDING_COUNTER = """
local rate, per = tonumber(ARGV[1]), tonumber(ARGV[2])
local function limit(key, cost)
  local w = math.floor(now / per)
  local elapsed = now - w * per
  local left = per - elapsed
  local v = redis.call('HMGET', key, 'w', 'p', 'c')
  local sw = tonumber(v[1])
  local prev, curr = 0, 0
  if sw == w then
    prev, curr = tonumber(v[2]), tonumber(v[3])
  elseif sw == w - 1 then
    prev = tonumber(v[3])
  end
  local used = math.floor(prev * (left / per) + 1e-9) + curr
  if used + cost <= rate then
    redis.call('HSET', key, 'w', string.format('%.0f', w), 'p', prev, 'c', curr + cost)
    redis.call('PEXPIRE', key, math.ceil((left + per) / 1000) + 1)
    return 1, rate - used - cost, math.ceil(left + per), 0, 0
  end
  local reset = left
  if curr > 0 then reset = left + per end
  local retry = -1
  if cost <= rate then
    local room = rate - curr - cost
    if room >= 0 then
      retry = math.max(0, per * (1 - (room + 1) / prev) - elapsed)
    else
      retry = left + math.max(0, per * (1 - (rate - cost + 1) / curr))
    end
    retry = math.ceil(retry)
  end
  local rem = rate - used
  if rem < 0 then rem = 0 end
  return 0, rem, math.ceil(reset), retry, 0
end
"""


class LuaScript:
    """A batch script: its source, SHA1 (computed here, so calls can be built before Redis answers)
    and how many parameters (ARGV before the costs) it takes."""

    __slots__ = ("name", "nparams", "sha", "source")

    def __init__(self, name: str, function: str, nparams: int) -> None:
        self.name = name
        self.nparams = nparams
        self.source = _TEMPLATE.replace("@FUNCTION@", function.strip()).replace("@NPARAMS@", str(nparams))
        self.sha = hashlib.sha1(self.source.encode()).hexdigest().encode()

    def __repr__(self) -> str:
        return f"LuaScript({self.name!r})"


SCRIPTS: dict[str, LuaScript] = {
    "tb": LuaScript("token_bucket", TOKEN_BUCKET, 3),
    "lb": LuaScript("leaky_bucket", LEAKY_BUCKET, 5),
    "fw": LuaScript("fixed_window", FIXED_WINDOW, 2),
    "swl": LuaScript("sliding_window_log", SLIDING_LOG, 2),
    "swc": LuaScript("sliding_window_counter", SLIDING_COUNTER, 2),
}


class RedisCall:
    """One decision asked of Redis; after `await call.done`, `error` or `result[index:index + 5]`."""

    __slots__ = ("batch", "cost", "error", "index", "key", "result")

    def __init__(self, key: str, cost: int, batch: _Batch) -> None:
        self.key = key
        self.cost = cost
        self.batch = batch
        self.result: Any = None
        self.index = 0
        self.error: BaseException | None = None

    @property
    def done(self) -> REvent:
        """Await this (on the reactor); then read `result` or `error`."""
        return self.batch.event


class _Batch:
    """Calls that go to Redis together: one EVALSHA per limit, all in one pipeline."""

    __slots__ = ("count", "event", "finished", "groups")

    def __init__(self, event: REvent) -> None:
        self.groups: dict[RedisLimiter, list[RedisCall]] = {}
        self.count = 0
        self.event = event
        self.finished = False


class _Command:
    """One EVALSHA over many keys, shaped like a coredis command for `create_request_batch`."""

    __slots__ = ("serialized_arguments",)

    name = b"EVALSHA"
    decode = False

    def __init__(self, limiter: RedisLimiter, calls: list[RedisCall]) -> None:
        args: list[Any] = [limiter.script.sha, len(calls)]
        args.extend([c.key for c in calls])
        args.extend(limiter.params)
        args.extend([c.cost for c in calls])
        self.serialized_arguments = tuple(args)


class RedisUnavailable(ConnectionError):
    """Redis could not be asked (down, not started, timed out)."""


def redacted(url: str) -> str:
    """The URL without its password (for logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<bad url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))


BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class RedisLimiterClient:
    """Batches rate limit scripts from reactor code into pipelines on one Redis connection.

    States: "starting" (first connection attempt: calls queue, bounded by `timeout`),
    "up", "down" (`submit` returns None: fall back now), "closed".
    """

    def __init__(
        self,
        url: str,
        reactor: Reactor | None,
        *,
        timeout: float = 0.2,
        connect_timeout: float = 0.5,
        max_batch: int = 1000,
        max_in_flight: int = 2,
    ) -> None:
        self.url = url
        self.safe_url = redacted(url)
        self.reactor = reactor
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_batch = max_batch
        self.max_in_flight = max(1, max_in_flight)
        self.state = "starting" if reactor is not None else "down"
        self.last_error = "" if reactor is not None else "no reactor"
        # counters (for metrics and tests)
        self.calls = 0
        self.pipelines = 0
        self.failed_calls = 0
        self.script_loads = 0
        self.connects = 0
        self.outages = 0
        # batches go to the senders through an unbounded channel (send_nowait from the reactor side)
        self._batches_in, self._batches_out = trio.open_memory_channel[_Batch](math.inf)
        self._filling: _Batch | None = None
        self._conn: Any = None
        self._connected = trio.Event()
        self._lost = trio.Event()
        self._finished: list[_Batch] = []
        self._dist_wait: REvent | None = None
        self._dist_running = False
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"RedisLimiterClient({self.safe_url!r}, {self.state})"

    # -- lifecycle (trio side) ------------------------------------------------------------

    def start(self, nursery: TaskSpawner | None) -> None:
        """Start the background tasks (connection keeper, batch sender) in `nursery`."""
        if nursery is None or self.reactor is None:
            self._set_down("no nursery or reactor to run the redis client in")
            return
        nursery.start_soon(self._run, name=f"ratelimit-redis {self.safe_url}")

    @property
    def up(self) -> bool:
        return self.state == "up"

    def close(self) -> None:
        """Stop the background tasks; waiting callers get an error."""
        self.state = "closed"
        if self._scope is not None:
            self._scope.cancel()
        self._fail_queued(RedisUnavailable("redis client closed"))
        if self._dist_wait is not None:
            self._dist_wait.set()

    async def wait_up(self) -> None:
        """For tests and tools: wait (in trio) until connected (bound it with trio.move_on_after)."""
        while not self.up:
            await self._connected.wait()

    async def _run(self) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            if self.state == "closed":
                return
            assert self.reactor is not None
            self._dist_running = True
            self.reactor.spawn(self._distributor(), name="ratelimit-redis-results")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_connected)
                for _ in range(self.max_in_flight):  # pipelines in flight at once on the connection
                    nursery.start_soon(self._send_batches)
        self._dist_running = False

    async def _keep_connected(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            reason = "connection lost"
            idle_drop = False
            try:
                pool = ConnectionPool.from_url(
                    self.url, connect_timeout=self.connect_timeout, stream_timeout=self.timeout * 5
                )
                async with pool:
                    with trio.fail_after(self.connect_timeout + self.timeout):
                        conn = await pool.get_connection()
                        await self._load_scripts(conn)
                    self._conn = conn
                    self._lost = trio.Event()
                    self.connects += 1
                    self._set_up()
                    backoff = BACKOFF_MIN
                    while conn.usable and not self._lost.is_set():
                        with trio.move_on_after(0.5):
                            await self._lost.wait()
                    self._conn = None
                    idle_drop = not self._lost.is_set()
                    reason = "connection lost" if idle_drop else self.last_error
                    conn.invalidate()
            except trio.TooSlowError:
                reason = f"no answer within {self.connect_timeout + self.timeout:g}s"
            except Exception as exc:
                reason = _describe(exc)
            self._conn = None
            if idle_drop and self.state == "up":
                # closed while idle (server timeout, failover): reconnect at once before calling it down;
                # meanwhile callers wait for the new connection (at most `timeout`)
                self.state = "starting"
                self._connected = trio.Event()
                continue
            self._set_down(reason)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _load_scripts(self, conn: Any) -> None:
        for script in SCRIPTS.values():
            sha = await conn.create_request(b"SCRIPT LOAD", script.source, decode=False)
            self.script_loads += 1
            if sha != script.sha:  # pragma: no cover - Redis computes SHA1 of the same bytes
                raise RuntimeError(f"SCRIPT LOAD of {script.name} gave {sha!r}, expected {script.sha!r}")

    def _set_up(self) -> None:
        if self.state == "down":
            log.warning("redis at %s is reachable again; shared rate limits use it", self.safe_url)
        elif self.connects == 1:
            log.info("connected to redis at %s for shared rate limits", self.safe_url)
        else:
            log.debug("reconnected to redis at %s", self.safe_url)
        self.state = "up"
        self.last_error = ""
        self._connected.set()

    def _set_down(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.last_error = reason
        if self.state != "down":
            self.outages += 1
            log.warning(
                "redis at %s unreachable (%s); rate limits that use it fall back per their on_redis_error",
                self.safe_url, reason,
            )  # fmt: skip
            self.state = "down"
        connected, self._connected = self._connected, trio.Event()
        connected.set()  # a batch waiting for the first connection fails now, not at its timeout
        self._fail_queued(RedisUnavailable(f"redis at {self.safe_url} unreachable: {reason}"))

    # -- batches (reactor side adds, trio side sends) -------------------------------------

    def submit(self, limiter: RedisLimiter, key: str, cost: int = 1) -> RedisCall | None:
        """Queue one decision of `limiter` for the Redis key `key` (reactor side, no I/O);
        None when Redis is down (decide without it, now)."""
        state = self.state
        if state != "up" and state != "starting":
            return None
        batch = self._filling
        if batch is None or batch.count >= self.max_batch:
            assert self.reactor is not None
            batch = self._filling = _Batch(self.reactor.event())
            self._batches_in.send_nowait(batch)
        call = RedisCall(key, cost, batch)
        group = batch.groups.get(limiter)
        if group is None:
            batch.groups[limiter] = [call]
        else:
            group.append(call)
        batch.count += 1
        self.calls += 1
        return call

    async def _send_batches(self) -> None:
        async for batch in self._batches_out:
            if batch is self._filling:
                self._filling = None  # closed: later calls go to a new batch
            await self._send(batch)

    async def _send(self, batch: _Batch) -> None:
        try:
            await self._send_batch(batch)
        finally:
            if not batch.finished:  # cancelled (closing): its callers must not hang
                self._fail(batch, RedisUnavailable("redis client closed"))

    async def _send_batch(self, batch: _Batch) -> None:
        groups = list(batch.groups.items())
        try:
            with trio.fail_after(self.timeout):
                conn = self._conn
                if conn is None and self.state == "starting":
                    await self._connected.wait()
                    conn = self._conn
                if conn is None:
                    raise RedisUnavailable(f"redis at {self.safe_url} unreachable: {self.last_error}")
                commands = [_Command(limiter, calls) for limiter, calls in groups]
                self.pipelines += 1
                results = await conn.create_request_batch(commands, timeout=self.timeout)
                for result in results:
                    if isinstance(result, (TimeoutError, RedisConnectionError)):
                        raise result  # the connection failed, not one script: Redis counts as down
                retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if retry:  # scripts flushed (SCRIPT FLUSH, restart without persistence): load, resend
                    log.info("redis at %s lost the rate limit scripts; loading them again", self.safe_url)
                    await self._load_scripts(conn)
                    self.pipelines += 1
                    again = await conn.create_request_batch([commands[i] for i in retry], timeout=self.timeout)
                    for i, r in zip(retry, again, strict=True):
                        results[i] = r
        except Exception as exc:
            if isinstance(exc, trio.TooSlowError):
                exc = TimeoutError(f"no answer within {self.timeout:g}s")
            error = exc if isinstance(exc, RedisUnavailable) else RedisUnavailable(_describe(exc))
            if not isinstance(exc, RedisUnavailable):
                self._lost.set()
                self._set_down(str(error))
            self._fail(batch, error)
            return
        for (limiter, calls), result in zip(groups, results, strict=True):
            if isinstance(result, BaseException) or not isinstance(result, list) or len(result) != 5 * len(calls):
                name = limiter.script.name
                if not isinstance(result, BaseException):
                    result = RedisUnavailable(f"unexpected answer from {name}: {result!r:.100}")
                log.debug("rate limit script %s failed: %s", name, result)
                for call in calls:
                    call.error = result
                self.failed_calls += len(calls)
                continue
            index = 0
            for call in calls:
                call.result = result
                call.index = index
                index += 5
        self._finish(batch)

    def _fail_queued(self, error: BaseException) -> None:
        self._filling = None
        while True:
            try:
                batch = self._batches_out.receive_nowait()
            except trio.WouldBlock:
                break
            self._fail(batch, error)

    def _fail(self, batch: _Batch, error: BaseException) -> None:
        for calls in batch.groups.values():
            for call in calls:
                call.error = error
        self.failed_calls += batch.count
        self._finish(batch)

    # -- handing results back to the reactor ----------------------------------------------

    def _finish(self, batch: _Batch) -> None:
        batch.finished = True
        if not self._dist_running:
            batch.event.set()
            return
        self._finished.append(batch)
        wait = self._dist_wait
        if wait is not None:
            self._dist_wait = None
            wait.set()

    async def _distributor(self) -> None:
        """Reactor task: wake every batch's callers from inside the reactor loop (one wake-up per round)."""
        assert self.reactor is not None
        reactor = self.reactor
        while True:
            if not self._finished:
                if self.state == "closed":
                    break
                self._dist_wait = reactor.event()
                await self._dist_wait
                continue
            finished, self._finished = self._finished, []
            for batch in finished:
                batch.event.set()
        self._dist_running = False
        for batch in self._finished:
            batch.event.set()
        self._finished = []


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


class RedisLimiter:
    """One limit (algorithm and parameters) in Redis: queues decisions for keys, reads them back."""

    __slots__ = ("client", "limit", "params", "prefix", "script")

    def __init__(
        self,
        client: RedisLimiterClient,
        policy: str,
        algorithm: str,
        rate: int,
        per: float,
        burst: int = 0,
        *,
        prefix: str = "flux:rl",
        leaky_mode: str = "reject",
        max_delay: float = 1.0,
        sliding_mode: str = "counter",
    ) -> None:
        per_us = max(1, round(per * 1_000_000))
        params: tuple[int, ...]
        if algorithm == "token_bucket":
            tag, params = "tb", (rate, per_us, burst if burst > 0 else rate)
        elif algorithm == "leaky_bucket":
            queue = 1 if leaky_mode == "queue" else 0
            tag, params = "lb", (rate, per_us, burst, queue, max(0, round(max_delay * 1_000_000)))
        elif algorithm == "fixed_window":
            tag, params = "fw", (rate, per_us)
        elif algorithm == "sliding_window":
            tag, params = ("swl" if sliding_mode == "log" else "swc"), (rate, per_us)
        else:
            raise ValueError(f"unknown rate limit algorithm {algorithm!r}")
        self.client = client
        self.limit = rate
        self.script = SCRIPTS[tag]
        self.params = params
        self.prefix = f"{prefix}:{policy}:{tag}:"

    def key_name(self, key: str) -> str:
        """The Redis key holding `key`'s state."""
        return self.prefix + key

    def submit(self, key: str, cost: int = 1) -> RedisCall | None:
        """Queue the decision for `key` (reactor side); None when Redis is down (decide without it)."""
        return self.client.submit(self, self.prefix + key, cost)

    def decision(self, call: RedisCall) -> Decision | None:
        """The Decision from a finished call, or None when it failed."""
        if call.error is not None:
            return None
        result = call.result
        i = call.index
        retry_us = result[i + 3]
        return Decision(
            result[i] == 1,
            self.limit,
            result[i + 1],
            result[i + 2] / 1e6,
            math.inf if retry_us < 0 else retry_us / 1e6,
            result[i + 4] / 1e6,
        )
