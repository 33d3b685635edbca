"""The node's side of the config stream: gRPC client and the on-disk snapshot cache."""
