"""`airgap-orch jobs ...`: producers, workers and operators on single jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import click

from .. import api, validation
from ..errors import InvalidInput, LedgerBusy, OrchError
from .context import command, invoke, settings
from .output import log_line
from .paging import invoke_listing

MAX_INPUT_FILE_BYTES = 64 * 1024 * 1024
LOCAL_FOLLOW_SECONDS = 0.5  # `jobs logs --follow` without a server reads the ledger this often


@click.group("jobs")
def group() -> None:
    """Enqueue, lease, report on and inspect jobs."""


def _read_file(path: str, what: str) -> str:
    """A UTF-8 file's text, read up to the size limit (also for files whose size stat() cannot tell, such as
    FIFOs and devices)."""
    if not path:
        raise InvalidInput(f"{what} file name is missing; name a file")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_INPUT_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} file {path}: {exc.strerror}; name a readable file") from None
    if len(data) > MAX_INPUT_FILE_BYTES:
        raise InvalidInput(f"{what} file {path} is over the limit of {MAX_INPUT_FILE_BYTES} bytes; split it or "
                           "store large inputs as files and pass their URI")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _payload(value: str | None) -> Any:
    if value is None:
        return {}
    text = _read_file(value[1:], "payload") if value.startswith("@") else value
    return validation.parse_json(text, "--payload", hint="pass a JSON document or @FILE")


def _batch(path: str) -> tuple[list[Any], list[int]]:
    """The job specs of a JSON Lines file, and the line each came from (blank lines are skipped)."""
    specs, lines = [], []
    for number, line in enumerate(_read_file(path, "batch").splitlines(), 1):
        if line.strip():
            specs.append(validation.parse_json(line, f"{path} line {number}",
                                               hint="write one JSON object per line"))
            lines.append(number)
    if not specs:
        raise InvalidInput(f"batch file {path} has no job specs; write one JSON object per line")
    return specs, lines


def _enqueue_batch(path: str) -> dict[str, Any]:
    specs, lines = _batch(path)
    try:
        return invoke("jobs.enqueue_batch", {"jobs": specs})
    except OrchError as error:  # the error's index counts specs (locally and from a server): name the file's line
        if error.index is None or not 0 <= error.index < len(lines):
            raise
        raise type(error)(f"{path} line {lines[error.index]}: {error}", index=error.index,
                          field=error.field) from None


@command(group, "enqueue")
@click.option("--tenant", help="The tenant the job belongs to (required unless --batch).")
@click.option("--project", help="The tenant's project (required unless --batch).")
@click.option("--type", "job_type", help="Job type, which picks the handler, e.g. advisory.ingest (required unless "
              "--batch).")
@click.option("--queue", help="Queue (default: default).")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--payload", help="JSON, or @FILE to read it from a file.")
@click.option("--idempotency-key", help="Enqueueing the same spec under this key again returns the same job "
              "(a different spec under it is refused).")
@click.option("--run-at", help="ISO 8601 time before which the job is not claimed.")
@click.option("--max-attempts", type=int, help="Attempts before the job is dead-lettered (default 3).")
@click.option("--timeout-seconds", type=int, help="An attempt running longer than this ends timed out.")
@click.option("--correlation-id", help="Ties related jobs and events together.")
@click.option("--key", "keys", multiple=True,
              help="A key flow control counts the job under, e.g. host:nvd.nist.gov (repeatable).")
@click.option("--depends-on", multiple=True,
              help="A parent job id: this job runs only after every parent succeeded (repeatable).")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False),
              help="JSON Lines file of job specs, enqueued in one transaction.")
def enqueue(batch_file: str | None, **fields: Any) -> dict:
    """Add a job (or a batch of jobs). The same idempotency key with the same spec returns the existing job;
    with another spec it is refused (exit 3)."""
    if batch_file is not None:
        if any(value not in (None, ()) for value in fields.values()):
            raise click.UsageError("--batch takes every field from the file; drop the other options")
        return _enqueue_batch(batch_file)
    spec = {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()
            if value not in (None, ()) and key != "job_type"}
    if fields["job_type"] is not None:
        spec["type"] = fields["job_type"]
    spec["payload"] = _payload(fields["payload"])
    missing = [flag for flag, key in (("--tenant", "tenant"), ("--project", "project"), ("--type", "type"))
               if key not in spec]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use --batch FILE)")
    return invoke("jobs.enqueue", {"spec": spec})


@command(group, "claim")
@click.option("--worker-id", help="This worker's id, recorded with each lease (required).")
@click.option("--worker", "worker_alias", hidden=True)  # the old name, kept so existing scripts keep working
@click.option("--queue", help="Only jobs of this queue.")
@click.option("--type", "job_type", help="Only jobs of this type.")
@click.option("--limit", type=int, default=1, show_default=True,
              help=f"Jobs to lease at most (1 to {validation.MAX_CLAIM_LIMIT:,}).")
@click.option("--lease-seconds", type=float, default=validation.DEFAULT_LEASE_SECONDS, show_default=True,
              help=f"Lease duration ({validation.MIN_LEASE_SECONDS:g} to {validation.MAX_LEASE_SECONDS:g} s); "
                   "heartbeats extend it.")
def claim(worker_id: str | None, worker_alias: str | None, queue: str | None, job_type: str | None, limit: int,
          lease_seconds: float) -> dict:
    """Lease up to LIMIT ready jobs, each under a fresh lease id."""
    if worker_id and worker_alias and worker_id != worker_alias:
        raise click.UsageError("--worker is the old name of --worker-id; give one of them")
    worker_id = worker_id or worker_alias
    if not worker_id:
        raise click.UsageError("missing option '--worker-id'")
    return invoke("jobs.claim", {"worker_id": worker_id, "limit": limit, "lease_seconds": lease_seconds,
                                 "queue": queue, "type": job_type})


@command(group, "heartbeat")
@click.argument("job_id")
@click.option("--lease", "lease_id", required=True, help="The lease id the claim answered.")
@click.option("--progress", type=float, help="Fraction done, 0 to 1.")
@click.option("--message", help=f"What the job is doing (at most {validation.MAX_MESSAGE_CHARS:,} characters).")
@click.option("--log", "log_lines", multiple=True,
              help=f"A line for the job's log (repeatable, at most {validation.MAX_LOG_LINES} of "
                   f"{validation.MAX_LOG_LINE_CHARS:,} characters).")
def heartbeat(job_id: str, lease_id: str, progress: float | None, message: str | None,
              log_lines: tuple[str, ...]) -> dict:
    """Extend a lease and report progress; answers whether cancellation was requested."""
    return invoke("jobs.heartbeat", {"job_id": job_id, "lease_id": lease_id, "progress": progress,
                                     "message": message, "logs": [{"message": line} for line in log_lines] or None})


@command(group, "ack")
@click.argument("job_id")
@click.option("--lease", "lease_id", required=True, help="The lease id the claim answered.")
@click.option("--artifact", "artifacts", multiple=True, help="URI,DIGEST,MIME (repeatable).")
def ack(job_id: str, lease_id: str, artifacts: tuple[str, ...]) -> dict:
    """Complete a job under its current lease."""
    parsed = [validation.artifact_from_text(text) for text in artifacts]
    return invoke("jobs.ack", {"job_id": job_id, "lease_id": lease_id, "artifacts": parsed})


@command(group, "fail")
@click.argument("job_id")
@click.option("--lease", "lease_id", required=True, help="The lease id the claim answered.")
@click.option("--error", required=True, help=f"What went wrong (at most {validation.MAX_ERROR_CHARS:,} characters).")
@click.option("--retry-after", type=float, help="Seconds before the retry (overrides backoff).")
@click.option("--no-retry", is_flag=True, help="Fail for good instead of retrying.")
def fail(job_id: str, lease_id: str, error: str, retry_after: float | None, no_retry: bool) -> dict:
    """Report a failed attempt: retried with backoff, dead-lettered when attempts run out."""
    return invoke("jobs.fail", {"job_id": job_id, "lease_id": lease_id, "error": error,
                                "retry_after": retry_after, "no_retry": no_retry})


@command(group, "cancel")
@click.argument("job_id")
@click.option("--reason", required=True)
def cancel(job_id: str, reason: str) -> dict:
    """Cancel a queued job, or ask the worker of a running one to stop."""
    return invoke("jobs.cancel", {"job_id": job_id, "reason": reason})


@command(group, "list")
@click.option("--state")
@click.option("--tenant")
@click.option("--type", "job_type")
@click.option("--project")
@click.option("--queue")
@click.option("--limit", type=int, default=1000, show_default=True,
              help="Jobs to list at most (1 to 100,000), read a page at a time.")
def list_(state: str | None, tenant: str | None, job_type: str | None, project: str | None, queue: str | None,
          limit: int) -> dict:
    """Jobs, oldest first."""
    return invoke_listing("jobs.list", {"state": state, "tenant": tenant, "type": job_type, "project": project,
                                        "queue": queue}, limit)


@command(group, "throttled")
@click.option("--limit", type=int, default=1000, show_default=True,
              help="Queued jobs to look at most (1 to 100,000), read a page at a time.")
def throttled(limit: int) -> dict:
    """Queued jobs a limit holds back now, oldest first, each with what holds it back and until when."""
    return invoke_listing("jobs.throttled", {}, limit)


@command(group, "show")
@click.argument("job_id")
def show(job_id: str) -> dict:
    """One job with its full history."""
    return invoke("jobs.show", {"job_id": job_id})


@command(group, "logs")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True,
              help="Print lines as they are stored, until the job ends (through the server that owns the ledger; "
                   "locally by reading the ledger every half second).")
@click.option("--after-seq", type=click.IntRange(min=0), default=0, help="Only lines after this seq (to resume).")
@click.option("--limit", type=click.IntRange(1, validation.MAX_LIST_LIMIT), default=10_000, show_default=True,
              help="Lines to list at most (without --follow), read a page at a time.")
def logs(job_id: str, follow: bool, after_seq: int, limit: int) -> dict | None:
    """A job's log lines (what its handlers wrote with ctx.log), oldest first; --follow prints them as they come."""
    params = {"job_id": job_id, "after_seq": after_seq or None}
    if not follow:
        return invoke_listing("jobs.logs", params, limit)
    current = settings()
    for kind, item in _followed(job_id, after_seq):
        if current.json:
            click.echo(json.dumps(item if kind == "line" else {"end": item}))
        elif kind == "line":
            click.echo(log_line(item))
        else:
            click.echo(f"-- job {item['job_id']} is {item['state']}; its log ends here")
    return None


def _followed(job_id: str, after_seq: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """("line", line) as the job's lines are stored, then ("end", {job_id, state, last_seq})."""
    current = settings()
    target = current.server_target()
    last = after_seq
    if target is None:  # no server: read the ledger (opened for each read, so workers can use it between reads)
        while True:
            page = invoke("jobs.logs", {"job_id": job_id, "after_seq": last or None})
            for line in page["lines"]:
                yield "line", line
            last = page["last_seq"]
            if page["final"] and page["next_cursor"] is None:
                yield "end", {"job_id": page["job_id"], "state": page["state"], "last_seq": last}
                return
            if page["next_cursor"] is None:
                time.sleep(LOCAL_FOLLOW_SECONDS)
    from . import remote

    params = {"job_id": job_id, "follow": "1", "after_seq": last or None}
    idle = api.LOG_FOLLOW_KEEPALIVE_SECONDS + current.lock_timeout
    for event in remote.events(target, current.token, "jobs.logs", params, bound=current.lock_timeout, idle=idle):
        data = json.loads(event.get("data") or "{}")
        if event.get("event") == "line":
            last = data["seq"]
            yield "line", data
        elif event.get("event") == "end":
            yield "end", data
            return
        elif event.get("event") == "error":
            raise LedgerBusy(f"{target.describe()} ended the stream: {data.get('message')}; resume with "
                             f"--after-seq {last}", holder_pid=target.pid)
    raise LedgerBusy(f"{target.describe()} closed the stream before job {job_id} ended; resume with --after-seq {last}",
                     holder_pid=target.pid)


@command(group, "recover")
def recover() -> dict:
    """Recover expired leases and timed-out jobs now (claims also do this, at most once a second)."""
    return invoke("jobs.recover", {})


@command(group, "replay")
@click.argument("job_id")
@click.option("--reason", help=f"Why (recorded in the audit log; at most {validation.MAX_REASON_CHARS} characters).")
@click.option("--again", is_flag=True, help="Replay a job that already has a replay once more.")
def replay(job_id: str, reason: str | None, again: bool) -> dict:
    """Clone a dead-lettered, failed or timed-out job into a new high-priority job with replay_of set (once,
    unless --again)."""
    return invoke("jobs.replay", {"job_id": job_id, "reason": reason, "again": again})
