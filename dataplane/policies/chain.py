"""The policy chain: running a route's policies per request (sans-IO: no policy class here;
they are built by `dataplane.policies.build`).

Order (the contract): global policies (by name), then the listener's, then the
route's, then the chosen cluster's, each level in its listed order. A chain is
a tuple; running it is a plain loop until a policy needs I/O, and only then a
coroutine (so requests through synchronous policies never pay for an await).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from dataplane.policies.base import LocalResponse, Policy, PolicyResult, RequestContext

_Pending = Awaitable[LocalResponse | None]


class PolicyChain:
    """An ordered tuple of policies with the metric keys of their outcomes."""

    __slots__ = ("allow_keys", "policies", "response_policies")

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.policies = tuple(policies)
        self.response_policies = tuple(p for p in self.policies if p.wants_response)
        self.allow_keys = tuple((p.name, p.type, "allowed", "") for p in self.policies)

    def __bool__(self) -> bool:
        return bool(self.policies)

    def __add__(self, other: PolicyChain) -> PolicyChain:
        return PolicyChain(self.policies + other.policies)

    def run(self, ctx: RequestContext, count: Callable[[tuple[str, str, str, str]], None]) -> Any:
        """None (go on), a LocalResponse (answer it), or an awaitable giving one of those."""
        policies = self.policies
        for i, policy in enumerate(policies):
            result = policy.on_request(ctx)
            if result is None:
                continue
            if type(result) is LocalResponse:
                count((policy.name, policy.type, "denied", result.reason))
                return result
            return self._finish(ctx, i, cast(_Pending, result), count)  # needs I/O: continue as a coroutine
        for key in self.allow_keys:
            count(key)
        return None

    async def _finish(
        self,
        ctx: RequestContext,
        index: int,
        pending: Awaitable[LocalResponse | None],
        count: Callable[[tuple[str, str, str, str]], None],
    ) -> LocalResponse | None:
        policies = self.policies
        result = await pending
        if result is not None:
            policy = policies[index]
            count((policy.name, policy.type, "denied", result.reason))
            return result
        for policy in policies[index + 1 :]:
            step: PolicyResult = policy.on_request(ctx)
            if step is not None and type(step) is not LocalResponse:
                step = await cast(_Pending, step)
            if step is not None:
                count((policy.name, policy.type, "denied", step.reason))
                return step
        for key in self.allow_keys:
            count(key)
        return None

    def on_response(self, ctx: RequestContext, status: int) -> None:
        for policy in self.response_policies:
            policy.on_response(ctx, status)

    def on_abort(self, ctx: RequestContext) -> None:
        for policy in self.response_policies:
            policy.on_abort(ctx)


EMPTY_CHAIN = PolicyChain(())
