from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("id", "group", "build_version", "hostname", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    BUILD_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    group: str
    build_version: str
    hostname: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., group: _Optional[str] = ..., build_version: _Optional[str] = ..., hostname: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StreamConfigRequest(_message.Message):
    __slots__ = ("version_info", "node", "resource_names", "type_url", "response_nonce", "error_detail", "load_report", "resource_errors")
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAMES_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    LOAD_REPORT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    version_info: str
    node: Node
    resource_names: _containers.RepeatedScalarFieldContainer[str]
    type_url: str
    response_nonce: str
    error_detail: ErrorDetail
    load_report: LoadReport
    resource_errors: _containers.RepeatedCompositeFieldContainer[ResourceError]
    def __init__(self, version_info: _Optional[str] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., resource_names: _Optional[_Iterable[str]] = ..., type_url: _Optional[str] = ..., response_nonce: _Optional[str] = ..., error_detail: _Optional[_Union[ErrorDetail, _Mapping]] = ..., load_report: _Optional[_Union[LoadReport, _Mapping]] = ..., resource_errors: _Optional[_Iterable[_Union[ResourceError, _Mapping]]] = ...) -> None: ...

class ResourceError(_message.Message):
    __slots__ = ("kind", "name", "message", "kept_previous")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KEPT_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    message: str
    kept_previous: bool
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., message: _Optional[str] = ..., kept_previous: _Optional[bool] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("requests", "server_errors", "latency_bounds", "latency_counts", "latency_sum_seconds", "routes")
    class RoutesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RouteLoad
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RouteLoad, _Mapping]] = ...) -> None: ...
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    requests: int
    server_errors: int
    latency_bounds: _containers.RepeatedScalarFieldContainer[float]
    latency_counts: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_seconds: float
    routes: _containers.MessageMap[str, RouteLoad]
    def __init__(self, requests: _Optional[int] = ..., server_errors: _Optional[int] = ..., latency_bounds: _Optional[_Iterable[float]] = ..., latency_counts: _Optional[_Iterable[int]] = ..., latency_sum_seconds: _Optional[float] = ..., routes: _Optional[_Mapping[str, RouteLoad]] = ...) -> None: ...

class RouteLoad(_message.Message):
    __slots__ = ("requests", "server_errors")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ERRORS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    server_errors: int
    def __init__(self, requests: _Optional[int] = ..., server_errors: _Optional[int] = ...) -> None: ...

class StreamConfigResponse(_message.Message):
    __slots__ = ("version_info", "resources", "type_url", "nonce", "control_plane_id", "traceparent", "tracestate")
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PLANE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    version_info: str
    resources: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    type_url: str
    nonce: str
    control_plane_id: str
    traceparent: str
    tracestate: str
    def __init__(self, version_info: _Optional[str] = ..., resources: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ..., type_url: _Optional[str] = ..., nonce: _Optional[str] = ..., control_plane_id: _Optional[str] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class TunnelProxyStatus(_message.Message):
    __slots__ = ("name", "type", "remote_port", "domains", "group", "static", "connections", "total_connections", "bytes_in", "bytes_out")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    STATIC_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    remote_port: int
    domains: _containers.RepeatedScalarFieldContainer[str]
    group: str
    static: bool
    connections: int
    total_connections: int
    bytes_in: int
    bytes_out: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., remote_port: _Optional[int] = ..., domains: _Optional[_Iterable[str]] = ..., group: _Optional[str] = ..., static: _Optional[bool] = ..., connections: _Optional[int] = ..., total_connections: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ...) -> None: ...

class TunnelSessionStatus(_message.Message):
    __slots__ = ("tunnel", "agent", "run_id", "version", "address", "tls", "connected_since", "bytes_in", "bytes_out", "connections", "proxies", "visitors")
    TUNNEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    VISITORS_FIELD_NUMBER: _ClassVar[int]
    tunnel: str
    agent: str
    run_id: str
    version: str
    address: str
    tls: bool
    connected_since: float
    bytes_in: int
    bytes_out: int
    connections: int
    proxies: _containers.RepeatedCompositeFieldContainer[TunnelProxyStatus]
    visitors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tunnel: _Optional[str] = ..., agent: _Optional[str] = ..., run_id: _Optional[str] = ..., version: _Optional[str] = ..., address: _Optional[str] = ..., tls: _Optional[bool] = ..., connected_since: _Optional[float] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., connections: _Optional[int] = ..., proxies: _Optional[_Iterable[_Union[TunnelProxyStatus, _Mapping]]] = ..., visitors: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportTunnelsRequest(_message.Message):
    __slots__ = ("node", "sessions")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    node: Node
    sessions: _containers.RepeatedCompositeFieldContainer[TunnelSessionStatus]
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., sessions: _Optional[_Iterable[_Union[TunnelSessionStatus, _Mapping]]] = ...) -> None: ...

class ReportTunnelsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
