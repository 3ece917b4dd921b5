"""`airgap-orch worker run`: run handlers on the ledger in this process (airgap_orch/worker/), or, when a
server owns the ledger or --server names one, as an SDK worker against that server (airgap_orch/sdk/)."""

from __future__ import annotations

import os
import socket
import sys

import click

from .. import validation
from ..errors import InvalidInput
from . import job_logs
from .context import command, settings
from .job_logs import job_log_options


@click.group("worker")
def group() -> None:
    """Run job handlers in this process."""


def _print_finished(finished) -> None:
    note = f"  {finished.error}" if finished.error and finished.outcome != "succeeded" else ""
    click.echo(f"{finished.outcome:<11} {finished.job_id}  {finished.type:<18} {finished.tenant:<12} "
               f"attempt {finished.attempt}  {finished.seconds:.2f}s{note}")


@command(group, "run")
@click.option("--handler", "handlers", multiple=True, required=True, metavar="JOBTYPE=module:function",
              help="A handler for one job type (repeatable).")
@click.option("--worker-id", help="This worker's id (default: HOST-PID).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Handlers running at once.")
@click.option("--lease-seconds", type=float, default=validation.DEFAULT_LEASE_SECONDS, show_default=True,
              help="Lease length; heartbeats renew it every third of it.")
@click.option("--queue", help="Only claim jobs from this queue.")
@click.option("--max-jobs", type=click.IntRange(min=1), help="Stop after this many finished jobs.")
@click.option("--exit-when-idle", is_flag=True,
              help="Exit once no job of a handled type is queued, leased or running.")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="On SIGTERM/SIGINT, wait this long for running handlers before releasing their jobs.")
@job_log_options
def run(handlers: tuple[str, ...], worker_id: str | None, concurrency: int, lease_seconds: float,
        queue: str | None, max_jobs: int | None, exit_when_idle: bool, grace_seconds: float, job_log_lines: int,
        job_log_retention: str) -> dict:
    """Claim jobs and run their handlers until stopped (SIGTERM/SIGINT), idle, or --max-jobs are done. The
    --job-log-* bounds apply to a ledger this process opens (a server applies its own)."""
    from ..worker import Runner, RunnerConfig, load_handlers  # here: keeps other commands free of DuckDB

    config = RunnerConfig(handlers=load_handlers(handlers),
                          worker_id=worker_id or f"{socket.gethostname()}-{os.getpid()}",
                          concurrency=concurrency, lease_seconds=lease_seconds, queue=queue, max_jobs=max_jobs,
                          exit_when_idle=exit_when_idle, grace_seconds=grace_seconds,
                          job_log_limits=job_logs.limits(job_log_lines, job_log_retention))
    current = settings()
    url = current.server()
    if url is not None:  # a server owns the ledger (or --server names one): work through it
        if max_jobs is not None or exit_when_idle:
            raise InvalidInput(f"--max-jobs and --exit-when-idle apply to a ledger this process opens; the "
                               f"server at {url} owns this one: stop the worker with SIGTERM instead")
        from ..sdk import Worker

        worker = Worker(url, current.token, worker_id=config.worker_id, concurrency=concurrency,
                        lease_seconds=lease_seconds, queue=queue, grace_seconds=grace_seconds)
        for job_type, function in config.handlers.items():
            worker.add_handler(job_type, function)
        return worker.run()
    chatty = sys.stdout.isatty() and not current.json
    with current.open_ledger() as ledger:
        return Runner(ledger, config, on_finished=_print_finished if chatty else None).run()
