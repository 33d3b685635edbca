"""The node's own check of a snapshot's text before it compiles it: nothing from config reaches
the wire unchecked, even when the control plane that sent it did not check (an older or a
tampered one).

`check_snapshot(snap)` walks every string of the snapshot generically with the protobuf
descriptors (string fields, repeated strings, map keys and values, nested messages; bytes
fields are not text and are skipped) and raises `ValueError("<kind> '<name>': <field>:
<problem>")` for the first string that holds CR, LF, NUL or another control character
(multi-line fields, the PEM blocks, may hold CR and LF but not NUL), and for the fields that
go into requests as they are: a route's `prefix_rewrite` (an origin-form path prefix),
`host_rewrite` (a host), its and its grayscale rules' header names (tokens), a health check's
path and host, cookie names. Policy configs travel as a `google.protobuf.Struct` and are
parsed on the node by `fluxcommon.policy_config.parse_policy_config`, whose schemas apply
the same rules (see dataplane/policies/build.py build_policies): they are skipped here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from flux.v1 import config_pb2 as pb
from fluxcommon.wire import (
    header_name_problem,
    host_problem,
    multiline_text_problem,
    path_problem,
    text_problem,
    token_problem,
)

__all__ = ["check_snapshot"]

Problem = Callable[[str], str | None]

# Multi-line text (PEM blocks). Besides these, any string field named `description`,
# `*_pem`, `public_key` or `private_key` is taken as multi-line, so new PEM fields need no edit.
_MULTILINE = frozenset(
    {
        "flux.v1.Certificate.cert_pem",
        "flux.v1.Certificate.key_pem",
        "flux.v1.Credential.public_key",
        "flux.v1.Tunnel.tls_client_ca_pem",
        "flux.v1.ListenerTls.client_ca",  # PEM CA bundles
        "flux.v1.UpstreamTls.ca",
    }
)
_MULTILINE_NAMES = frozenset({"description", "public_key", "private_key"})
# Checked by the policy schemas when the node builds its policies.
_SKIPPED_MESSAGES = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


def _host(value: str) -> str | None:
    return host_problem(value) if value else None


def _prefix(value: str) -> str | None:
    return path_problem(value, query=False) if value else None


def _path(value: str) -> str | None:
    return path_problem(value) if value else None


def _cookie(value: str) -> str | None:
    return token_problem(value, "cookie name") if value else None


# Semantic checks on top of the text rule: field full name -> check of a string value, or of
# a map's keys ("...#key").
_SEMANTIC: dict[str, Problem] = {
    "flux.v1.Route.prefix_rewrite": _prefix,
    "flux.v1.Route.host_rewrite": _host,
    "flux.v1.Route.headers#key": header_name_problem,
    "flux.v1.GrayRule.headers#key": header_name_problem,
    "flux.v1.GrayRule.cookies#key": _cookie,
    "flux.v1.Grayscale.sticky_cookie": _cookie,
    "flux.v1.SessionAffinity.cookie": _cookie,
    "flux.v1.HealthCheck.path": _path,
    "flux.v1.HealthCheck.host": _host,
    "flux.v1.Tunnel.subdomain_host": lambda v: host_problem(v, port=False) if v else None,
}


def _is_multiline(field: FieldDescriptor) -> bool:
    return field.full_name in _MULTILINE or field.name in _MULTILINE_NAMES or field.name.endswith("_pem")


def _string_problem(field: FieldDescriptor, value: str, suffix: str = "") -> str | None:
    problem = (multiline_text_problem if _is_multiline(field) else text_problem)(value)
    if problem is None:
        semantic = _SEMANTIC.get(field.full_name + suffix)
        problem = semantic(value) if semantic is not None else None
    return problem


def _is_map(field: FieldDescriptor) -> bool:
    msg = field.message_type
    return msg is not None and msg.GetOptions().map_entry


def _message_problem(msg: Message, where: str) -> tuple[str, str] | None:
    """(field path, problem) of the first bad string in `msg`, or None."""
    for field, value in msg.ListFields():
        path = f"{where}.{field.name}" if where else field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            values: Iterable[tuple[str, str]] = (
                ((f"{path}[{i}]", v) for i, v in enumerate(value)) if field.is_repeated else ((path, value),)
            )
            for at, text in values:
                problem = _string_problem(field, text)
                if problem:
                    return at, problem
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name in _SKIPPED_MESSAGES:
                continue
            if _is_map(field):
                found = _map_problem(field, value, path)
            elif field.is_repeated:
                found = next((p for i, item in enumerate(value) if (p := _message_problem(item, f"{path}[{i}]"))), None)
            else:
                found = _message_problem(value, path)
            if found:
                return found
    return None


def _map_problem(field: FieldDescriptor, mapping: object, path: str) -> tuple[str, str] | None:
    entry: Descriptor = field.message_type
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for key, value in mapping.items():  # type: ignore[attr-defined]
        if key_field.type == FieldDescriptor.TYPE_STRING:
            problem = _string_problem(key_field, key) or _SEMANTIC.get(field.full_name + "#key", _none)(key)
            if problem:
                return f"{path} key {key!r}", problem
        at = f"{path}[{key!r}]"
        if value_field.type == FieldDescriptor.TYPE_STRING:
            problem = _string_problem(value_field, value)
            if problem:
                return at, problem
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
            found = _message_problem(value, at)
            if found:
                return found
    return None


def _none(_value: str) -> None:
    return None


def check_snapshot(snap: pb.Snapshot) -> None:
    """Raise ValueError("<kind> '<name>': <field>: <problem>") for the first string of `snap`
    that must not go on the wire; return None when every string is fine."""
    for field, value in snap.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            problem = _string_problem(field, value)
            if problem:
                raise ValueError(f"snapshot {field.name}: {problem}")
            continue
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        kind = field.message_type.name.lower()
        items = value if field.is_repeated else [value]
        for item in items:
            found = _message_problem(item, "")
            if found:
                at, problem = found
                name = getattr(item, "name", "")
                raise ValueError(f"{kind} {name!r}: {at}: {problem}")
