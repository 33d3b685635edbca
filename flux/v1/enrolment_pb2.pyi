from flux.v1 import discovery_pb2 as _discovery_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token_id", "token_secret", "node", "csr_pem")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SECRET_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    token_secret: str
    node: _discovery_pb2.Node
    csr_pem: str
    def __init__(self, token_id: _Optional[str] = ..., token_secret: _Optional[str] = ..., node: _Optional[_Union[_discovery_pb2.Node, _Mapping]] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate_chain_pem", "ca_pem", "node_group", "not_after")
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_GROUP_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    certificate_chain_pem: str
    ca_pem: str
    node_group: str
    not_after: int
    def __init__(self, certificate_chain_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., node_group: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class RenewCertificateResponse(_message.Message):
    __slots__ = ("certificate_chain_pem", "ca_pem", "node_group", "not_after")
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_GROUP_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    certificate_chain_pem: str
    ca_pem: str
    node_group: str
    not_after: int
    def __init__(self, certificate_chain_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., node_group: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...
