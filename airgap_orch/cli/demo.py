"""`airgap-orch demo`: the scenario in airgap_orch/demo.py, rendered for humans or as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..errors import OrchError
from .context import fail, json_option, settings


@click.command("demo")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to create the demo ledger (must not exist; default: a new temp dir).")
@json_option
def demo(ledger_path: Path | None) -> None:
    """Run the demo: two tenants, retries into the dead-letter queue, a worker killed mid-job and recovered."""
    from ..demo import run_demo

    root = click.get_current_context().find_root()
    if ledger_path is None and root.get_parameter_source("ledger_path") == ParameterSource.COMMANDLINE:
        ledger_path = settings().ledger_path  # `airgap-orch --ledger PATH demo` means the same
    if not settings().json:
        click.echo("running the demo (about 15 s): two workers, one of them killed with SIGKILL mid-job ...")
    try:
        result = run_demo(ledger_path, lock_timeout=max(settings().lock_timeout, 10.0))
    except OrchError as error:
        fail(error)
    if settings().json:
        click.echo(json.dumps(result, default=str))
    else:
        click.echo(render(result))


def render(result: dict[str, Any]) -> str:
    recovered = result["recovered_job"]
    worker_a, worker_b = result["workers"]["A"], result["workers"]["B"]
    lines = [
        f"ledger {result['ledger']} (site {result['site_id']}); handler output in {result['work_dir']}",
        f"{result['jobs_total']} jobs for {len(result['jobs_by_tenant'])} tenants. Worker A (pid {worker_a['pid']}) "
        f"was killed with SIGKILL {worker_a['killed_after_seconds']:.1f}s in, during job {recovered['job_id']}; "
        f"worker B recovered and finished the rest in {worker_b['recovery_seconds']:.1f}s.",
        "",
        "jobs by tenant and state:",
    ]
    for tenant, states in result["jobs_by_tenant"].items():
        lines.append(f"  {tenant:<12} " + "  ".join(f"{state} {count}" for state, count in states.items()))
    lines += ["", f"dead letters ({len(result['dead_letter'])}):"]
    for job in result["dead_letter"]:
        lines.append(f"  {job['job_id']}  {job['type']:<14} {job['tenant']:<10} attempts "
                     f"{job['attempts']}/{job['max_attempts']}  last error: {job['last_error']}")
    lines += ["", f"killed job {recovered['job_id']} ({recovered['type']}, {recovered['tenant']}): "
                  f"now {recovered['state']}"]
    for attempt in recovered["attempt_story"]:
        outcome = "requeued" if attempt["outcome"] == "queued" else attempt["outcome"]
        reason = f" ({attempt['reason']})" if attempt["reason"] else ""
        lines.append(f"  attempt {attempt['attempt']}: leased by {attempt['worker_id']} -> {outcome}{reason}")
    verify = result["verify"]
    lines += ["", f"ledger verify: {'ok' if verify['ok'] else 'FAILED'} ({verify['history_entries']} history "
                  f"entries, {verify['jobs']} jobs)", f"demo took {result['seconds']:.1f}s"]
    return "\n".join(lines)
