"""The trio transport of the tunnel protocol (`fluxcommon.tunnel.protocol`).

- `link`: `TunnelLink`, a mux and a session driven over one stream (reader, writer, ticker).
- `pipe`: bytes both ways between two streams, through a proxy's optional crypto.
- `sockstream`: `BulkSocketStream`, gathered sends and `receive_into` on a socket.
- `tlsstream`: `TLSStream`, TLS on memory BIOs with record-sized writes.
- `prefixed`: `PrefixedStream`, a stream with bytes already read given back first.
- `gate`: `SendGate`, the lock that parks only when held.
- `readbuffer`: `ReadBuffer`, one adaptive receive buffer per connection.
"""
