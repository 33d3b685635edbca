"""A ready `flux-tunnel` config (frpc.toml field names) for one user of a tunnel.

`render(tunnel, user, servers, certificate)` returns the TOML text and, when the tunnel has a
`tls.certificate`, the PEM to write beside it as `transport.tls.trustedCaFile` (the
certificate chain the node presents; the agent trusts any certificate of that file, so a
leaf certificate pins the node). It holds the user's token: the REST endpoint that serves it
(controlplane.api.tunnel_agent_config) is admin only, and `fluxctl tunnels agent-config`
writes it with mode 0600.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from controlplane.spec.certificate import CertificateSpec
from controlplane.spec.tunnel import TunnelSpec, TunnelUserSpec
from fluxcommon.netaddr import host_of

_ANY = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class AgentConfigText:
    config: str
    ca_file: str  # "" when the tunnel has no certificate of its own
    ca_pem: str


def default_servers(tunnel: TunnelSpec, node_addresses: list[str]) -> list[str]:
    """Where agents reach the tunnel's nodes, when no server was given: its bind address when it
    is a specific one, else the addresses the control plane sees its group's nodes at."""
    if tunnel.bind_address not in _ANY:
        return [tunnel.bind_address]
    return sorted(dict.fromkeys(_host_of(a) for a in node_addresses if _host_of(a)))


def _host_of(peer: str) -> str:
    """ "ipv4:10.0.0.7:51234" / "ipv6:[::1]:5" / "10.0.0.7:51234" -> the host."""
    return host_of(peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer)


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _names(cert_pem: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the leaf certificate of a PEM chain."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _matches(host: str, dns: list[str], ips: list[str]) -> bool:
    try:
        return str(ipaddress.ip_address(host)) in ips
    except ValueError:
        pass
    host = host.lower()
    for name in dns:
        name = name.lower()
        if name == host or (name.startswith("*.") and host.endswith(name[1:]) and "." not in host[: -len(name) + 1]):
            return True
    return False


def render(
    tunnel: TunnelSpec, user: TunnelUserSpec, servers: list[str], certificate: CertificateSpec | None
) -> AgentConfigText:
    """The agent config of `user` (see the module docstring); `servers[0]` is "HOST" or "HOST:PORT"."""
    if not servers:
        raise ValueError("server: no address to reach the tunnel's nodes at; give one (fluxctl --server HOST)")
    host, port = servers[0], tunnel.bind_port
    if host.count(":") == 1 or host.startswith("["):
        name, _, port_text = host.rpartition(":")
        if port_text.isdigit():
            host, port = name.strip("[]"), int(port_text)
    lines = [
        f"# flux-tunnel config for user {user.name!r} of tunnel {tunnel.name!r} (fluxctl tunnels agent-config).",
        "# It holds the user's token: keep it private (mode 0600).",
        f"serverAddr = {_q(host)}",
        f"serverPort = {port}",
    ]
    lines += [f"# or serverAddr = {_q(other)}  (another node of group {tunnel.node_group!r})" for other in servers[1:]]
    lines += [
        f"user = {_q(user.name)}                 # proxies register as {user.name}.NAME",
        f"auth.token = {_q(user.token)}",
        "",
        "transport.tls.enable = true",
    ]
    ca_file, ca_pem = "", ""
    if certificate is not None:
        ca_file, ca_pem = f"{tunnel.name}-ca.pem", certificate.cert.strip() + "\n"
        lines.append(f"transport.tls.trustedCaFile = {_q(ca_file)}   # the node's certificate chain: verified")
        dns, ips = _names(certificate.cert)
        if not _matches(host, dns, ips) and dns:
            lines.append(
                f"transport.tls.serverName = {_q(dns[0].replace('*.', 'agent.'))}  # a name the node's certificate has"
            )
    else:
        lines += [
            "# The tunnel has no tls.certificate: each node presents a self-signed one, which the agent",
            "# cannot verify. The login is still bound to the TLS connection (a relay without the token",
            "# fails), but give the tunnel a certificate to verify the node as well.",
        ]
    if tunnel.tls.client_ca:
        lines += [
            "# This tunnel requires a client certificate signed by its client_ca:",
            '# transport.tls.certFile = "client.crt"',
            '# transport.tls.keyFile = "client.key"',
        ]
    domains = ", ".join(user.domains) or "none"
    ports = user.allow_ports or tunnel.allow_ports
    lines += [
        "",
        f"# Allowed for {user.name!r}: remote ports {ports}; domains {domains}"
        + (f"; at most {user.max_proxies} proxies" if user.max_proxies else "")
        + ".",
        "# [[proxies]]",
        '# name = "ssh"',
        '# type = "tcp"',
        "# localPort = 22",
        f"# remotePort = {_first_port(ports)}",
    ]
    return AgentConfigText("\n".join(lines) + "\n", ca_file, ca_pem)


def _first_port(ranges: str) -> int:
    first = ranges.split(",")[0].strip().partition("-")[0]
    return int(first) if first.isdigit() else 0
