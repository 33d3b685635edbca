"""One path segment of a REST URL from what a user typed (a resource name, a node id)."""

from __future__ import annotations

from urllib.parse import quote


def segment(name: str) -> str:
    """`name` percent-encoded as one segment: a '/' cannot reach another path, and '.' and '..'
    (dot segments, which the HTTP client resolves) reach the API as names, which it refuses."""
    if name in (".", ".."):
        return name.replace(".", "%2E")
    return quote(name, safe="")
