"""Sans-IO HTTP route matching for the data-plane node (no I/O, no trio)."""

from dataplane.routing.matcher import HeaderLookup, RouteMatcher, RouteRule

__all__ = ["HeaderLookup", "RouteMatcher", "RouteRule"]
