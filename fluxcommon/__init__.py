"""Small helpers shared by the control plane, the node and the tunnel agent.

Nothing here does I/O; everything is safe to import from any process.
"""
