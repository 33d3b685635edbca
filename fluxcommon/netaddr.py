"""Host names, IP addresses and port ranges used in config, and host:port splitting.

Every side splits addresses here: `split_host_port` for config and command-line addresses
(defaults, range check, ValueError), `host_of` for the host of a Host header or an address
with an optional port, `parse_peer` for socket peers as the tunnel writes them ("[v6]:port").
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: str) -> bool:
    """RFC 1123 host name (letters, digits, hyphens; dot-separated labels)."""
    if not text or len(text) > 253:
        return False
    labels = text.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):  # looks like a broken IPv4 address
        return False
    return all(_LABEL.match(label) for label in labels)


def check_address(text: str) -> str:
    """`text` if it is an IP address or a host name; ValueError otherwise."""
    if is_ip(text) or is_hostname(text):
        return text
    raise ValueError(f"{text!r} is neither an IP address nor a host name")


def check_host_pattern(text: str) -> str:
    """A route host: a host name, an IP, or a `*.` wildcard; lower-cased."""
    host = text.strip().lower()
    bare = host[2:] if host.startswith("*.") else host
    if ":" in bare and not is_ip(bare):
        raise ValueError(f"host {text!r} must not carry a port")
    if is_ip(bare) and not host.startswith("*."):
        return host
    if not is_hostname(bare):
        raise ValueError(f"{text!r} is not a host name or a '*.' wildcard")
    return host


def parse_port_ranges(text: str) -> list[tuple[int, int]]:
    """ "6000-6999,7001" -> [(6000, 6999), (7001, 7001)]; ValueError when malformed."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, _, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if hi_text else lo
        except ValueError:
            raise ValueError(f"bad port range {part!r}: use '6000-6999' or '7001'") from None
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"bad port range {part!r}: ports are 1-65535, low before high")
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError("empty port range")
    return ranges


def port_in_ranges(port: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """ "127.0.0.1:80" / "[::1]:80" / ":80" / "host" -> (host, port); ValueError when malformed."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise ValueError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:  # bare IPv6 without a port
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    host = host or "0.0.0.0"
    if not port_text:
        if default_port is None:
            raise ValueError(f"address {text!r} needs a port (HOST:PORT)")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def host_of(text: str) -> str:
    """The host of "HOST[:PORT]": "[::1]:80" / "[::1]" -> "::1", "10.0.0.1:80" -> "10.0.0.1",
    "name:80" -> "name"; text with no port or several ':' (a bare IPv6 address) is the host.
    Never raises; the port, if any, is not checked."""
    if text.startswith("["):
        return text[1:].partition("]")[0]
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text


def parse_peer(text: str) -> tuple[str, int] | None:
    """(host, port) of a peer address as sockets and tunnel messages write it ("10.0.0.7:5000",
    "[::1]:5000": the last ':' splits, brackets dropped), or None when there is no ':' or the port
    is no number. Never raises; unlike `split_host_port` it has no defaults and no range check."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None
