"""The node's tunnel server (frp-style): agents, their proxies, and what users reach them by."""
