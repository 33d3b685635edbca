"""Alert rules on the registry (`alerts` config): evaluation, and webhook delivery.

`AlertEvaluator` is pure (no clock, no I/O): it is fed health changes and the number of
healthy instances per service, and answers the notifications to send. `AlertManager` is
the asyncio shell: on the registry leader only, it reads the rules and the registry's
health events, runs the evaluator, and hands the notifications to one delivery queue per
webhook, so a slow or dead webhook delays only its own notifications and never the
control plane.

Rules
-----
- `min_healthy`: a service (or each service, with `service: "*"`) has fewer than
  `threshold` healthy instances (instances that get traffic). The subject is the service.
- `flapping`: an instance changed health (a `healthy` or `unhealthy` event; the first
  verdict on a new instance counts too) more than `threshold` times within `window`. The
  subject is the instance.

De-duplication
--------------
Per rule and subject: when the condition starts to hold, one `firing` notification;
nothing more while it holds. When it stops holding, one `resolved` notification. A
subject that fires again within `cooldown` of its last `firing` notification is held
back (listed as active, `notified: false`) until the cooldown has passed, then notified
if the condition still holds; if it clears first, nothing is sent. A rule that is
deleted or changed to another kind or service resolves its firing subjects. State is
memory of the leader: a new leader starts afresh (and notifies what still holds).
A `min_healthy` rule naming a service the registry does not know counts 0 healthy
instances, so it fires (a typo in a rule shows up instead of staying silent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from controlplane.registry.store import RegistryStore
from controlplane.spec.alert import AlertSpec
from controlplane.spec.configset import ConfigSet

log = logging.getLogger("flux.registry.alerts")

NotifyState = Literal["firing", "resolved"]
SubjectKey = tuple[str, str, str]  # (alert, service, instance or "")

FLAP_MEMORY_MAX = 86_400.0  # seconds of health changes kept at most, whatever the windows say
FLAP_CHANGES_MAX = 1000  # changes kept per instance
HEALTH_KINDS = ("healthy", "unhealthy")


@dataclass(frozen=True)
class Notification:
    alert: str
    kind: str
    service: str
    instance: str | None
    state: NotifyState
    value: int
    threshold: int
    message: str
    time: float
    webhook: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON body POSTed to the webhook."""
        out: dict[str, Any] = {"alert": self.alert, "kind": self.kind, "service": self.service}
        if self.instance is not None:
            out["instance"] = self.instance
        out.update(state=self.state, value=self.value, threshold=self.threshold, message=self.message, time=self.time)
        return out


@dataclass
class _Subject:
    rule: AlertSpec  # as it was when last evaluated (a deleted rule still resolves through it)
    service: str
    instance: str | None
    value: int = 0
    message: str = ""
    since: float = 0.0  # when the condition started to hold (this time)
    holds: bool = False
    firing: bool = False  # a firing notification went out and no resolved yet
    last_fired: float | None = None


def _describe(rule: AlertSpec, service: str, instance: str | None, value: int, holds: bool) -> str:
    if rule.kind == "min_healthy":
        if holds:
            return f"service {service} has {value} healthy instance(s), fewer than {rule.threshold}"
        return f"service {service} has {value} healthy instance(s) (at least {rule.threshold})"
    window = f"{rule.window / 1000:g}s"
    if holds:
        return f"instance {instance} of {service} changed health {value} times in {window} (more than {rule.threshold})"
    return f"instance {instance} of {service} changed health {value} times in {window} (at most {rule.threshold})"


class AlertEvaluator:
    """Which notifications the rules call for, given health changes and healthy counts (pure)."""

    def __init__(self) -> None:
        self._changes: dict[tuple[str, str], deque[float]] = {}
        self._subjects: dict[SubjectKey, _Subject] = {}

    def observe_change(self, service: str, instance: str, at: float) -> None:
        """An instance's health changed at `at` (unix seconds)."""
        self._changes.setdefault((service, instance), deque(maxlen=FLAP_CHANGES_MAX)).append(at)

    def evaluate(self, rules: Iterable[AlertSpec], healthy: Mapping[str, int], now: float) -> list[Notification]:
        """Notifications due at `now`. `healthy`: healthy instances of every known service."""
        by_name = {r.name: r for r in rules}
        self._forget_changes(by_name.values(), now)
        seen: dict[SubjectKey, tuple[AlertSpec, str, str | None, int, bool]] = {}
        for rule in by_name.values():
            if rule.kind == "min_healthy":
                names = sorted(healthy) if rule.service == "*" else [rule.service]
                for svc in names:
                    value = healthy.get(svc, 0)
                    seen[(rule.name, svc, "")] = (rule, svc, None, value, value < rule.threshold)
            else:
                since = now - rule.window / 1000.0
                known = {(svc, inst) for (alert, svc, inst) in self._subjects if alert == rule.name and inst}
                for svc, inst in known | set(self._changes):
                    if rule.service not in ("*", svc):
                        continue
                    value = sum(1 for t in self._changes.get((svc, inst), ()) if since < t <= now)
                    if value or (svc, inst) in known:
                        seen[(rule.name, svc, inst)] = (rule, svc, inst, value, value > rule.threshold)
        out: list[Notification] = []
        for key in list(self._subjects):
            if key not in seen:  # the rule or the subject went away: the condition no longer holds
                sub = self._subjects[key]
                current = by_name.get(key[0])
                if current is not None and current.kind == sub.rule.kind:
                    sub.rule = current
                self._step(key, sub.rule, sub.service, sub.instance, sub.value, False, now, out, keep=False)
        for key, (rule, svc, inst, value, holds) in seen.items():
            self._step(key, rule, svc, inst, value, holds, now, out)
        return out

    def _step(self, key: SubjectKey, rule: AlertSpec, service: str, instance: str | None, value: int, holds: bool,
              now: float, out: list[Notification], *, keep: bool = True) -> None:  # fmt: skip
        sub = self._subjects.get(key)
        if sub is None:
            if not holds:
                return
            sub = self._subjects[key] = _Subject(rule, service, instance)
        sub.rule, sub.value = rule, value
        sub.message = _describe(rule, service, instance, value, holds)
        if holds:
            if not sub.holds:
                sub.holds, sub.since = True, now
            if not sub.firing and (sub.last_fired is None or now - sub.last_fired >= rule.cooldown / 1000.0):
                sub.firing, sub.last_fired = True, now
                out.append(self._note(sub, "firing", value, sub.message, now))
            return
        sub.holds = False
        if sub.firing:
            sub.firing = False
            message = sub.message if keep else f"{sub.message}; alert rule or subject removed"
            out.append(self._note(sub, "resolved", value, message, now))
        if not keep or sub.last_fired is None or now - sub.last_fired >= rule.cooldown / 1000.0:
            del self._subjects[key]

    def _note(self, sub: _Subject, state: NotifyState, value: int, message: str, now: float) -> Notification:
        r = sub.rule
        return Notification(r.name, r.kind, sub.service, sub.instance, state, value, r.threshold, message, now,
                            r.webhook, dict(r.headers))  # fmt: skip

    def _forget_changes(self, rules: Iterable[AlertSpec], now: float) -> None:
        windows = [r.window / 1000.0 for r in rules if r.kind == "flapping"]
        keep = min(max(windows, default=0.0), FLAP_MEMORY_MAX)
        for key in list(self._changes):
            times = self._changes[key]
            while times and times[0] <= now - keep:
                times.popleft()
            if not times:
                del self._changes[key]

    def active(self) -> list[dict[str, Any]]:
        """Subjects whose condition holds now (notified or held back by the cooldown)."""
        out = []
        for (alert, service, instance), sub in sorted(self._subjects.items()):
            if not sub.holds:
                continue
            item: dict[str, Any] = {"alert": alert, "kind": sub.rule.kind, "service": service}
            if instance:
                item["instance"] = instance
            item.update(value=sub.value, threshold=sub.rule.threshold, since=sub.since, notified=sub.firing,
                        last_fired=sub.last_fired, message=sub.message)  # fmt: skip
            out.append(item)
        return out


# -- the asyncio shell -----------------------------------------------------------------------


def alert_rules(config: ConfigSet) -> list[AlertSpec]:
    """The `alerts` resources of a config."""
    return [r for _, r in sorted(config["alerts"].items()) if isinstance(r, AlertSpec)]


class AlertManager:
    """Runs the evaluator on the registry leader and delivers its notifications to webhooks."""

    def __init__(
        self,
        registry: RegistryStore,
        rules: Callable[[], Sequence[AlertSpec]],
        rules_version: Callable[[], int],
        *,
        interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        send_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        queue_size: int = 100,
    ) -> None:
        self.registry = registry
        self._load_rules = rules  # blocking: runs in a worker thread when `rules_version()` changes
        self._rules_version = rules_version
        self.interval = interval
        self.clock = clock
        self.send_timeout = send_timeout
        self.retries = retries
        self.backoff = backoff
        self.queue_size = queue_size
        self.evaluator = AlertEvaluator()
        self.rules: list[AlertSpec] = []
        self._version: int | None = None
        self._last_event: int | None = None
        self._wake = asyncio.Event()
        self._queues: dict[str, asyncio.Queue[Notification]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self.active = False  # evaluating now (this control plane leads)
        self.counters: dict[tuple[str, str], int] = {}  # (state, "sent" | "failed" | "dropped") -> notifications
        self.last_notification: dict[str, Any] | None = None
        self.last_error: dict[str, Any] | None = None

    # -- reads (REST, metrics) ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        sent = sum(n for (_, result), n in self.counters.items() if result == "sent")
        failed = sum(n for (_, result), n in self.counters.items() if result != "sent")
        return {
            "evaluating": self.active,
            "rules": len(self.rules),
            "active": self.evaluator.active(),
            "last_notification": self.last_notification,
            "last_error": self.last_error,
            "sent": sent,
            "failed": failed,
            "pending": sum(q.qsize() for q in self._queues.values()),
        }

    # -- the loop --------------------------------------------------------------------------

    def registry_changed(self, _services: set[str]) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.registry.subscribe(self.registry_changed)
        self._client = httpx.AsyncClient(timeout=self.send_timeout, trust_env=False, follow_redirects=False)
        try:
            while True:
                self._wake.clear()
                if not self.registry.is_leader:
                    if self.active:
                        log.info("alert evaluation stopped: not the registry leader")
                        self._reset()
                    await self._sleep(self.interval)
                    continue
                if not self.active:
                    log.info("alert evaluation started: this control plane leads the registry")
                    self.active = True
                try:
                    await self.tick()
                except Exception:
                    log.exception("alert evaluation failed; retrying")
                await asyncio.sleep(0.05)  # coalesce bursts of registry changes
                await self._sleep(self.interval)
        finally:
            for task in self._workers.values():
                task.cancel()
            for task in self._workers.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._client.aclose()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _reset(self) -> None:
        self.evaluator = AlertEvaluator()
        self._last_event = None
        self.active = False

    async def tick(self) -> list[Notification]:
        """One evaluation: read rules (when the config changed) and new health events, notify."""
        version = self._rules_version()
        if version != self._version:
            self.rules = list(await asyncio.to_thread(self._load_rules))
            self._version = version
        if any(r.kind == "flapping" for r in self.rules):
            await self._read_events()
        else:
            self._last_event = None  # nothing counts changes: start from the recent events when a rule comes
        now = self.clock()
        notes = self.evaluator.evaluate(self.rules, self._healthy_counts(), now)  # no rules: resolves what fired
        for note in notes:
            self._enqueue(note)
        return notes

    async def _read_events(self, page: int = 1000) -> None:
        if self._last_event is None:
            events = await asyncio.to_thread(self.registry.events, limit=page)
            self._feed(events)
            self._last_event = events[-1].id if events else 0
            return
        while True:
            events = await asyncio.to_thread(self.registry.events, since=self._last_event, limit=page)
            self._feed(events)
            if events:
                self._last_event = events[-1].id
            if len(events) < page:
                return

    def _feed(self, events: Iterable[Any]) -> None:
        for e in events:
            if e.kind in HEALTH_KINDS:
                self.evaluator.observe_change(e.service, e.instance, e.time)

    def _healthy_counts(self) -> dict[str, int]:
        wanted = {r.service for r in self.rules if r.kind == "min_healthy"}
        names = [s.name for s in self.registry.services()] if "*" in wanted else [n for n in wanted if n != "*"]
        return {
            name: sum(1 for i in self.registry.instances(name) if i.serves)
            for name in names
            if self.registry.has_service(name)
        }

    # -- delivery ----------------------------------------------------------------------------

    def _count(self, state: str, result: str) -> None:
        self.counters[(state, result)] = self.counters.get((state, result), 0) + 1

    def _enqueue(self, note: Notification) -> None:
        queue = self._queues.get(note.webhook)
        if queue is None:
            queue = self._queues[note.webhook] = asyncio.Queue(self.queue_size)
        worker = self._workers.get(note.webhook)
        if worker is None or worker.done():
            self._workers[note.webhook] = asyncio.create_task(self._deliver_all(queue), name="alert-webhook")
        if queue.full():  # the webhook is far behind: drop the oldest notification
            old = queue.get_nowait()
            queue.task_done()
            self._count(old.state, "dropped")
            self._error(old, "delivery queue full; notification dropped")
        queue.put_nowait(note)

    async def _deliver_all(self, queue: asyncio.Queue[Notification]) -> None:
        while True:
            note = await queue.get()
            try:
                await self.deliver(note)
            except Exception:
                log.exception("alert delivery failed")
            finally:
                queue.task_done()

    async def deliver(self, note: Notification) -> bool:
        """POST one notification, retrying network errors, 429 and 5xx with back-off (bounded)."""
        assert self._client is not None
        headers = {**note.headers, "content-type": "application/json", "user-agent": "flux-alerts/1"}
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), 10.0))
            try:
                resp = await self._client.post(note.webhook, json=note.payload(), headers=headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
                continue
            if resp.is_success:
                self._count(note.state, "sent")
                self.last_notification = {**note.payload(), "webhook": note.webhook, "status": resp.status_code,
                                          "attempts": attempt + 1}  # fmt: skip
                log.info("alert %s %s for %s sent", note.alert, note.state, note.instance or note.service)
                return True
            error = f"HTTP {resp.status_code}"
            if resp.status_code != 429 and resp.status_code < 500:
                break  # the webhook refuses it: another try changes nothing
        self._count(note.state, "failed")
        self._error(note, error)
        return False

    def _error(self, note: Notification, error: str) -> None:
        self.last_error = {"time": self.clock(), "alert": note.alert, "state": note.state, "webhook": note.webhook,
                           "error": error}  # fmt: skip
        log.warning("alert %s %s to %s failed: %s", note.alert, note.state, note.webhook, error)
