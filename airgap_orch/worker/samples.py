"""Sample handlers for the demo and tests. Each takes a JobContext and follows the handler contract.

Payload keys they read (all optional unless said):
- ingest_advisory / ingest_vex: `advisory_id` / `document_id` (required; missing -> PermanentError),
  `out_dir` (where the normalized document is written; default: $TMPDIR/airgap-orch-out, named by the
  artifact URI each ack records), `steps`, `step_seconds`, `hold_until_running` (true: finish only once a
  heartbeat was answered, ctx.running, so the job's history shows it started whatever the machine's load).
- flaky_export: `retry_after` (seconds, default 0.2). Always fails with a RetryableError.
- slow_scan: `image`, `seconds` (default 5), `marker` (a file written when the scan starts),
  `out_dir`. Checks for cancellation between steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .context import JobContext, PermanentError, RetryableError


def _out_dir(ctx: JobContext) -> Path:
    configured = ctx.payload.get("out_dir") if isinstance(ctx.payload, dict) else None
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "airgap-orch-out"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_artifact(ctx: JobContext, name: str, document: dict[str, Any]) -> dict[str, str]:
    """Write `document` atomically under the out dir; return its artifact with the real sha256."""
    data = json.dumps(document, sort_keys=True, indent=2).encode()
    target = _out_dir(ctx) / f"{ctx.tenant}-{name}-{ctx.job_id}.json"
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(target)
    return {"uri": target.resolve().as_uri(), "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "mime": "application/json"}


def _payload(ctx: JobContext) -> dict[str, Any]:
    if not isinstance(ctx.payload, dict):
        raise PermanentError(f"payload must be a JSON object, not {type(ctx.payload).__name__}")
    return ctx.payload


def _ingest(ctx: JobContext, kind: str, id_key: str) -> list[dict[str, str]]:
    payload = _payload(ctx)
    document_id = payload.get(id_key)
    if not isinstance(document_id, str) or not document_id:
        raise PermanentError(f"payload has no {id_key}; fix the job spec and replay it")
    steps = int(payload.get("steps", 3))
    step_seconds = float(payload.get("step_seconds", 0.05))
    for step in range(steps):
        ctx.check_cancelled()
        time.sleep(step_seconds)
        ctx.progress((step + 1) / (steps + 1), f"{kind} {document_id}: step {step + 1} of {steps}")
        ctx.log(f"{kind} {document_id}: step {step + 1} of {steps} done")
    if payload.get("hold_until_running"):
        while not ctx.running.wait(0.05):
            ctx.check_cancelled()
    normalized = {"kind": kind, "id": document_id, "tenant": ctx.tenant, "project": ctx.project,
                  "source": payload.get("source", "sample"), "attempt": ctx.attempt}
    artifact = _write_artifact(ctx, kind, normalized)
    ctx.progress(1.0, f"{kind} {document_id}: stored")
    ctx.log(f"{kind} {document_id}: stored as {artifact['uri']}")
    return [artifact]


def ingest_advisory(ctx: JobContext) -> list[dict[str, str]]:
    """Fetch, normalize and store one advisory (simulated): a few progress steps and one JSON artifact."""
    return _ingest(ctx, "advisory", "advisory_id")


def ingest_vex(ctx: JobContext) -> list[dict[str, str]]:
    """Ingest one VEX document (simulated), like ingest_advisory."""
    return _ingest(ctx, "vex", "document_id")


def flaky_export(ctx: JobContext) -> None:
    """An export whose downstream never answers: always a retryable error, so it ends dead-lettered."""
    payload = _payload(ctx)
    ctx.progress(0.1, "connecting to the export target")
    ctx.log(f"export target {payload.get('target', 'mirror')} did not answer", level="warning")
    raise RetryableError(f"export target {payload.get('target', 'mirror')} unreachable "
                         f"(attempt {ctx.attempt} of {ctx.max_attempts})",
                         retry_after=float(payload.get("retry_after", 0.2)))


def slow_scan(ctx: JobContext) -> list[dict[str, str]]:
    """A long image scan: writes `marker` when it starts, then works for `seconds` with progress."""
    payload = _payload(ctx)
    if payload.get("marker"):
        marker = Path(payload["marker"])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"job_id": ctx.job_id, "attempt": ctx.attempt, "worker_id": ctx.worker_id,
                                      "pid": os.getpid()}))
    seconds = float(payload.get("seconds", 5))
    steps = max(1, int(seconds / 0.1))
    ctx.log(f"scanning {payload.get('image', 'unknown')} in {steps} layers")
    for step in range(steps):
        ctx.check_cancelled()
        time.sleep(seconds / steps)
        ctx.progress((step + 1) / steps, f"scanned {step + 1} of {steps} layers")
    ctx.check_cancelled()
    ctx.log("scan finished: no findings")
    report = {"image": payload.get("image", "unknown"), "findings": [], "scanned_by": ctx.worker_id,
              "attempt": ctx.attempt}
    return [_write_artifact(ctx, "scan", report)]
