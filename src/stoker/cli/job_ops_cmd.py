"""Slurm's ``scontrol`` habits on a Stoker server: `stoker hold | release | requeue`.

The priority of a job is changed with ``stoker job N --priority CLASS``. Each is allowed to
the job's owner and to the admin (whose actions on others' jobs are audited).
"""

from __future__ import annotations

import typer

from stoker.cli.jobs_cmd import SERVER_OPT, TOKEN_OPT, _client, _state, console

REASON_OPT = typer.Option("", "--reason", help="Why (kept in the job's events).")


def hold(
    job_ids: list[int] = typer.Argument(..., help="Job ids."),
    reason: str = REASON_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Keep queued jobs from being scheduled until `stoker release` (survives restarts)."""
    with _client(server, token) as client:
        for job_id in job_ids:
            j = client.hold(job_id, reason)
            console.print(f"job {job_id}: {_state(j['state'])}, held")


def release(
    job_ids: list[int] = typer.Argument(..., help="Job ids."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Let held jobs be scheduled again."""
    with _client(server, token) as client:
        for job_id in job_ids:
            j = client.release(job_id)
            console.print(f"job {job_id}: {_state(j['state'])}, released")


def requeue(
    job_ids: list[int] = typer.Argument(..., help="Job ids."),
    hold_: bool = typer.Option(False, "--hold", help="Hold it once it is back in the queue "
                               "(Slurm's requeuehold)."),
    reason: str = REASON_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Stop admitted or running jobs as a preemption does (checkpoints kept, no restart
    counted) and put them back in the queue."""
    with _client(server, token) as client:
        for job_id in job_ids:
            client.requeue(job_id, reason, hold_)
            console.print(f"job {job_id}: requeueing (processes are stopping)"
                          + (", then held" if hold_ else ""))


def register(app: typer.Typer) -> None:
    for command in (hold, release, requeue):
        app.command(command.__name__)(command)
