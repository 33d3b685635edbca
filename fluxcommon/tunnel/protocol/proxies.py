"""What a proxy asks of the node: the `options` of a NEW_PROXY message, validated.

The agent builds these from its config file (frpc.toml field names, see
tunnelclient/config.py) and the node checks them again before it opens anything, so a
bad option is refused by name whichever side made the mistake. Options the node does not
need (the local address, local health checks) never leave the agent.

Wire form: a JSON object of the fields below (snake_case). Unknown keys are refused, so
an agent newer than the node learns at once that an option is not supported.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fluxcommon.wire import checked_headers, host_problem

ProxyType = Literal["tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp"]
PUBLIC_PORT_TYPES = frozenset({"tcp", "udp"})
VHOST_TYPES = frozenset({"http", "https"})
# Reached by a name: http/https virtual hosts, and tcpmux (`CONNECT name:port` on the node's
# tcpmux_httpconnect_port, frp's multiplexer "httpconnect").
DOMAIN_TYPES = frozenset({"http", "https", "tcpmux"})
SECRET_TYPES = frozenset({"stcp", "sudp", "xtcp"})
STREAM_TYPES = frozenset({"tcp", "http", "https", "tcpmux", "stcp", "xtcp"})
# Basic-auth users: http proxies check them (httpUser/httpPassword), and may be chosen by them
# among proxies sharing a domain and location (routeByHTTPUser); tcpmux likewise, from
# Proxy-Authorization.
HTTP_USER_TYPES = frozenset({"http", "tcpmux"})

# Used with fullmatch only: `$` would also match before a trailing newline.
_DOMAIN_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # no leading or trailing '-'
_DOMAIN = re.compile(rf"(\*\.)?({_DOMAIN_LABEL}\.)*{_DOMAIN_LABEL}")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class ProxyOptionsError(ValueError):
    """Proxy options that cannot be served; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProxyOptions(_Strict):
    """Options of one proxy as sent in NEW_PROXY (all types share one shape)."""

    # tcp / udp: the public port on the node; 0 = any free port from the node's allow_ports.
    remote_port: int = Field(default=0, ge=0, le=65535)
    # http / https virtual hosts.
    custom_domains: tuple[str, ...] = ()
    subdomain: str = ""
    locations: tuple[str, ...] = ()  # http: path prefixes this proxy serves ("" or "/" = all)
    http_user: str = ""  # http / tcpmux: basic auth (Proxy-Authorization for tcpmux) asked of users
    http_password: str = ""
    # http / tcpmux: serve only requests whose basic-auth user is this one (frp's routeByHTTPUser);
    # proxies of one domain and location with different users coexist, "" takes the other users.
    route_by_http_user: str = ""
    host_header_rewrite: str = ""
    request_headers: dict[str, str] = {}  # http: set on the request to the local service
    response_headers: dict[str, str] = {}  # http: set on the response to the client
    # stcp / sudp / xtcp: only visitors presenting this key (and, if listed, these users) may reach it.
    secret_key: str = ""
    allow_users: tuple[str, ...] = ()
    # Load-balancing groups: proxies with the same group (and key) share one port or domain.
    group: str = ""
    group_key: str = ""
    # Payload transforms between the node and the agent, per work stream.
    use_encryption: bool = False
    use_compression: bool = False
    # Bytes per second in each direction (0 = unlimited), enforced by the node.
    bandwidth_limit: int = Field(default=0, ge=0)
    # Client address passed to the local service ahead of the bytes (tcp/stcp: PROXY protocol).
    proxy_protocol: Literal["", "v1", "v2"] = ""
    metadata: dict[str, str] = {}

    @field_validator("custom_domains")
    @classmethod
    def _domains(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for i, d in enumerate(v):
            d = d.strip().lower().rstrip(".")
            if not d or not _DOMAIN.fullmatch(d):
                raise ValueError(f"[{i}] {d!r} is not a domain name (a leading '*.' is allowed)")
            out.append(d)
        return tuple(out)

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, v: str) -> str:
        v = v.strip().lower()
        if v and not all(_LABEL.fullmatch(part) for part in v.split(".")):
            raise ValueError(f"{v!r} is not a valid subdomain label")
        return v

    @field_validator("locations")
    @classmethod
    def _locations(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, loc in enumerate(v):
            if loc and not loc.startswith("/"):
                raise ValueError(f"[{i}] {loc!r} must start with '/'")
        return v

    @field_validator("request_headers", "response_headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return checked_headers(v)  # as the node's request_rewrite / response_rewrite policies send them

    @field_validator("host_header_rewrite")
    @classmethod
    def _host(cls, v: str) -> str:
        problem = host_problem(v) if v else None
        if problem:
            raise ValueError(problem)
        return v


class NewProxyRequest(_Strict):
    """A whole NEW_PROXY request, checked for the type's needs."""

    name: str = Field(min_length=1, max_length=128)
    proxy_type: ProxyType
    options: ProxyOptions

    @model_validator(mode="after")
    def _for_type(self) -> NewProxyRequest:
        t, o = self.proxy_type, self.options
        if t in DOMAIN_TYPES and not o.custom_domains and not o.subdomain:
            raise ValueError(
                f"custom_domains: {'a' if t == 'tcpmux' else 'an'} {t} proxy needs custom_domains or a subdomain"
            )
        if t not in DOMAIN_TYPES and (o.custom_domains or o.subdomain):
            raise ValueError(f"custom_domains: custom_domains and subdomain are for http, https and tcpmux, not {t}")
        if t not in HTTP_USER_TYPES and (o.http_user or o.route_by_http_user):
            raise ValueError(f"http_user: http_user and route_by_http_user are for http and tcpmux proxies, not {t}")
        if t in SECRET_TYPES and not o.secret_key:
            raise ValueError(f"secret_key: a {t} proxy needs a secret key")
        if t not in PUBLIC_PORT_TYPES and o.remote_port:
            raise ValueError(f"remote_port: only tcp and udp proxies take a remote port, not {t}")
        if t != "http" and (o.locations or o.host_header_rewrite or o.request_headers or o.response_headers):
            raise ValueError(
                "locations: locations, host_header_rewrite, request_headers and response_headers are for http proxies"
            )
        if bool(o.http_user) != bool(o.http_password):
            raise ValueError("http_password: http_user and http_password go together")
        if o.group_key and not o.group:
            raise ValueError("group_key: set group too")
        if t == "udp" and o.proxy_protocol:
            raise ValueError("proxy_protocol: PROXY protocol is passed on tcp-like proxies only")
        return self


def parse_new_proxy(name: str, proxy_type: str, options: dict[str, Any]) -> NewProxyRequest:
    """Validate a NEW_PROXY request; `ProxyOptionsError` names the field at fault."""
    try:
        return NewProxyRequest(name=name, proxy_type=proxy_type, options=options)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if p != "options"]
        where = ".".join(loc)
        msg = err["msg"].removeprefix("Value error, ")
        raise ProxyOptionsError(f"proxy {name!r}: {where + ': ' if where else ''}{msg}") from None


def wire_options(options: ProxyOptions) -> dict[str, Any]:
    """The JSON form sent in NEW_PROXY: only fields that differ from their defaults."""
    return options.model_dump(mode="json", exclude_defaults=True)
