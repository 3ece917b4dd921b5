"""`airgap-orch demo`: the scenario in airgap_orch/demo.py, rendered for humans or as one JSON object.

For humans, the steps are narrated on stderr as they happen and the summary goes to stdout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..demo_airgap import describe as describe_airgap
from ..errors import OrchError
from .context import fail, json_option, settings


@click.command("demo")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to create the demo ledger (must not exist); its logs and output are kept beside it.")
@click.option("--workdir", "work_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep every file of the demo here (a new or empty directory). Without it or --ledger, the "
                   "demo works in a temporary directory and removes it when it succeeds.")
@json_option
def demo(ledger_path: Path | None, work_dir: Path | None) -> None:
    """Run the demo: a server subprocess, SDK workers over loopback, retries into the dead-letter queue, and a
    worker killed mid-job whose job is recovered; then the site's state crosses an air gap in a full and an
    incremental bundle that hands pending jobs over, verified offline, planned and imported at a second site."""
    from ..demo import run_demo

    root = click.get_current_context().find_root()
    if ledger_path is None and root.get_parameter_source("ledger_path") == ParameterSource.COMMANDLINE:
        ledger_path = settings().ledger_path  # `airgap-orch --ledger PATH demo` means the same
    started = time.monotonic()
    header = ["running the demo (about 25 s): a server, two SDK workers, one of them killed with SIGKILL mid-job; "
              "then the site's state crosses an air gap in two signed bundles"]

    def narrate(line: str) -> None:  # the header waits for the first step: a refused path prints one line
        while header:
            click.echo(header.pop(), err=True)
        click.echo(f"  {time.monotonic() - started:5.1f}s  {line}", err=True)

    try:
        result = run_demo(ledger_path, work_dir=work_dir, lock_timeout=max(settings().lock_timeout, 10.0),
                          on_step=None if settings().json else narrate)
    except OrchError as error:
        fail(error)
    if settings().json:
        click.echo(json.dumps(result, default=str))
    else:
        click.echo(render(result))


def render(result: dict[str, Any]) -> str:
    recovered = result["recovered_job"]
    worker_a, worker_b = result["workers"]["A"], result["workers"]["B"]
    server = result["server"]
    seconds = worker_b["lease_recovered_after_seconds"]
    recovered_after = "" if seconds is None else f" {seconds:.1f}s after the kill"
    where = (f"handler output and logs in {result['work_dir']}" if result["files_kept"] else
             "its files were in a temporary directory, now removed (--workdir DIR keeps them)")
    lines = [
        f"ledger {result['ledger']} (site {result['site_id']}); {where}",
        f"server {server['url']} (pid {server['pid']}) owned the ledger; the demo enqueued and watched over HTTP, "
        f"the workers ran as SDK workers against it, and it stopped on SIGTERM (exit {server['exit_code']}).",
        f"{result['jobs_total']} jobs for {len(result['jobs_by_tenant'])} tenants. Worker A (pid {worker_a['pid']}) "
        f"was killed with SIGKILL {worker_a['killed_after_seconds']:.1f}s in, during job {recovered['job_id']}; "
        f"the server recovered its lease{recovered_after} and worker B (pid {worker_b['pid']}) finished the rest "
        f"{worker_b['recovery_seconds']:.1f}s after the kill, then stopped on SIGTERM.",
        "",
        "jobs by tenant and state:",
    ]
    for tenant, states in result["jobs_by_tenant"].items():
        lines.append(f"  {tenant:<12} " + "  ".join(f"{state} {count}" for state, count in states.items()))
    lines += ["", f"dead letters ({len(result['dead_letter'])}):"]
    for job in result["dead_letter"]:
        lines.append(f"  {job['job_id']}  {job['type']:<14} {job['tenant']:<10} attempts "
                     f"{job['attempts']}/{job['max_attempts']}  last error: {job['last_error']}")
    flow = result["flow_control"]
    limit = flow["concurrency_limit"]
    lines += ["", f"flow control: concurrency limit {limit['key']} max {limit['max']}; the most held at once, "
                  f"replayed from the event stream: {limit['peak_from_history']}. Reports that depended on the "
                  "exports:"]
    for job in flow["dependents"]:
        lines.append(f"  {job['job_id']}  {job['tenant']:<10} waited on {', '.join(job['depends_on'])}: "
                     f"{job['state']} ({job['reason']})")
    lines += ["", f"killed job {recovered['job_id']} ({recovered['type']}, {recovered['tenant']}): "
                  f"now {recovered['state']}"]
    for attempt in recovered["attempt_story"]:
        outcome = "requeued" if attempt["outcome"] == "queued" else attempt["outcome"]
        reason = f" ({attempt['reason']})" if attempt["reason"] else ""
        lines.append(f"  attempt {attempt['attempt']}: leased by {attempt['worker_id']} -> {outcome}{reason}")
    lines += describe_airgap(result["airgap"])
    verify = result["verify"]
    lines += ["", f"ledger verify: {'ok' if verify['ok'] else 'FAILED'} ({verify['history_entries']} history "
                  f"entries, {verify['jobs']} jobs, before the air-gap act)",
              f"demo took {result['total_seconds']:.1f}s ({result['seconds']:.1f}s before the air-gap act)"]
    return "\n".join(lines)
