"""flux-tunnel: the intranet tunnel agent (frp-style)."""
