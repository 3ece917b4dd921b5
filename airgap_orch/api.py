"""The HTTP contract of the control plane: one row per operation.

Pure data, imported by the server (to route), by the client used by the CLI and the SDK (to call), and
by the OpenAPI builder (to document). Each row names the operation (registered under that name in
airgap_orch/operations/ with @registry.operation), the scope it needs (one of the constants below; auth/scopes.py
SCOPES says what each allows) and the schemas of its bodies. Path parameters are written {name}; every other
parameter travels in the JSON body (POST) or the query string (GET).

Adding an operation touches four files: a row here, its request schema in schemas/, the function in
airgap_orch/operations/<area>.py (decorated with @operation("<name>")), and its command in airgap_orch/cli/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .bundle.limits import MAX_ARCHIVE_BYTES

API_PREFIX = "/v1"
# An operational override's reason and ticket (DESIGN invariant 8) travel in these headers, not in the body.
OVERRIDE_HEADERS = (("reason", "X-Orch-Reason"), ("ticket", "X-Orch-Ticket"))
MAX_BODY_BYTES = 8 * 1024 * 1024  # documented in README "Limits"; larger bodies get 413
# The header of a `download` route's answer that carries the operation's JSON result (base64url, no padding).
DOWNLOAD_RESULT_HEADER = "X-Orch-Export"
# A bundle streamed to an `upload` route (bundle plan, bundle import): the bundle format's own cap on a file, never
# held in memory (`serve --max-bundle-bytes` lowers it); larger uploads get 413.
MAX_BUNDLE_BYTES = MAX_ARCHIVE_BYTES
# An upload route's body may start with a trust root (`bundle plan | import --trust ROOT.json`): query parameter
# trust_bytes=N (1 to the root cap, bundle/limits.py MAX_ROOT_BYTES) says its first N bytes are the root.json
# document, the rest the bundle. The server holds those N bytes in memory (the root cap bounds them), streams the rest
# to the upload's file, and hands the root to the operation as its `trust_root` param (bytes, never a path).
UPLOAD_ROOT_LENGTH = "trust_bytes"
UPLOAD_ROOT = "trust_root"
# A follower of a job's log (GET /v1/jobs/{id}/logs?follow=1) gets a comment line this often while nothing happens:
# the CLI takes a silence of this plus --lock-timeout for a server gone.
LOG_FOLLOW_KEEPALIVE_SECONDS = 5.0

# The scopes routes need. auth/scopes.py documents each (SCOPES, the README table) and adds orch:admin, which no
# route needs on its own; a new scope is a constant here and a line there.
READ = "orch:read"
OPERATE = "orch:operate"
QUOTA = "orch:quota"
BACKFILL = "orch:backfill"
WORKER = "orch:worker"
AIRGAP = "orch:airgap"
# A route any valid token may call, whatever its scopes: it tells the token only its own claims (whoami).
ANY_TOKEN = None


@dataclass(frozen=True)
class Route:
    name: str  # operation name, e.g. "jobs.claim"
    method: str
    path: str
    scope: str | None  # the scope a token needs for it: one of the constants above (ANY_TOKEN: none, a valid token)
    summary: str
    request_schema: str | None = None  # schemas/<name>.schema.json
    mutating: bool = False  # accepts Idempotency-Key; goes through the writer (else: a reader, on snapshots)
    query: tuple[tuple[str, str], ...] = ()  # GET parameters: (name, JSON type)
    # Operational overrides (DESIGN invariant 8): the server takes `reason` from the X-Orch-Reason header
    # and `ticket` from X-Orch-Ticket, and answers 400 when a needed one is missing.
    needs_reason: bool = False
    needs_ticket: bool = False
    takes_reason: bool = False  # X-Orch-Reason / X-Orch-Ticket accepted, not required (recorded in the audit log)
    # The body is a bundle file (Content-Type: application/octet-stream, up to MAX_BUNDLE_BYTES), streamed to a
    # temporary file the operation gets as its `bundle` param, after a trust root when the query names one
    # (UPLOAD_ROOT_LENGTH); the other params travel in the query string. It runs on the server's bundle thread: not
    # queued behind the writer, nor holding it up until its final transaction.
    upload: bool = False
    # The answer is a bundle file (application/octet-stream, streamed from a temporary file beside the ledger, never
    # held in memory) with the operation's JSON result in the X-Orch-Export header (base64url, no padding): the
    # request is JSON as usual; the operation runs on the bundle thread, as an upload's does.
    download: bool = False


ROUTES: tuple[Route, ...] = (
    Route("auth.whoami", "GET", "/v1/whoami", ANY_TOKEN,
          "Who the token speaks for: subject, tenants and scopes, and whether the server checks tokens at all"),
    Route("jobs.enqueue", "POST", "/v1/jobs", OPERATE, "Enqueue one job", "job-spec", True),
    Route("jobs.enqueue_batch", "POST", "/v1/jobs/batch", OPERATE, "Enqueue many jobs in one transaction",
          "enqueue-batch-request", True),
    Route("jobs.claim", "POST", "/v1/jobs/claim", WORKER, "Lease ready jobs (long-poll with wait)",
          "claim-request", True),
    Route("jobs.heartbeat", "POST", "/v1/jobs/{job_id}/heartbeat", WORKER,
          "Extend a lease, report progress; answers cancel_requested", "heartbeat-request", True),
    Route("jobs.ack", "POST", "/v1/jobs/{job_id}/ack", WORKER, "Complete a job under its lease", "ack-request", True),
    Route("jobs.ack_many", "POST", "/v1/acks", WORKER, "Complete many jobs, each under its lease",
          "ack-many-request", True),
    Route("jobs.fail", "POST", "/v1/jobs/{job_id}/fail", WORKER, "Report a failed attempt", "fail-request", True),
    Route("jobs.release", "POST", "/v1/jobs/{job_id}/release", WORKER, "Give a lease back unused",
          "lease-request", True),
    Route("jobs.cancel", "POST", "/v1/jobs/{job_id}/cancel", OPERATE, "Cancel or request cancellation",
          "cancel-request", True),
    Route("jobs.list", "GET", "/v1/jobs", READ, "List jobs in creation order, a page at a time",
          query=(("state", "string"), ("tenant", "string"), ("type", "string"), ("project", "string"),
                 ("queue", "string"), ("limit", "integer"), ("cursor", "string"))),
    Route("jobs.show", "GET", "/v1/jobs/{job_id}", READ, "One job with its history"),
    Route("jobs.throttled", "GET", "/v1/throttled", READ,
          "Queued jobs a limit holds back now, with what holds each back, a page at a time",
          query=(("limit", "integer"), ("cursor", "string"))),
    Route("jobs.logs", "GET", "/v1/jobs/{job_id}/logs", READ,
          "A job's log lines, oldest first, a page at a time; follow=1 streams them as Server-Sent Events (id: the "
          "line's seq, resumable with Last-Event-ID) until the job ends",
          query=(("after_seq", "integer"), ("limit", "integer"), ("cursor", "string"), ("follow", "string"))),
    Route("jobs.recover", "POST", "/v1/jobs/recover", OPERATE, "Recover expired leases now", None, True),
    Route("deadletter.list", "GET", "/v1/deadletter", READ, "Dead-lettered jobs, a page at a time",
          query=(("tenant", "string"), ("type", "string"), ("limit", "integer"), ("cursor", "string"))),
    Route("deadletter.replay", "POST", "/v1/deadletter/replay", OPERATE, "Replay dead-lettered jobs",
          "replay-request", True),
    Route("ledger.info", "GET", "/v1/ledger", READ, "Ledger identity and counts"),
    Route("ledger.verify", "POST", "/v1/ledger/verify", READ, "Verify chain and state tables"),
    Route("ledger.events", "GET", "/v1/ledger/events", READ,
          "Transitions as orch.event.v1 envelopes, a page at a time",
          query=(("after_seq", "integer"), ("limit", "integer"), ("cursor", "string"))),
    Route("audit.list", "GET", "/v1/audit", READ, "Audit log entries, oldest first, a page at a time",
          query=(("since", "string"), ("action", "string"), ("by", "string"), ("after_seq", "integer"),
                 ("limit", "integer"), ("cursor", "string"))),
    Route("audit.verify", "POST", "/v1/audit/verify", READ, "Verify the audit log's hash chain"),
    Route("jobs.replay", "POST", "/v1/jobs/{job_id}/replay", OPERATE,
          "Replay a dead-lettered, failed or timed-out job as a new high-priority job", "job-replay-request", True),
    Route("deadletter.replay_bulk", "POST", "/v1/deadletter/replay-bulk", OPERATE,
          "Replay a tenant's dead letters of one type since a time (dry_run to preview)",
          "deadletter-replay-bulk-request", True),
    Route("backfills.create", "POST", "/v1/backfills", BACKFILL,
          "Create a backfill: one job per window (needs X-Orch-Reason and X-Orch-Ticket)",
          "backfill-create-request", True, needs_reason=True, needs_ticket=True),
    Route("backfills.list", "GET", "/v1/backfills", READ, "Backfills with their progress",
          query=(("tenant", "string"), ("type", "string"), ("state", "string"), ("limit", "integer"))),
    Route("backfills.show", "GET", "/v1/backfills/{backfill_id}", READ,
          "One backfill with its progress and watermark"),
    Route("backfills.cancel", "POST", "/v1/backfills/{backfill_id}/cancel", BACKFILL,
          "Cancel a backfill's queued jobs, request cancellation of its running ones (needs X-Orch-Reason)",
          None, True, needs_reason=True),
    Route("quotas.set", "POST", "/v1/quotas/{tenant}", QUOTA,
          "Set a tenant's quota: max_active, max_per_hour, burst (needs X-Orch-Reason)", "quota-set-request", True,
          needs_reason=True, takes_reason=True),
    Route("quotas.delete", "POST", "/v1/quotas/{tenant}/delete", QUOTA, "Remove a tenant's quota "
          "(needs X-Orch-Reason)", None, True, needs_reason=True, takes_reason=True),
    Route("quotas.list", "GET", "/v1/quotas", READ, "Quotas with their use now",
          query=(("tenant", "string"),)),
    Route("ratelimits.set", "POST", "/v1/ratelimits", QUOTA,
          "Set a token bucket on {tenant, type} or on a declared key (needs X-Orch-Reason)",
          "ratelimit-set-request", True, needs_reason=True, takes_reason=True),
    Route("ratelimits.delete", "POST", "/v1/ratelimits/delete", QUOTA,
          "Remove a rate limit (needs X-Orch-Reason)", "ratelimit-target", True, needs_reason=True,
          takes_reason=True),
    Route("ratelimits.list", "GET", "/v1/ratelimits", READ, "Rate limits with their tokens now"),
    Route("concurrency.set", "POST", "/v1/concurrency", QUOTA,
          "Limit how many jobs carrying a key are leased or running at once (needs X-Orch-Reason)",
          "concurrency-set-request", True, needs_reason=True, takes_reason=True),
    Route("concurrency.delete", "POST", "/v1/concurrency/delete", QUOTA,
          "Remove a concurrency limit (needs X-Orch-Reason)", "key-target", True, needs_reason=True,
          takes_reason=True),
    Route("concurrency.list", "GET", "/v1/concurrency", READ, "Concurrency limits with their use now"),
    Route("breakers.set", "POST", "/v1/breakers", QUOTA,
          "Set a circuit breaker on a key: failures to open, cool-down before one probe (needs X-Orch-Reason)",
          "breaker-set-request", True, needs_reason=True, takes_reason=True),
    Route("breakers.delete", "POST", "/v1/breakers/delete", QUOTA,
          "Remove a circuit breaker (needs X-Orch-Reason)", "key-target", True, needs_reason=True,
          takes_reason=True),
    Route("breakers.list", "GET", "/v1/breakers", READ, "Circuit breakers and their state"),
    Route("queues.pause", "POST", "/v1/queues/{queue}/pause", OPERATE,
          "Pause a queue: its jobs stay queued, none is claimed (needs X-Orch-Reason)", None, True,
          needs_reason=True, takes_reason=True),
    Route("queues.resume", "POST", "/v1/queues/{queue}/resume", OPERATE, "Resume a paused queue", None,
          True, takes_reason=True),
    Route("queues.list", "GET", "/v1/queues", READ, "Queues: active job counts and pauses"),
    Route("sources.add", "POST", "/v1/sources", OPERATE,
          "Add a source: an upstream feed its jobs ingest from, with an optional cron schedule (UTC)",
          "source-add-request", True, takes_reason=True),
    Route("sources.list", "GET", "/v1/sources", READ, "Sources with their pause and next tick",
          query=(("tenant", "string"),)),
    Route("sources.show", "GET", "/v1/sources/{name}", READ, "One source with its pause and next tick"),
    Route("sources.pause", "POST", "/v1/sources/{name}/pause", OPERATE,
          "Pause a source: its jobs stay queued and are not claimed, its schedule waits (needs X-Orch-Reason)",
          None, True, needs_reason=True, takes_reason=True),
    Route("sources.resume", "POST", "/v1/sources/{name}/resume", OPERATE,
          "Resume a paused source; ticks missed meanwhile meet its missed-tick policy", None, True,
          takes_reason=True),
    Route("schedules.run_due", "POST", "/v1/schedules/run-due", OPERATE,
          "Enqueue the due ticks of every schedule now (the server also does this every few seconds)", None, True),
    Route("trust.show", "GET", "/v1/trust", AIRGAP,
          "The pinned trust root: version, fingerprint, expiry, roles and sites with thresholds and key ids"),
    Route("trust.root", "GET", "/v1/trust/root", AIRGAP,
          "The pinned trust root document (root.json as text) and this site's id: what `bundle verify` checks with"),
    Route("trust.pin", "POST", "/v1/trust/pin", AIRGAP,
          "Verify trust roots (root.json documents, as text) and pin them; audited with X-Orch-Reason",
          "trust-pin-request", True, takes_reason=True),
    Route("bundles.list", "GET", "/v1/bundles", AIRGAP,
          "The bundles this ledger imported and exported, and the mirrors per source site"),
    Route("bundles.mirrors", "GET", "/v1/bundles/mirrors", AIRGAP,
          "Other sites' idempotency keys, dependencies, sources, backfills and windows, mirrored from their bundles",
          query=(("source", "string"), ("kind", "string"), ("limit", "integer"), ("cursor", "string"))),
    Route("bundles.plan", "POST", "/v1/bundles/plan", AIRGAP,
          "Dry run of an import: the bundle is the body (application/octet-stream); verify it, answer the plan and "
          "its digest; writes nothing; with trust_bytes=N the body's first N bytes are a trust root (--trust)",
          query=(("staleness", "string"), ("force", "boolean"), (UPLOAD_ROOT_LENGTH, "integer")), takes_reason=True,
          upload=True),
    Route("bundles.import", "POST", "/v1/bundles/import", AIRGAP,
          "Verify and import the bundle in the body (application/octet-stream) in one transaction; a refusal is "
          "audited and quarantined; with trust_bytes=N the body's first N bytes are a trust root (--trust), pinned by "
          "a successful import when nothing is pinned",
          query=(("plan_digest", "string"), ("staleness", "string"), ("force", "boolean"),
                 (UPLOAD_ROOT_LENGTH, "integer")), takes_reason=True, upload=True),
    Route("bundles.export", "POST", "/v1/bundles/export", AIRGAP,
          "Export a bundle signed with the keys serve holds (serve --bundle-key, --timestamp-key): the answer is the "
          "bundle (application/octet-stream), its summary in the X-Orch-Export header; a hand-off commits first "
          "(audited with X-Orch-Reason)", "bundle-export-request", takes_reason=True, download=True),
    Route("airgap.status", "GET", "/v1/airgap/status", AIRGAP,
          "Pinned trust root, latest time anchor (drift, staleness, budget left), floor per source site",
          query=(("staleness", "string"),)),
    Route("airgap.staleness", "POST", "/v1/airgap/staleness", AIRGAP,
          "Set this ledger's default staleness mode (audited with X-Orch-Reason)", "airgap-staleness-request", True,
          takes_reason=True),
    Route("airgap.authority_show", "GET", "/v1/airgap/authority", AIRGAP,
          "The site whose bundles' quotas, rate limits and concurrency limits this site applies, if any"),
    Route("airgap.authority_set", "POST", "/v1/airgap/authority", AIRGAP,
          "Apply the policies of a site's bundles from the next import on (needs X-Orch-Reason; audited)",
          "airgap-authority-set-request", True, needs_reason=True, takes_reason=True),
    Route("airgap.authority_clear", "POST", "/v1/airgap/authority/clear", AIRGAP,
          "No policy authority: every bundle's policies stay mirrors (needs X-Orch-Reason; audited)", None, True,
          needs_reason=True, takes_reason=True),
    Route("airgap.policies", "GET", "/v1/airgap/policies", AIRGAP,
          "The policies other sites' bundles carried (mirrors), and whether each is the row this site applies",
          query=(("source", "string"),)),
)

BY_NAME = {route.name: route for route in ROUTES}


def path_for(route: Route, params: dict) -> tuple[str, dict]:
    """Fill the path template from params; returns (path, remaining params)."""
    rest = dict(params)
    path = route.path
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        key = path[start + 1:end]
        path = path[:start] + str(rest.pop(key)) + path[end + 1:]
    return path, rest


# What each paged listing answers its rows under (a page also carries `next_cursor`).
PAGED_ITEMS = {"jobs.list": "jobs", "jobs.throttled": "jobs", "deadletter.list": "jobs", "ledger.events": "events",
               "audit.list": "entries",
               "bundles.mirrors": "rows", "jobs.logs": "lines"}


def read_pages(call: Callable[[str, dict[str, Any]], dict[str, Any]], name: str, params: dict[str, Any],
               limit: int) -> dict[str, Any]:
    """Up to `limit` rows of listing `name`, read page by page with `call(name, params)` (a page holds at most
    validation.MAX_PAGE_ROWS): the last page's answer with every page's rows, and its `next_cursor` (None: the
    listing ended before `limit`). `after_seq`, if given, starts the first page; the cursor takes over after it."""
    items = PAGED_ITEMS[name]
    rows: list[Any] = []
    first = {key: value for key, value in params.items() if key != "cursor"}
    answer = call(name, {**first, "limit": limit})
    while True:
        rows.extend(answer[items])
        cursor = answer.get("next_cursor")
        if cursor is None or len(rows) >= limit or not answer[items]:
            break
        rest = {key: value for key, value in first.items() if key != "after_seq"}
        answer = call(name, {**rest, "limit": limit - len(rows), "cursor": cursor})
    return {**answer, items: rows, "next_cursor": cursor}
