"""The package version, for every command's `--version` (from the installed metadata)."""

from __future__ import annotations

import platform
from importlib import metadata

DISTRIBUTION = "flux-gateway"


def package_version() -> str:
    """The installed flux-gateway version (pyproject.toml's), or "unknown" when not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_text(prog: str, extra: str = "") -> str:
    """What `PROG --version` prints (`extra`: more of what the command speaks, e.g. its protocol)."""
    more = f"; {extra}" if extra else ""
    return f"{prog} {package_version()} (FLUX Gateway; Python {platform.python_version()}{more})"
