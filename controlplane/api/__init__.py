"""FastAPI application of the control plane (REST under /api/v1, /healthz, /metrics)."""
