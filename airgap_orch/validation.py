"""Input validation in one place: shapes and limits come from schemas/ (the contract), read once at import.

A limit a schema states (maxItems, maxLength, pattern, minimum/maximum) is read from that schema here, never
written a second time; README "Limits" is checked against these names (tests/test_contract_limits.py).
Only limits no request schema states (the lock timeout, defaults) are written here.

Every function raises InvalidInput with a one-line message that says what was wrong and what to do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from datetime import datetime
from typing import Any

from . import clock, schemas
from .errors import InvalidInput

# Documented limits (README "Limits"), each read from the schema that states it.
_at = schemas.at
DEFAULT_LOCK_TIMEOUT_SECONDS = 5.0
MAX_LOCK_TIMEOUT_SECONDS = 86_400.0
MAX_PAYLOAD_BYTES: int = _at("job-spec", "/properties/payload/x-max-bytes")
MAX_BATCH_JOBS: int = _at("enqueue-batch-request", "/properties/jobs/maxItems")
MAX_ACKS: int = _at("ack-many-request", "/properties/acks/maxItems")
MAX_ARTIFACTS: int = _at("ack-request", "/properties/artifacts/maxItems")
MAX_CLAIM_LIMIT: int = _at("claim-request", "/properties/limit/maximum")
MAX_WORKER_ID_CHARS: int = _at("claim-request", "/properties/worker_id/maxLength")
MIN_LEASE_SECONDS = float(_at("claim-request", "/properties/lease_seconds/minimum"))
MAX_LEASE_SECONDS = float(_at("claim-request", "/properties/lease_seconds/maximum"))
DEFAULT_LEASE_SECONDS = 30.0
MAX_LEASE_ID_CHARS: int = schemas.definition("lease-id")["maxLength"]
MAX_RETRY_AFTER_SECONDS = float(_at("fail-request", "/properties/retry_after/maximum"))
MAX_ERROR_CHARS: int = _at("fail-request", "/properties/error/maxLength")
MAX_REASON_CHARS: int = schemas.definition("reason")["maxLength"]
MAX_MESSAGE_CHARS: int = _at("heartbeat-request", "/properties/message/maxLength")
MAX_BULK_REPLAY: int = _at("replay-request", "/properties/job_ids/maxItems")
# Job log lines (ctx.log) a heartbeat, ack or fail carries: how many at most, and how long each may be.
MAX_LOG_LINES: int = _at("log-lines", "/maxItems")
MAX_LOG_LINE_CHARS: int = _at("log-lines", "/items/properties/message/maxLength")
LOG_LEVELS: tuple[str, ...] = tuple(_at("log-lines", "/items/properties/level/enum"))
# What a job keeps of its log (serve / worker run --job-log-lines, --job-log-retention; orchestrator/joblogs.py).
DEFAULT_JOB_LOG_LINES = 10_000
MIN_JOB_LOG_LINES, MAX_JOB_LOG_LINES = 10, 1_000_000
DEFAULT_JOB_LOG_RETENTION = "7d"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_QUEUE = "default"
# Listings (jobs, events, audit entries) are read a page at a time, each page in a short read transaction of its
# own: `limit` asks for at most MAX_LIST_LIMIT rows, a page holds at most MAX_PAGE_ROWS of them, and a page of jobs
# ends before its payloads (up to MAX_PAYLOAD_BYTES each) pass MAX_PAGE_PAYLOAD_BYTES (always at least one job).
# `next_cursor` continues after the page's last row.
MAX_LIST_LIMIT = 100_000
MAX_PAGE_ROWS = 1_000
MAX_PAGE_PAYLOAD_BYTES = 4 * 1024 * 1024


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def canonical_json(value: Any) -> str:
    return _canonical(value)


def digest(text: str) -> str:
    return _digest(text.encode())


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_json(text: str | bytes, what: str, *, hint: str = "pass a JSON document") -> Any:
    """One JSON document, read strictly as every door reads JSON: UTF-8; no NaN or Infinity (JSON has no such
    numbers); no key twice in one object (which one would win?); no text UTF-8 cannot encode (utf8_text)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{what} is not UTF-8 (byte {exc.start} is not); send JSON as UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_repeated_keys)
    except _Refused as exc:
        raise InvalidInput(f"{what} {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); {hint}") from None
    # A lone surrogate comes from an escape (\ud800) or, in text that was never UTF-8 (an argument), as itself:
    # a document with neither skips the walk.
    if ("\\u" in text and _SURROGATE_ESCAPE.search(text)) or not _encodes(text):
        utf8_text(value, what)
    return value


class _Refused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"contains {name}, which is not a JSON number; send a finite number (or null)")


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"has the key {schemas.shown(key, 40)} twice in one object; send each key once")
            seen.add(key)
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_NOT_UTF8 = "it holds bytes that are not UTF-8 or a lone surrogate (such as \\ud800); send Unicode text as UTF-8"


def _encodes(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_text(value: Any, what: str, *, field: str = "") -> None:
    """Refuse text that UTF-8 cannot encode anywhere in `value` (a string, or the keys and values of dicts and
    lists at any depth): a lone surrogate, which a JSON escape such as "\\ud800", or a byte that is not UTF-8 in
    a header or a command-line argument, decodes to. The ledger stores UTF-8 only. The error names the field,
    e.g. `body.payload.x` or `header Idempotency-Key`, and carries its path below `value` (after `field`, the
    path of `value` itself) as its `field`, e.g. `payload.x`."""
    stack: list[tuple[Any, str, str]] = [(value, what, field)]
    while stack:
        item, where, path = stack.pop()
        if isinstance(item, str):
            if not _encodes(item):
                raise InvalidInput(f"{where} is not UTF-8 text: {_NOT_UTF8}", field=path or None)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and not _encodes(key):
                    raise InvalidInput(f"{where} has a key that is not UTF-8 text: {_NOT_UTF8}", field=path or None)
                shown_key = f".{key}" if isinstance(key, str) and _PLAIN_KEY.match(key) else f"[{key!r}]"
                stack.append((inner, f"{where}{shown_key}" if where else shown_key.lstrip("."),
                              f"{path}{shown_key}" if path else shown_key.lstrip(".")))
        elif isinstance(item, list | tuple):
            stack.extend((inner, f"{where}[{index}]", f"{path}[{index}]") for index, inner in enumerate(item))


def job_spec(spec: Any, what: str = "job", *, shape_checked: bool = False) -> dict[str, Any]:
    """Validate one job spec (schemas/job-spec.schema.json, unless the caller has checked it against that
    schema already: `shape_checked`) and return the normalized record."""
    if not shape_checked:
        schemas.validate("job-spec", spec, what)
    get = spec.get
    try:
        payload_text = _canonical(get("payload", {}))
    except ValueError:
        raise InvalidInput(f"{what}.payload contains NaN or Infinity; JSON has no such numbers",
                           field="payload") from None
    try:
        payload_bytes = payload_text.encode()
    except UnicodeEncodeError:
        utf8_text(get("payload"), f"{what}.payload", field="payload")
        raise
    utf8_text({key: value for key, value in spec.items() if key != "payload"}, what)
    if len(payload_bytes) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(f"{what}.payload is {len(payload_bytes)} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes: "
                           "store large inputs as files and pass their URI", field="payload")
    run_at = get("run_at")
    record = {
        "tenant": spec["tenant"],
        "project": spec["project"],
        "job_type": spec["type"],
        "queue": get("queue", DEFAULT_QUEUE),
        "priority": get("priority", 0),
        "payload": payload_text,
        "payload_digest": _digest(payload_bytes),
        "idempotency_key": get("idempotency_key"),
        "run_at": timestamp(run_at, f"{what}.run_at", field="run_at") if run_at is not None else None,
        "max_attempts": get("max_attempts", DEFAULT_MAX_ATTEMPTS),
        "timeout_seconds": get("timeout_seconds"),
        "correlation_id": get("correlation_id"),
        "limit_keys": get("keys") or None,
        "depends_on": get("depends_on") or (),
        "spec_digest": None,
    }
    if record["idempotency_key"] is not None:
        record["spec_digest"] = spec_digest(record)
    return record


SPEC_DIGEST_VERSION = "1"


def spec_digest(record: dict[str, Any]) -> str:
    """The digest of the spec a caller sent with an idempotency key, from every field in the form job_spec gives
    it: a field left out and the same field sent with its default value (priority 0, queue "default",
    max_attempts 3, no keys) are the same spec, and so are two spellings of one run_at instant or of one payload
    (canonical JSON, by its digest). Flow keys and parents are sets: their order does not count. run_at left out
    stays "not given" here (the job's row holds the enqueue time instead). The tenant and the key are where the
    digest is looked up, so they are not in it.

    Lines joined by newlines, not JSON (half the cost, on the bulk enqueue path): no field but the last,
    the correlation id, can hold a newline (names, digests, times and numbers cannot), so the text still names
    one spec."""
    run_at, timeout, correlation_id = record["run_at"], record["timeout_seconds"], record["correlation_id"]
    text = "\n".join((
        SPEC_DIGEST_VERSION, record["project"], record["job_type"], record["queue"], str(record["priority"]),
        record["payload_digest"], "" if run_at is None else clock.iso(run_at), str(record["max_attempts"]),
        "" if timeout is None else str(timeout), ",".join(sorted(record["limit_keys"] or ())),
        ",".join(sorted(record["depends_on"])), "" if correlation_id is None else "=" + correlation_id))
    return digest(text)


def timestamp(text: str, what: str, *, field: str | None = None) -> datetime:
    try:
        return clock.parse_iso(text)
    except (ValueError, AttributeError):
        raise InvalidInput(f"{what} {text!r} is not an ISO 8601 time; use e.g. 2026-01-31T12:00:00Z",
                           field=field) from None


def artifacts(items: Any, what: str = "artifacts") -> list[dict[str, str]]:
    if not isinstance(items, list):
        raise InvalidInput(f"{what} must be a list of {{uri, digest, mime}} objects")
    if len(items) > MAX_ARTIFACTS:
        raise InvalidInput(f"{what} lists {len(items)} artifacts; the limit is {MAX_ARTIFACTS} per ack")
    for index, item in enumerate(items):
        schemas.validate("artifact", item, f"{what}[{index}]")
    utf8_text(items, what)
    return items


def log_lines(items: Any, what: str = "logs") -> list[dict[str, Any]]:
    """The job log lines a report carries (schemas/log-lines.schema.json), each as {message, level, at} with `at` a
    datetime or None (the server's time then); [] for none."""
    if items is None:
        return []
    schemas.validate("log-lines", items, what)
    utf8_text(items, what)
    return [{"message": item["message"], "level": item.get("level") or "info",
             "at": timestamp(item["at"], f"{what}[{index}].at") if item.get("at") is not None else None}
            for index, item in enumerate(items)]


def artifact_from_text(text: str) -> dict[str, str]:
    """Parse the CLI form URI,DIGEST,MIME (the URI itself may contain commas)."""
    parts = text.rsplit(",", 2)
    if len(parts) != 3:
        raise InvalidInput(f"artifact {text!r} must be URI,DIGEST,MIME e.g. "
                           "file:///out/report.json,sha256:<64 hex>,application/json")
    item = {"uri": parts[0], "digest": parts[1], "mime": parts[2]}
    schemas.validate("artifact", item, f"artifact {schemas.shown(text, 60)}")
    return item


def number_in(value: float, low: float, high: float, what: str) -> float:
    if value is None or not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a number between {low:g} and {high:g}")
    if not low <= value <= high:
        raise InvalidInput(f"{what} is {value:.12g}; it must be between {low:g} and {high:g}")
    return value


_TRUST_BYTES = schemas.definition("trust-bytes")
MAX_UPLOAD_ROOT_BYTES: int = _TRUST_BYTES["maximum"]  # bundle/limits.py MAX_ROOT_BYTES (a test holds them equal)


def upload_root_length(value: int) -> int:
    """An upload's trust_bytes query parameter (api.UPLOAD_ROOT_LENGTH): how many of the body's first bytes are a
    trust root, 1 to the root cap."""
    if not _TRUST_BYTES["minimum"] <= value <= MAX_UPLOAD_ROOT_BYTES:
        raise InvalidInput(f"query parameter trust_bytes is {value}; a trust root ahead of the bundle is 1 to "
                           f"{MAX_UPLOAD_ROOT_BYTES} bytes")
    return value


def list_limit(value: Any) -> int:
    """How many rows a listing asks for (1 to MAX_LIST_LIMIT); a page holds at most MAX_PAGE_ROWS of them."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"limit must be a whole number between 1 and {MAX_LIST_LIMIT}")
    return int(number_in(value, 1, MAX_LIST_LIMIT, "limit"))


def page_cursor(listing: str, key: list[Any]) -> str:
    """The opaque `next_cursor` of a page of `listing` ('jobs', 'events', 'audit'): where the next page starts,
    as the key of this page's last row (text a client passes back as it is). A datetime goes in as ISO text."""
    parts = [part.isoformat() if isinstance(part, datetime) else part for part in key]
    text = json.dumps([listing, *parts], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cursor(value: Any, listing: str, shape: tuple[type, ...]) -> list[Any]:
    """The key inside a cursor page_cursor(listing, ...) made, whose parts have the types in `shape` (a datetime
    as ISO text); anything else (edited, cut short, from another listing) is InvalidInput."""
    refused = InvalidInput(f"cursor {schemas.shown(str(value), 40)} is not one a page of {listing} gave out; pass "
                           "the next_cursor of the previous page as it is, or leave cursor out to start at the first "
                           "page")
    if not isinstance(value, str) or not 0 < len(value) <= 512:
        raise refused
    try:
        decoded = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, ValueError):
        raise refused from None
    if not isinstance(decoded, list) or len(decoded) != len(shape) + 1 or decoded[0] != listing:
        raise refused
    key = []
    for part, kind in zip(decoded[1:], shape, strict=True):
        if kind is datetime and isinstance(part, str):
            try:
                part = datetime.fromisoformat(part)
            except ValueError:
                raise refused from None
        if not isinstance(part, kind) or isinstance(part, bool):
            raise refused
        key.append(part)
    return key


def lease_seconds(value: float | None) -> float:
    if value is None:
        return DEFAULT_LEASE_SECONDS
    return float(number_in(value, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS, "lease seconds"))


def _whole(value: Any) -> int | None:
    """`value` as an int when it is a JSON integer: 5, or 5.0 (JSON Schema's "integer" is any number with no
    fraction, so the request schemas accept 5.0 as well); None otherwise (true and false are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def claim_limit(value: int) -> int:
    whole = _whole(value)
    if whole is None:
        raise InvalidInput("claim limit must be a whole number")
    return int(number_in(whole, 1, MAX_CLAIM_LIMIT, "claim limit"))


def progress(value: float | None) -> float | None:
    return None if value is None else float(number_in(value, 0.0, 1.0, "progress"))


def retry_after(value: float | None) -> float | None:
    return None if value is None else float(number_in(value, 0.0, MAX_RETRY_AFTER_SECONDS, "retry-after"))


def text(value: str | None, limit: int, what: str, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{what} is required: give it as text of at most {limit} characters")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    if len(value) > limit:
        raise InvalidInput(f"{what} is {len(value)} characters; the limit is {limit}")
    utf8_text(value, what)
    return value


def flag(value: Any, what: str) -> bool:
    """A yes/no field: JSON true or false only (no truthy strings or numbers)."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false")
    return value


def state(value: str | None) -> str | None:
    from .orchestrator.states import ALL_STATES

    if value is not None and value not in ALL_STATES:
        raise InvalidInput(f"unknown state {value!r}; use one of {', '.join(ALL_STATES)}")
    return value


def job_id(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"job id {value!r} is not a UUID; copy it from `jobs list`") from None


def job_ids(values: list[Any]) -> list[str]:
    """job_id() of each; the error names the failing one's index (OrchError.index)."""
    checked = []
    for index, value in enumerate(values):
        try:
            checked.append(job_id(value))
        except InvalidInput as error:
            raise error.at(index) from None
    return checked


def lease_id(value: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_LEASE_ID_CHARS:
        raise InvalidInput("lease id must be the lease_id text the claim returned")
    utf8_text(value, "lease id")
    return value


# -- flow control ------------------------------------------------------------------------------------------
MAX_TICKET_CHARS: int = schemas.definition("ticket")["maxLength"]
MAX_LIMIT_VALUE: int = schemas.definition("count")["maximum"]  # largest max_active, max_per_hour, burst or max
MAX_RATE_PER_SECOND = float(_at("ratelimit-set-request", "/properties/rate/maximum"))
MAX_BREAKER_FAILURES: int = _at("breaker-set-request", "/properties/failures/maximum")
MIN_COOLDOWN_SECONDS = float(_at("breaker-set-request", "/properties/cooldown/minimum"))
MAX_COOLDOWN_SECONDS = float(_at("breaker-set-request", "/properties/cooldown/maximum"))
_FLOW_KEY_SCHEMA = schemas.definition("flow-key")
MAX_FLOW_KEY_CHARS: int = _FLOW_KEY_SCHEMA["maxLength"]
_FLOW_KEY = re.compile(_FLOW_KEY_SCHEMA["pattern"])


def whole_number(value: Any, what: str, low: int = 1, high: int = MAX_LIMIT_VALUE) -> int:
    """A whole number in [low, high] (flow-control limits: a rate or burst <= 0 is refused); 5.0 is 5."""
    whole = _whole(value)
    if whole is None or not low <= whole <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high}, not {value!r}")
    return whole


def rate(value: Any, what: str = "rate") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or \
            not 0 < value <= MAX_RATE_PER_SECOND:
        raise InvalidInput(f"{what} must be a number of jobs per second above 0 and at most "
                           f"{MAX_RATE_PER_SECOND:g}, not {value!r}")
    return float(value)


def flow_key(value: Any, what: str = "key") -> str:
    """A flow-control key: 'tenant:T', 'type:JT', 'queue:Q' or a key jobs declare, e.g. 'host:nvd.nist.gov'."""
    if not isinstance(value, str) or len(value) > MAX_FLOW_KEY_CHARS or not _FLOW_KEY.match(value):
        raise InvalidInput(f"{what} {value!r} must look like kind:name (e.g. tenant:acme, type:scan, "
                           f"host:nvd.nist.gov), at most {MAX_FLOW_KEY_CHARS} characters")
    return value


def reason_and_ticket(reason: Any, ticket: Any, *, reason_required: bool = True,
                      ticket_required: bool = False) -> tuple[str | None, str | None]:
    """An operator's reason (<= 256 characters) and change ticket (<= 128)."""
    if reason_required and (reason is None or reason == ""):
        raise InvalidInput(f"reason is required: say why in at most {MAX_REASON_CHARS} characters (--reason, or the "
                           "X-Orch-Reason header)")
    checked = text(reason, MAX_REASON_CHARS, "reason", required=reason_required)
    if ticket is None or ticket == "":
        if ticket_required:
            raise InvalidInput(f"ticket is required; name the change ticket in at most {MAX_TICKET_CHARS} "
                               "characters (--ticket, or the X-Orch-Ticket header)")
        return checked, None
    return checked, text(ticket, MAX_TICKET_CHARS, "ticket")


_NAME_SCHEMA = schemas.definition("name")
MAX_NAME_CHARS: int = _NAME_SCHEMA["maxLength"]
_NAME = re.compile(_NAME_SCHEMA["pattern"])


def name(value: Any, what: str) -> str:
    """A tenant, project, type or queue name."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS or not _NAME.match(value):
        raise InvalidInput(f"{what} {value!r} must be 1-{MAX_NAME_CHARS} letters, digits or . _ : / - (starting with "
                           "a letter or digit)")
    return value


# -- sources and schedules ---------------------------------------------------------------------------------
_SOURCE_NAME_SCHEMA = schemas.definition("source-name")  # no '/' or ':': it travels in URL paths and keys
MAX_SOURCE_NAME_CHARS: int = _SOURCE_NAME_SCHEMA["maxLength"]
_SOURCE_NAME = re.compile(_SOURCE_NAME_SCHEMA["pattern"])
# A system-made backfill's ticket is 'schedule:<name>:<cron>': 9 + 64 + 1 + 54 fits MAX_TICKET_CHARS.
MAX_CRON_CHARS: int = _at("source-add-request", "/properties/schedule/maxLength")
MISSED_POLICIES: tuple[str, ...] = tuple(_at("source-add-request", "/properties/missed/enum"))
MAX_HOST_CHARS: int = _at("source-add-request", "/properties/host/maxLength")
_HOST = re.compile(_at("source-add-request", "/properties/host/pattern"))


def source_name(value: Any, what: str = "source name") -> str:
    """A source name: 1-64 letters, digits or . _ - (its jobs carry the key 'source:<name>')."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_SOURCE_NAME_CHARS or not _SOURCE_NAME.match(value):
        raise InvalidInput(f"{what} {value!r} must be 1-{MAX_SOURCE_NAME_CHARS} letters, digits or . _ - (starting "
                           "with a letter or digit)")
    return value


def host(value: Any) -> str | None:
    """An upstream host name (optionally :port); its jobs carry the key 'host:<host>'."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_HOST_CHARS or not _HOST.match(value):
        raise InvalidInput(f"host {value!r} must be a host name such as nvd.nist.gov (optionally :port), at most "
                           f"{MAX_HOST_CHARS} characters")
    return value


def cron(value: Any) -> str | None:
    """A 5-field cron expression (minute hour day-of-month month day-of-week), evaluated in UTC."""
    from cronsim import CronSim, CronSimError

    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_CRON_CHARS:
        raise InvalidInput(f"schedule {value!r} must be a cron expression of at most {MAX_CRON_CHARS} characters, "
                           "e.g. '0 * * * *' (hourly, UTC)")
    expression = " ".join(value.split())
    fields = expression.split(" ")
    if len(fields) != 5:
        raise InvalidInput(f"schedule {value!r} has {len(fields)} fields; a cron expression has 5: minute hour "
                           "day-of-month month day-of-week, e.g. '0 * * * *' (hourly, UTC)")
    try:
        now = clock.now()
        next(iter(CronSim(expression, now)))  # the scheduler walks both ways: a tick each way must exist
        next(iter(CronSim(expression, now, reverse=True)))
    except (CronSimError, ValueError, IndexError, StopIteration) as exc:
        raise InvalidInput(f"schedule {value!r} is not a valid cron expression ({exc}); e.g. '0 * * * *' "
                           "(hourly) or '*/15 * * * *' (every 15 minutes), UTC") from None
    return expression


def missed_policy(value: Any) -> str:
    if value not in MISSED_POLICIES:
        raise InvalidInput(f"missed-tick policy {value!r} must be one of {', '.join(MISSED_POLICIES)}")
    return value


def source_payload(value: Any) -> dict[str, Any]:
    """The JSON object a source's jobs start from; `tick` and `window` are set per tick."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("source payload must be a JSON object; each tick's job gets it with `tick` and `window` "
                           "members added")
    for reserved in ("tick", "window"):
        if reserved in value:
            raise InvalidInput(f"source payload must not carry `{reserved}`: the schedule sets it for each job")
    return value


_DURATION = re.compile(schemas.definition("duration")["pattern"])
_DURATION_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def duration_seconds(value: Any, what: str, *, example: str = "15m, 1h, 7d") -> int:
    """The one duration grammar (token lifetimes, backfill steps): a positive whole number without leading zeros
    and a unit s, m, h or d, e.g. '90s', '30m', '12h', '7d' -> seconds."""
    text = value.strip() if isinstance(value, str) else ""
    if _DURATION.fullmatch(text) is None:
        raise InvalidInput(f"{what} {value!r} must be a positive whole number and a unit s, m, h or d: {example}")
    return int(text[:-1]) * _DURATION_UNIT_SECONDS[text[-1]]



_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def site_id(value: Any, what: str = "site") -> str:
    """A site id as manifests and `ledger init` spell it: 1-64 letters, digits, '.', '_' or '-'."""
    if not isinstance(value, str) or not _SITE_ID.match(value):
        raise InvalidInput(f"{what} {value!r} is not a site id: 1-64 letters, digits, '.', '_' or '-', starting with "
                           "a letter or digit")
    return value
