"""Command-line tools of the control plane (fluxctl)."""
