from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_HTTP: _ClassVar[Protocol]
    PROTOCOL_HTTPS: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]
    PROTOCOL_TLS: _ClassVar[Protocol]

class ClientAuth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLIENT_AUTH_UNSPECIFIED: _ClassVar[ClientAuth]
    CLIENT_AUTH_REQUIRED: _ClassVar[ClientAuth]
    CLIENT_AUTH_OPTIONAL: _ClassVar[ClientAuth]

class ListenerMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LISTENER_MODE_UNSPECIFIED: _ClassVar[ListenerMode]
    LISTENER_MODE_REVERSE: _ClassVar[ListenerMode]
    LISTENER_MODE_FORWARD: _ClassVar[ListenerMode]

class EscapedSlashes(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESCAPED_SLASHES_UNSPECIFIED: _ClassVar[EscapedSlashes]
    ESCAPED_SLASHES_REJECT: _ClassVar[EscapedSlashes]
    ESCAPED_SLASHES_KEEP: _ClassVar[EscapedSlashes]
    ESCAPED_SLASHES_UNESCAPE: _ClassVar[EscapedSlashes]

class LbPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LB_POLICY_UNSPECIFIED: _ClassVar[LbPolicy]
    LB_POLICY_ROUND_ROBIN: _ClassVar[LbPolicy]
    LB_POLICY_WEIGHTED_ROUND_ROBIN: _ClassVar[LbPolicy]
    LB_POLICY_LEAST_CONN: _ClassVar[LbPolicy]
    LB_POLICY_CONSISTENT_HASH: _ClassVar[LbPolicy]
    LB_POLICY_IP_HASH: _ClassVar[LbPolicy]

class PathType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATH_TYPE_UNSPECIFIED: _ClassVar[PathType]
    PATH_TYPE_PREFIX: _ClassVar[PathType]
    PATH_TYPE_EXACT: _ClassVar[PathType]
    PATH_TYPE_REGEX: _ClassVar[PathType]
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_HTTP: Protocol
PROTOCOL_HTTPS: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
PROTOCOL_TLS: Protocol
CLIENT_AUTH_UNSPECIFIED: ClientAuth
CLIENT_AUTH_REQUIRED: ClientAuth
CLIENT_AUTH_OPTIONAL: ClientAuth
LISTENER_MODE_UNSPECIFIED: ListenerMode
LISTENER_MODE_REVERSE: ListenerMode
LISTENER_MODE_FORWARD: ListenerMode
ESCAPED_SLASHES_UNSPECIFIED: EscapedSlashes
ESCAPED_SLASHES_REJECT: EscapedSlashes
ESCAPED_SLASHES_KEEP: EscapedSlashes
ESCAPED_SLASHES_UNESCAPE: EscapedSlashes
LB_POLICY_UNSPECIFIED: LbPolicy
LB_POLICY_ROUND_ROBIN: LbPolicy
LB_POLICY_WEIGHTED_ROUND_ROBIN: LbPolicy
LB_POLICY_LEAST_CONN: LbPolicy
LB_POLICY_CONSISTENT_HASH: LbPolicy
LB_POLICY_IP_HASH: LbPolicy
PATH_TYPE_UNSPECIFIED: PathType
PATH_TYPE_PREFIX: PathType
PATH_TYPE_EXACT: PathType
PATH_TYPE_REGEX: PathType

class Listener(_message.Message):
    __slots__ = ("name", "protocol", "address", "port", "node_group", "policies", "certificates", "cluster", "timeouts", "limits", "path_normalization", "tls", "mode", "forward", "http2")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NODE_GROUP_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PATH_NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    HTTP2_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: Protocol
    address: str
    port: int
    node_group: str
    policies: _containers.RepeatedScalarFieldContainer[str]
    certificates: _containers.RepeatedScalarFieldContainer[str]
    cluster: str
    timeouts: ListenerTimeouts
    limits: ListenerLimits
    path_normalization: PathNormalization
    tls: ListenerTls
    mode: ListenerMode
    forward: ForwardProxy
    http2: bool
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., node_group: _Optional[str] = ..., policies: _Optional[_Iterable[str]] = ..., certificates: _Optional[_Iterable[str]] = ..., cluster: _Optional[str] = ..., timeouts: _Optional[_Union[ListenerTimeouts, _Mapping]] = ..., limits: _Optional[_Union[ListenerLimits, _Mapping]] = ..., path_normalization: _Optional[_Union[PathNormalization, _Mapping]] = ..., tls: _Optional[_Union[ListenerTls, _Mapping]] = ..., mode: _Optional[_Union[ListenerMode, str]] = ..., forward: _Optional[_Union[ForwardProxy, _Mapping]] = ..., http2: _Optional[bool] = ...) -> None: ...

class ListenerTls(_message.Message):
    __slots__ = ("min_version", "ciphers", "client_ca", "client_auth")
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    CIPHERS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_AUTH_FIELD_NUMBER: _ClassVar[int]
    min_version: str
    ciphers: str
    client_ca: str
    client_auth: ClientAuth
    def __init__(self, min_version: _Optional[str] = ..., ciphers: _Optional[str] = ..., client_ca: _Optional[str] = ..., client_auth: _Optional[_Union[ClientAuth, str]] = ...) -> None: ...

class ForwardProxy(_message.Message):
    __slots__ = ("allow_hosts", "allow_ports", "deny_private")
    ALLOW_HOSTS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PORTS_FIELD_NUMBER: _ClassVar[int]
    DENY_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    allow_hosts: _containers.RepeatedScalarFieldContainer[str]
    allow_ports: str
    deny_private: bool
    def __init__(self, allow_hosts: _Optional[_Iterable[str]] = ..., allow_ports: _Optional[str] = ..., deny_private: _Optional[bool] = ...) -> None: ...

class ListenerTimeouts(_message.Message):
    __slots__ = ("header_ms", "body_idle_ms", "idle_ms")
    HEADER_MS_FIELD_NUMBER: _ClassVar[int]
    BODY_IDLE_MS_FIELD_NUMBER: _ClassVar[int]
    IDLE_MS_FIELD_NUMBER: _ClassVar[int]
    header_ms: int
    body_idle_ms: int
    idle_ms: int
    def __init__(self, header_ms: _Optional[int] = ..., body_idle_ms: _Optional[int] = ..., idle_ms: _Optional[int] = ...) -> None: ...

class ListenerLimits(_message.Message):
    __slots__ = ("max_connections", "max_connections_per_ip")
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONNECTIONS_PER_IP_FIELD_NUMBER: _ClassVar[int]
    max_connections: int
    max_connections_per_ip: int
    def __init__(self, max_connections: _Optional[int] = ..., max_connections_per_ip: _Optional[int] = ...) -> None: ...

class PathNormalization(_message.Message):
    __slots__ = ("merge_slashes", "escaped_slashes")
    MERGE_SLASHES_FIELD_NUMBER: _ClassVar[int]
    ESCAPED_SLASHES_FIELD_NUMBER: _ClassVar[int]
    merge_slashes: bool
    escaped_slashes: EscapedSlashes
    def __init__(self, merge_slashes: _Optional[bool] = ..., escaped_slashes: _Optional[_Union[EscapedSlashes, str]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "port", "weight", "zone", "version", "metadata", "draining")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    weight: int
    zone: str
    version: str
    metadata: _containers.ScalarMap[str, str]
    draining: bool
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ..., zone: _Optional[str] = ..., version: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., draining: _Optional[bool] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("type", "path", "host", "interval_ms", "timeout_ms", "healthy_threshold", "unhealthy_threshold", "expected_statuses")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_STATUSES_FIELD_NUMBER: _ClassVar[int]
    type: str
    path: str
    host: str
    interval_ms: int
    timeout_ms: int
    healthy_threshold: int
    unhealthy_threshold: int
    expected_statuses: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, type: _Optional[str] = ..., path: _Optional[str] = ..., host: _Optional[str] = ..., interval_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., healthy_threshold: _Optional[int] = ..., unhealthy_threshold: _Optional[int] = ..., expected_statuses: _Optional[_Iterable[int]] = ...) -> None: ...

class OutlierDetection(_message.Message):
    __slots__ = ("consecutive_failures", "base_ejection_ms", "max_ejection_ms", "max_ejection_percent", "consecutive_5xx")
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_5XX_FIELD_NUMBER: _ClassVar[int]
    consecutive_failures: int
    base_ejection_ms: int
    max_ejection_ms: int
    max_ejection_percent: int
    consecutive_5xx: int
    def __init__(self, consecutive_failures: _Optional[int] = ..., base_ejection_ms: _Optional[int] = ..., max_ejection_ms: _Optional[int] = ..., max_ejection_percent: _Optional[int] = ..., consecutive_5xx: _Optional[int] = ...) -> None: ...

class Timeouts(_message.Message):
    __slots__ = ("connect_ms", "read_ms", "idle_ms")
    CONNECT_MS_FIELD_NUMBER: _ClassVar[int]
    READ_MS_FIELD_NUMBER: _ClassVar[int]
    IDLE_MS_FIELD_NUMBER: _ClassVar[int]
    connect_ms: int
    read_ms: int
    idle_ms: int
    def __init__(self, connect_ms: _Optional[int] = ..., read_ms: _Optional[int] = ..., idle_ms: _Optional[int] = ...) -> None: ...

class ConnectionPool(_message.Message):
    __slots__ = ("max_connections", "max_idle", "idle_timeout_ms", "max_pending", "max_requests")
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_IDLE_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    max_connections: int
    max_idle: int
    idle_timeout_ms: int
    max_pending: int
    max_requests: int
    def __init__(self, max_connections: _Optional[int] = ..., max_idle: _Optional[int] = ..., idle_timeout_ms: _Optional[int] = ..., max_pending: _Optional[int] = ..., max_requests: _Optional[int] = ...) -> None: ...

class SessionAffinity(_message.Message):
    __slots__ = ("cookie", "ttl_ms", "path")
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    cookie: str
    ttl_ms: int
    path: str
    def __init__(self, cookie: _Optional[str] = ..., ttl_ms: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class ServiceSelector(_message.Message):
    __slots__ = ("name", "tags", "version", "zone", "namespace", "strategy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    version: str
    zone: str
    namespace: str
    strategy: str
    def __init__(self, name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., zone: _Optional[str] = ..., namespace: _Optional[str] = ..., strategy: _Optional[str] = ...) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("name", "lb", "hash_on", "session_affinity", "endpoints", "service", "health_check", "outlier_detection", "timeouts", "pool", "policies", "scheme", "tunnel", "tls", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LB_FIELD_NUMBER: _ClassVar[int]
    HASH_ON_FIELD_NUMBER: _ClassVar[int]
    SESSION_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    lb: LbPolicy
    hash_on: str
    session_affinity: SessionAffinity
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    service: ServiceSelector
    health_check: HealthCheck
    outlier_detection: OutlierDetection
    timeouts: Timeouts
    pool: ConnectionPool
    policies: _containers.RepeatedScalarFieldContainer[str]
    scheme: str
    tunnel: str
    tls: UpstreamTls
    protocol: str
    def __init__(self, name: _Optional[str] = ..., lb: _Optional[_Union[LbPolicy, str]] = ..., hash_on: _Optional[str] = ..., session_affinity: _Optional[_Union[SessionAffinity, _Mapping]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., service: _Optional[_Union[ServiceSelector, _Mapping]] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., outlier_detection: _Optional[_Union[OutlierDetection, _Mapping]] = ..., timeouts: _Optional[_Union[Timeouts, _Mapping]] = ..., pool: _Optional[_Union[ConnectionPool, _Mapping]] = ..., policies: _Optional[_Iterable[str]] = ..., scheme: _Optional[str] = ..., tunnel: _Optional[str] = ..., tls: _Optional[_Union[UpstreamTls, _Mapping]] = ..., protocol: _Optional[str] = ...) -> None: ...

class UpstreamTls(_message.Message):
    __slots__ = ("sni", "ca", "verify", "certificate")
    SNI_FIELD_NUMBER: _ClassVar[int]
    CA_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    sni: str
    ca: str
    verify: bool
    certificate: str
    def __init__(self, sni: _Optional[str] = ..., ca: _Optional[str] = ..., verify: _Optional[bool] = ..., certificate: _Optional[str] = ...) -> None: ...

class WeightedCluster(_message.Message):
    __slots__ = ("name", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: int
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("attempts", "per_try_timeout_ms", "backoff_ms", "retry_on", "retry_non_idempotent")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PER_TRY_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    RETRY_NON_IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    per_try_timeout_ms: int
    backoff_ms: int
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    retry_non_idempotent: bool
    def __init__(self, attempts: _Optional[int] = ..., per_try_timeout_ms: _Optional[int] = ..., backoff_ms: _Optional[int] = ..., retry_on: _Optional[_Iterable[str]] = ..., retry_non_idempotent: _Optional[bool] = ...) -> None: ...

class GrayRule(_message.Message):
    __slots__ = ("headers", "cookies", "consumer_group", "version")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CookiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    COOKIES_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.ScalarMap[str, str]
    cookies: _containers.ScalarMap[str, str]
    consumer_group: str
    version: str
    def __init__(self, headers: _Optional[_Mapping[str, str]] = ..., cookies: _Optional[_Mapping[str, str]] = ..., consumer_group: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Grayscale(_message.Message):
    __slots__ = ("versions", "rules", "sticky_cookie", "sticky_ttl_ms", "sticky_hash")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    STICKY_COOKIE_FIELD_NUMBER: _ClassVar[int]
    STICKY_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    STICKY_HASH_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.ScalarMap[str, int]
    rules: _containers.RepeatedCompositeFieldContainer[GrayRule]
    sticky_cookie: str
    sticky_ttl_ms: int
    sticky_hash: str
    def __init__(self, versions: _Optional[_Mapping[str, int]] = ..., rules: _Optional[_Iterable[_Union[GrayRule, _Mapping]]] = ..., sticky_cookie: _Optional[str] = ..., sticky_ttl_ms: _Optional[int] = ..., sticky_hash: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "listener", "hosts", "path", "path_type", "methods", "headers", "cluster", "clusters", "priority", "policies", "timeout_ms", "retry", "prefix_rewrite", "host_rewrite", "grayscale", "grpc_web")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LISTENER_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PATH_TYPE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_REWRITE_FIELD_NUMBER: _ClassVar[int]
    HOST_REWRITE_FIELD_NUMBER: _ClassVar[int]
    GRAYSCALE_FIELD_NUMBER: _ClassVar[int]
    GRPC_WEB_FIELD_NUMBER: _ClassVar[int]
    name: str
    listener: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    path: str
    path_type: PathType
    methods: _containers.RepeatedScalarFieldContainer[str]
    headers: _containers.ScalarMap[str, str]
    cluster: str
    clusters: _containers.RepeatedCompositeFieldContainer[WeightedCluster]
    priority: int
    policies: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    retry: RetryPolicy
    prefix_rewrite: str
    host_rewrite: str
    grayscale: Grayscale
    grpc_web: bool
    def __init__(self, name: _Optional[str] = ..., listener: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ..., path: _Optional[str] = ..., path_type: _Optional[_Union[PathType, str]] = ..., methods: _Optional[_Iterable[str]] = ..., headers: _Optional[_Mapping[str, str]] = ..., cluster: _Optional[str] = ..., clusters: _Optional[_Iterable[_Union[WeightedCluster, _Mapping]]] = ..., priority: _Optional[int] = ..., policies: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., prefix_rewrite: _Optional[str] = ..., host_rewrite: _Optional[str] = ..., grayscale: _Optional[_Union[Grayscale, _Mapping]] = ..., grpc_web: _Optional[bool] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "type", "config", "is_global")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    IS_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    config: _struct_pb2.Struct
    is_global: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., is_global: _Optional[bool] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("type", "key_sha256", "issuer", "algorithm", "secret", "public_key", "username", "password_hash", "subject")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_HASH_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    type: str
    key_sha256: str
    issuer: str
    algorithm: str
    secret: str
    public_key: str
    username: str
    password_hash: str
    subject: str
    def __init__(self, type: _Optional[str] = ..., key_sha256: _Optional[str] = ..., issuer: _Optional[str] = ..., algorithm: _Optional[str] = ..., secret: _Optional[str] = ..., public_key: _Optional[str] = ..., username: _Optional[str] = ..., password_hash: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class Consumer(_message.Message):
    __slots__ = ("name", "groups", "credentials", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Certificate(_message.Message):
    __slots__ = ("name", "snis", "cert_pem", "key_pem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SNIS_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    snis: _containers.RepeatedScalarFieldContainer[str]
    cert_pem: str
    key_pem: str
    def __init__(self, name: _Optional[str] = ..., snis: _Optional[_Iterable[str]] = ..., cert_pem: _Optional[str] = ..., key_pem: _Optional[str] = ...) -> None: ...

class TunnelMapping(_message.Message):
    __slots__ = ("name", "agent", "type", "remote_port", "local_ip", "local_port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_IP_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent: str
    type: str
    remote_port: int
    local_ip: str
    local_port: int
    def __init__(self, name: _Optional[str] = ..., agent: _Optional[str] = ..., type: _Optional[str] = ..., remote_port: _Optional[int] = ..., local_ip: _Optional[str] = ..., local_port: _Optional[int] = ...) -> None: ...

class Tunnel(_message.Message):
    __slots__ = ("name", "node_group", "bind_port", "bind_address", "tokens", "allow_ports", "vhost_http_port", "vhost_https_port", "subdomain_host", "tls_force", "tls_certificate", "tls_client_ca_pem", "mappings", "heartbeat_timeout_ms", "users", "domains", "vhost_overrides_routes", "tcpmux_httpconnect_port", "tcpmux_passthrough")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_GROUP_FIELD_NUMBER: _ClassVar[int]
    BIND_PORT_FIELD_NUMBER: _ClassVar[int]
    BIND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PORTS_FIELD_NUMBER: _ClassVar[int]
    VHOST_HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    VHOST_HTTPS_PORT_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_HOST_FIELD_NUMBER: _ClassVar[int]
    TLS_FORCE_FIELD_NUMBER: _ClassVar[int]
    TLS_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TLS_CLIENT_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    VHOST_OVERRIDES_ROUTES_FIELD_NUMBER: _ClassVar[int]
    TCPMUX_HTTPCONNECT_PORT_FIELD_NUMBER: _ClassVar[int]
    TCPMUX_PASSTHROUGH_FIELD_NUMBER: _ClassVar[int]
    name: str
    node_group: str
    bind_port: int
    bind_address: str
    tokens: _containers.RepeatedScalarFieldContainer[str]
    allow_ports: str
    vhost_http_port: int
    vhost_https_port: int
    subdomain_host: str
    tls_force: bool
    tls_certificate: str
    tls_client_ca_pem: str
    mappings: _containers.RepeatedCompositeFieldContainer[TunnelMapping]
    heartbeat_timeout_ms: int
    users: _containers.RepeatedCompositeFieldContainer[TunnelUser]
    domains: _containers.RepeatedScalarFieldContainer[str]
    vhost_overrides_routes: bool
    tcpmux_httpconnect_port: int
    tcpmux_passthrough: bool
    def __init__(self, name: _Optional[str] = ..., node_group: _Optional[str] = ..., bind_port: _Optional[int] = ..., bind_address: _Optional[str] = ..., tokens: _Optional[_Iterable[str]] = ..., allow_ports: _Optional[str] = ..., vhost_http_port: _Optional[int] = ..., vhost_https_port: _Optional[int] = ..., subdomain_host: _Optional[str] = ..., tls_force: _Optional[bool] = ..., tls_certificate: _Optional[str] = ..., tls_client_ca_pem: _Optional[str] = ..., mappings: _Optional[_Iterable[_Union[TunnelMapping, _Mapping]]] = ..., heartbeat_timeout_ms: _Optional[int] = ..., users: _Optional[_Iterable[_Union[TunnelUser, _Mapping]]] = ..., domains: _Optional[_Iterable[str]] = ..., vhost_overrides_routes: _Optional[bool] = ..., tcpmux_httpconnect_port: _Optional[int] = ..., tcpmux_passthrough: _Optional[bool] = ...) -> None: ...

class TunnelUser(_message.Message):
    __slots__ = ("name", "token", "allow_ports", "domains", "max_proxies", "bandwidth_limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PORTS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROXIES_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    token: str
    allow_ports: str
    domains: _containers.RepeatedScalarFieldContainer[str]
    max_proxies: int
    bandwidth_limit: int
    def __init__(self, name: _Optional[str] = ..., token: _Optional[str] = ..., allow_ports: _Optional[str] = ..., domains: _Optional[_Iterable[str]] = ..., max_proxies: _Optional[int] = ..., bandwidth_limit: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "node_group", "listeners", "routes", "clusters", "policies", "consumers", "certificates", "tunnels")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_GROUP_FIELD_NUMBER: _ClassVar[int]
    LISTENERS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    TUNNELS_FIELD_NUMBER: _ClassVar[int]
    version: str
    node_group: str
    listeners: _containers.RepeatedCompositeFieldContainer[Listener]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    clusters: _containers.RepeatedCompositeFieldContainer[Cluster]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    consumers: _containers.RepeatedCompositeFieldContainer[Consumer]
    certificates: _containers.RepeatedCompositeFieldContainer[Certificate]
    tunnels: _containers.RepeatedCompositeFieldContainer[Tunnel]
    def __init__(self, version: _Optional[str] = ..., node_group: _Optional[str] = ..., listeners: _Optional[_Iterable[_Union[Listener, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., clusters: _Optional[_Iterable[_Union[Cluster, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., consumers: _Optional[_Iterable[_Union[Consumer, _Mapping]]] = ..., certificates: _Optional[_Iterable[_Union[Certificate, _Mapping]]] = ..., tunnels: _Optional[_Iterable[_Union[Tunnel, _Mapping]]] = ...) -> None: ...
