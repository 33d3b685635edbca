"""FLUX Gateway control plane: REST API, config store and the discovery server."""
