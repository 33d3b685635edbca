"""Route: which requests go to which cluster."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from controlplane.spec._types import Duration, Name, Resource, Strict
from fluxcommon.netaddr import check_host_pattern
from fluxcommon.wire import host_problem, path_problem, require, token_problem

_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class WeightedClusterSpec(Strict):
    name: Name
    weight: int = Field(gt=0, le=10_000)


class RetrySpec(Strict):
    attempts: int = Field(default=1, ge=0, le=10)
    per_try_timeout: Duration = 0
    backoff: Duration = 25
    retry_on: list[Literal["connect_failure", "reset", "5xx", "gateway_error"]] = [
        "connect_failure",
        "reset",
    ]
    retry_non_idempotent: bool = False


class GrayRuleSpec(Strict):
    """Requests matching every given condition go to instances of `version`."""

    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    consumer_group: str = ""
    version: str = Field(min_length=1)

    @model_validator(mode="after")
    def _some_condition(self) -> GrayRuleSpec:
        if not (self.headers or self.cookies or self.consumer_group):
            raise ValueError("headers: a rule needs headers, cookies or consumer_group to match on")
        for name in self.headers:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"headers: bad header name {name!r}")
        for name in self.cookies:
            problem = token_problem(name, "cookie name")
            if problem:
                raise ValueError(f"cookies: {problem}")
        return self


class StickySpec(Strict):
    cookie: str | None = Field(default=None, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    ttl: Duration = 0
    hash: str | None = Field(default=None, pattern=r"^(ip|header:[A-Za-z0-9-]+)$")

    @model_validator(mode="after")
    def _one(self) -> StickySpec:
        if bool(self.cookie) == bool(self.hash):
            raise ValueError("cookie: give exactly one of cookie or hash")
        return self


class GrayscaleSpec(Strict):
    """Split a route's traffic between instance versions of its cluster."""

    versions: dict[str, Annotated[int, Field(ge=0, le=10_000)]] = {}
    rules: list[GrayRuleSpec] = []
    sticky: StickySpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GrayscaleSpec:
        if not self.versions and not self.rules:
            raise ValueError("versions: give version weights, rules, or both")
        for version, weight in self.versions.items():
            if weight < 0 or weight > 10_000:
                raise ValueError(f"versions: weight of {version!r} must be 0-10000")
        if self.versions and not any(self.versions.values()):
            raise ValueError("versions: at least one weight must be above 0")
        return self


class RouteSpec(Resource):
    listener: Name | None = None
    hosts: list[str] = []
    path: str = "/"
    path_type: Literal["prefix", "exact", "regex"] = "prefix"
    methods: list[str] = []
    headers: dict[str, str] = {}
    cluster: Name | None = None
    clusters: list[WeightedClusterSpec] = []
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    policies: list[Name] = []
    timeout: Duration = 0
    retry: RetrySpec | None = None
    prefix_rewrite: str | None = None
    host_rewrite: str | None = None
    grayscale: GrayscaleSpec | None = None
    grpc_web: bool = False  # translate gRPC-Web (browsers) to gRPC for an http2 cluster
    description: str = ""

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [check_host_pattern(h) for h in v]

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        out = []
        for m in v:
            up = m.upper()
            if up not in _METHODS:
                raise ValueError(f"unknown HTTP method {m!r}")
            out.append(up)
        return out

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"bad header name {name!r}")
        return {k.lower(): val for k, val in v.items()}

    @field_validator("prefix_rewrite")
    @classmethod
    def _prefix_rewrite(cls, v: str | None) -> str | None:
        if v:  # "" is no rewrite
            require(path_problem(v, query=False))  # goes into the upstream request line
        return v

    @field_validator("host_rewrite")
    @classmethod
    def _host_rewrite(cls, v: str | None) -> str | None:
        if v:  # "" is no rewrite
            require(host_problem(v))  # the upstream Host header
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RouteSpec:
        if self.path_type == "regex":
            try:
                re.compile(self.path)
            except re.error as exc:
                raise ValueError(f"path: bad regex {self.path!r}: {exc}") from None
        elif not self.path.startswith("/"):
            raise ValueError("path: must start with '/'")
        else:
            problem = path_problem(self.path, query=False)
            if problem:
                raise ValueError(f"path: {problem}")
        if bool(self.cluster) == bool(self.clusters):
            raise ValueError("cluster: give exactly one of cluster or clusters (a weighted split)")
        names = [c.name for c in self.clusters]
        if len(names) != len(set(names)):
            raise ValueError("clusters: a cluster is named twice in the split")
        if self.prefix_rewrite is not None and self.path_type != "prefix":
            raise ValueError("prefix_rewrite: only with path_type: prefix")
        if self.grayscale is not None and self.clusters:
            raise ValueError("grayscale: splits one cluster by instance version; use cluster, not clusters")
        return self

    def cluster_names(self) -> list[str]:
        return [self.cluster] if self.cluster else [c.name for c in self.clusters]
