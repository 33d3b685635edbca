"""TLS in the node: server contexts chosen by SNI (https listeners), client contexts for TLS
to upstreams, a TLS socket for the reactor, and client-certificate identities."""
