"""The tunnel between nodes and `flux-tunnel` agents, in two layers a reader can see:

- `fluxcommon.tunnel.protocol`: the wire protocol (framing, mux, control messages, login,
  payload crypto, proxy options). Sans-IO: bytes and events in and out, time passed in.
- `fluxcommon.tunnel.transport`: the trio shell that carries it over a socket or TLS stream
  (`TunnelLink`, the byte pipe, bulk socket and TLS streams, the send gate, read buffers).

The protocol imports nothing from the transport, nor any I/O library; tests/test_layers.py
(import-linter contracts in pyproject.toml) keeps it so.
"""
