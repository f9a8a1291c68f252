"""The FastAPI app: REST API, web dashboard and Prometheus /metrics."""
