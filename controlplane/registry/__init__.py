"""The service registry: services and instances, heartbeats and TTLs, health checks, discovery, external registries."""
