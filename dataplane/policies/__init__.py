"""Traffic policies: the chain, authentication, access control, CORS, rate limits, circuit breaking."""
