"""The xDS-like config stream: snapshot cache, node status, gRPC servicer and
the watcher that notices new versions (local writes or another control plane's)."""
