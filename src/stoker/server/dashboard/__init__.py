"""The web dashboard: server-rendered pages at / (jobs), /jobs/{id}, /queues, /nodes, /usage."""

from stoker.server.dashboard.routes import dashboard_routes

__all__ = ["dashboard_routes"]
