"""`stoker server`: run the control plane (API, scheduler, executor: local or Ray)."""

from __future__ import annotations

from pathlib import Path

import typer

from stoker.spec.api import DEFAULT_PORT


def server(
    config: Path | None = typer.Option(None, "--config", help="Cluster config (cluster.toml); "
                                       "default: this machine, one queue, one tenant."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on."),
    db: str | None = typer.Option(None, "--db", envvar="STOKER_DB",
                                  help="Database URL: sqlite:///PATH or "
                                  "postgresql+psycopg://USER@HOST:PORT/DB (default: the "
                                  "config's [store] url, else sqlite:///STATE_DIR/stoker.db). "
                                  "On PostgreSQL every server competes for the leader lease; "
                                  "the others stand by."),
    state_dir: Path = typer.Option(Path("runs/stoker-server"), "--state-dir",
                                   envvar="STOKER_STATE_DIR",
                                   help="Jobs' directories, logs and the default database."),
    interval: float | None = typer.Option(None, "--interval", help="Seconds between scheduling "
                                          "cycles (default: the config's scheduler.interval)."),
    grace_period: float = typer.Option(30.0, "--grace-period",
                                       help="Seconds between SIGTERM and SIGKILL on preemption."),
    failure_grace: float = typer.Option(3.0, "--failure-grace",
                                        help="Seconds between SIGTERM and SIGKILL for the other "
                                        "ranks of a gang after one failed or hung."),
    backoff: float = typer.Option(5.0, "--backoff", help="First restart delay of a failed job "
                                  "(doubles each restart)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Start training jobs with --resume auto."),
    single_trust: bool = typer.Option(False, "--single-trust", help="Run several tenants' "
                                      "jobs without isolation when the host offers none "
                                      "(as isolation.single_trust = true)."),
    ray_address: str | None = typer.Option(None, "--ray-address", envvar="STOKER_RAY_ADDRESS",
                                           help="Ray cluster to run jobs on: auto, "
                                           "ray://HOST:PORT or HOST:PORT (overrides the "
                                           "config's ray.address; needs executor = \"ray\")."),
) -> None:
    """Serve the API on HOST:PORT (OpenAPI docs at /docs, Prometheus at /metrics).

    Tokens: the admin's from $STOKER_ADMIN_TOKEN (or the config's [admin]), each tenant's as
    its config says. Killing the server leaves running jobs running; the next start adopts them.
    Several servers on one PostgreSQL database (and one state directory): one leads, the others
    serve the API and take over when it dies.
    """
    from stoker.server.main import serve
    from stoker.spec import loading
    from stoker.spec.api import ServerSettings

    settings = loading.validate(ServerSettings, {
        "host": host, "port": port, "config": str(config) if config else None, "db": db,
        "state_dir": str(state_dir), "interval": interval, "grace_period": grace_period,
        "failure_grace": failure_grace, "backoff_base": backoff, "resume": resume,
        "single_trust": single_trust, "ray_address": ray_address}, "stoker server")
    serve(settings)


def register(app: typer.Typer) -> None:
    """Add `stoker server` to the top-level app."""
    app.command("server")(server)
