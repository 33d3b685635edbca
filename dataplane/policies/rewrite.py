"""Rewrites: request headers/path/host on the way up, response headers/status on the way down,
and redirects answered by the node."""

from __future__ import annotations

import re

from dataplane.policies.base import LocalResponse, Policy, PolicyEnv, PolicyResult, RequestContext
from fluxcommon.policy_config import HeaderOps, RedirectConfig, RequestRewriteConfig, ResponseRewriteConfig


def _header_ops(ops: HeaderOps) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    return list(ops.add.items()), list(ops.set.items()), list(ops.remove)


class RequestRewritePolicy(Policy):
    type = "request_rewrite"

    def __init__(self, name: str, config: RequestRewriteConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.add, self.set, self.remove = _header_ops(config.headers)
        self.path_prefix = config.path_prefix
        self.regex = (re.compile(config.path_regex[0]), config.path_regex[1]) if config.path_regex else None
        self.host = config.host

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        for name in self.remove:
            ctx.remove_upstream_header(name)
        for name, value in self.set:
            ctx.set_upstream_header(name, value)
        for name, value in self.add:
            ctx.add_upstream_header(name, value)
        path = ctx.path if ctx.path is not None else ctx.head.path
        if self.path_prefix is not None:
            path = self.path_prefix.rstrip("/") + path if path.startswith("/") else self.path_prefix + path
        if self.regex is not None:
            path = self.regex[0].sub(self.regex[1], path)
        if path != ctx.head.path:
            ctx.path = path if path.startswith("/") else "/" + path
        if self.host is not None:
            ctx.host = self.host.encode("idna")
        return None


class ResponseRewritePolicy(Policy):
    type = "response_rewrite"

    def __init__(self, name: str, config: ResponseRewriteConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.add, self.set, self.remove = _header_ops(config.headers)
        self.status = config.status

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        for name in self.remove:
            ctx.response_remove.add(name.lower().encode("latin-1"))
        for name, value in self.set:
            ctx.response_remove.add(name.lower().encode("latin-1"))
            ctx.add_response_header(name, value)
        for name, value in self.add:
            ctx.add_response_header(name, value)
        if self.status is not None:
            ctx.vars["status"] = self.status
        return None


class RedirectPolicy(Policy):
    type = "redirect"

    def __init__(self, name: str, config: RedirectConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.to = config.to
        self.status = config.status
        self.keep_path = config.keep_path

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        location = self.to
        if self.keep_path:
            location = location.rstrip("/") + ctx.head.path
            if ctx.head.query:
                location += "?" + ctx.head.query.decode("latin-1")
        return LocalResponse(
            self.status,
            {"redirect": location},
            [(b"Location", location.encode("latin-1"))],
            reason="redirect",
        )
