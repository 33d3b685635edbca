"""Resource shapes of the external contract (REST bodies and `fluxctl apply` YAML).

Each kind is a pydantic model that validates one resource on its own; checks
that span resources (references, port conflicts) live in `controlplane.validation`.
"""

from controlplane.spec.certificate import CertificateSpec
from controlplane.spec.cluster import ClusterSpec, EndpointSpec
from controlplane.spec.configset import KINDS, ConfigSet, Kind, ResourceSpec
from controlplane.spec.consumer import ConsumerSpec
from controlplane.spec.listener import ListenerSpec
from controlplane.spec.policy import PolicySpec
from controlplane.spec.route import RouteSpec
from controlplane.spec.tunnel import TunnelSpec

__all__ = [
    "KINDS",
    "CertificateSpec",
    "ClusterSpec",
    "ConfigSet",
    "ConsumerSpec",
    "EndpointSpec",
    "Kind",
    "ListenerSpec",
    "PolicySpec",
    "ResourceSpec",
    "RouteSpec",
    "TunnelSpec",
]
