"""Upstream side of the proxy: connection pools."""
