"""The time anchor (`time-anchor.json`) and the staleness budget.

Anchor. A canonical DSSE envelope (dsse.py's canonical form) with payload type
`application/vnd.airgap-orch.time-anchor+json`, signed by a threshold of the trust root's `timestamp` role.
Its payload (schemas/time-anchor.schema.json, canonical JSON) is
    {"bundle_id": <manifest bundle_id>, "manifest_sha256": <SHA-256 of the manifest payload>,
     "time": <the manifest's created_at>}
so an anchor belongs to exactly one manifest and cannot be moved to another bundle, and its time is the
bundle's creation time. The payload type differs from the manifest's, so neither envelope can stand in for the
other even where one key sits in both roles.

Staleness (all times naive UTC; `assess_time` is pure and never raises, `enforce_time` raises):
    best_known_time = max(local clock, latest verified anchor stored at this site)
    age             = best_known_time - anchor time        (negative when the anchor is ahead)
    drift           = anchor time - local clock            (positive: the anchor is ahead of the clock)
    budget_left     = refuse_after - age
- drift > max_future_drift (5 minutes): state "future", refused in every mode unless the operator forces
  it (`allow_future_anchor`): the local clock is wrong or the anchor is, and storing such an anchor as the
  latest would make every later bundle look stale.
- mode "disabled": state "unchecked", never refused for age.
- age <= warn_after (7 days): "fresh".
- warn_after < age <= refuse_after (warn_after + grace = 8 days): "grace", a warning in every mode.
- age > refuse_after: "stale"; refused in mode "strict" (StalenessError staleness:stale, exit 5), a warning
  in mode "warn".
The new latest anchor is max(stored latest, anchor time), except for a refused future anchor, which leaves it
unchanged: it never moves backwards, and callers store `TimeVerdict.latest_anchor` once the import commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import schemas
from ._json import StrictJSONError, loads_strict
from .dsse import Envelope, add_signature, parse_canonical_envelope, verify_envelope
from .errors import AnchorError, EnvelopeError, SizeLimitError, StalenessError
from .limits import MAX_TIME_ANCHOR_BYTES
from .manifest import Manifest, canonical_json, format_time, parse_time
from .trust import TrustedRoot

ANCHOR_PAYLOAD_TYPE = "application/vnd.airgap-orch.time-anchor+json"
ANCHOR_SCHEMA = "time-anchor"

WARN_AFTER = timedelta(days=7)
GRACE = timedelta(days=1)
MAX_FUTURE_DRIFT = timedelta(minutes=5)

StalenessMode = Literal["strict", "warn", "disabled"]
TimeState = Literal["fresh", "grace", "stale", "future", "unchecked"]
MODES: tuple[str, ...] = ("strict", "warn", "disabled")


@dataclass(frozen=True)
class StalenessPolicy:
    mode: StalenessMode = "strict"
    warn_after: timedelta = WARN_AFTER
    grace: timedelta = GRACE
    max_future_drift: timedelta = MAX_FUTURE_DRIFT
    allow_future_anchor: bool = False  # the operator forces an anchor ahead of the local clock

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"staleness mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.warn_after < timedelta(0) or self.grace < timedelta(0) or self.max_future_drift < timedelta(0):
            raise ValueError("staleness budgets must not be negative")

    @property
    def refuse_after(self) -> timedelta:
        return self.warn_after + self.grace


DEFAULT_STALENESS = StalenessPolicy()


@dataclass(frozen=True)
class TimeAnchor:
    """A verified anchor: signed by the timestamp role and bound to one manifest."""

    bundle_id: str
    manifest_sha256: str
    time: datetime
    signers: tuple[str, ...]  # keyids of the distinct timestamp keys that signed
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class TimeVerdict:
    """What `airgap status` and `bundle verify` show about a bundle's time (see the module docstring)."""

    mode: StalenessMode
    state: TimeState
    anchor_time: datetime
    local_now: datetime
    best_known_time: datetime
    age: timedelta
    drift: timedelta
    warn_after: timedelta
    refuse_after: timedelta
    budget_left: timedelta
    latest_anchor: datetime  # store this once the bundle is imported
    refused: bool
    message: str

    @property
    def warning(self) -> bool:
        return not self.refused and self.state in ("grace", "stale", "future")


# --- writing ----------------------------------------------------------------------------------------------

def anchor_payload(manifest: Manifest) -> bytes:
    """The canonical anchor payload for `manifest`: its id, its payload digest, its creation time."""
    return canonical_json({"bundle_id": manifest.bundle_id, "manifest_sha256": manifest.payload_sha256,
                           "time": format_time(manifest.created_at)})


def sign_anchor(manifest: Manifest, timestamp_keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """The canonical `time-anchor.json` for `manifest`, signed by each of `timestamp_keys`."""
    if not timestamp_keys:
        raise ValueError("a time anchor needs at least one timestamp key")
    envelope = Envelope(anchor_payload(manifest), ANCHOR_PAYLOAD_TYPE, ())
    for key in timestamp_keys:
        envelope = add_signature(envelope, key)
    return envelope.to_json()


# --- verifying --------------------------------------------------------------------------------------------

def verify_anchor(data: bytes, root: TrustedRoot, manifest: Manifest) -> TimeAnchor:
    """Check `time-anchor.json` against the timestamp role of the verified `root` and the verified `manifest`.
    SizeLimitError size:time-anchor; AnchorError anchor:<dsse detail> for the envelope and its signatures,
    anchor:malformed, anchor:not-canonical, anchor:wrong-bundle, anchor:time-mismatch."""
    if len(data) > MAX_TIME_ANCHOR_BYTES:
        raise SizeLimitError("time-anchor", f"the time anchor is {len(data)} bytes; the cap is "
                             f"{MAX_TIME_ANCHOR_BYTES}")
    try:
        verified = verify_envelope(parse_canonical_envelope(data), root.timestamp, ANCHOR_PAYLOAD_TYPE)
    except EnvelopeError as exc:
        raise AnchorError(exc.detail, f"time anchor: {exc}") from None
    except SizeLimitError as exc:
        raise SizeLimitError(f"time-anchor-{exc.detail}", f"time anchor: {exc}") from None
    try:
        document = loads_strict(verified.payload)
    except StrictJSONError as exc:
        raise AnchorError("malformed", f"the time anchor's payload is not valid: {exc}") from None
    message = schemas.problem(ANCHOR_SCHEMA, document, "time anchor")
    if message is not None:
        raise AnchorError("malformed", message)
    if canonical_json(document) != verified.payload:
        raise AnchorError("not-canonical", "the time anchor's payload is not in canonical form")
    if document["manifest_sha256"] != manifest.payload_sha256 or document["bundle_id"] != manifest.bundle_id:
        raise AnchorError("wrong-bundle", f"the time anchor was signed for bundle {document['bundle_id'][:16]}..., "
                          f"not this one ({manifest.bundle_id[:16]}...); it was moved from another bundle")
    try:
        anchor_time = parse_time(document["time"])
    except ValueError:
        raise AnchorError("malformed", f"the time anchor's time {document['time']!r} is not a valid UTC time") from None
    if anchor_time != manifest.created_at:
        raise AnchorError("time-mismatch", f"the time anchor says {document['time']}, but the manifest was created "
                          f"at {format_time(manifest.created_at)}")
    return TimeAnchor(document["bundle_id"], document["manifest_sha256"], anchor_time,
                      tuple(key.keyid for key in verified.signers), verified.payload)


def assess_time(anchor_time: datetime, *, local_now: datetime, latest_anchor: datetime | None,
                policy: StalenessPolicy = DEFAULT_STALENESS) -> TimeVerdict:
    """The staleness verdict for an anchor time (see the module docstring); never raises."""
    anchor_time, local_now = _naive(anchor_time), _naive(local_now)
    previous = None if latest_anchor is None else _naive(latest_anchor)
    best = local_now if previous is None else max(local_now, previous)
    age = best - anchor_time
    drift = anchor_time - local_now
    budget_left = policy.refuse_after - age
    refused = False
    if drift > policy.max_future_drift:
        state: TimeState = "future"
        if policy.allow_future_anchor:
            message = (f"the time anchor is {_span(drift)} ahead of the local clock; accepted because forced "
                       "(check this machine's clock)")
        else:
            refused = True
            message = (f"the time anchor is {_span(drift)} ahead of the local clock (the bound is "
                       f"{_span(policy.max_future_drift)}); fix this machine's clock, or force the anchor if the "
                       "clock is wrong")
    elif policy.mode == "disabled":
        state, message = "unchecked", f"staleness not checked (mode disabled); the bundle is {_span(age)} old"
    elif age <= policy.warn_after:
        state, message = "fresh", f"the bundle is {_span(age)} old; {_span(budget_left)} of the budget left"
    elif age <= policy.refuse_after:
        state = "grace"
        message = (f"the bundle is {_span(age)} old, past the {_span(policy.warn_after)} budget; "
                   f"{_span(budget_left)} of grace left")
    else:
        state = "stale"
        refused = policy.mode == "strict"
        tail = "refused (staleness mode strict); export a fresh bundle" if refused else "accepted (mode warn)"
        message = (f"the bundle is {_span(age)} old, past the {_span(policy.warn_after)} budget and "
                   f"{_span(policy.grace)} grace: {tail}")
    if state == "future" and refused:
        latest = previous if previous is not None else best
    else:
        latest = anchor_time if previous is None else max(previous, anchor_time)
    return TimeVerdict(mode=policy.mode, state=state, anchor_time=anchor_time, local_now=local_now,
                       best_known_time=best, age=age, drift=drift, warn_after=policy.warn_after,
                       refuse_after=policy.refuse_after, budget_left=budget_left, latest_anchor=latest,
                       refused=refused, message=message)


def enforce_time(verdict: TimeVerdict) -> None:
    """StalenessError staleness:stale or staleness:future (exit 5) for a refused verdict; it carries `verdict`."""
    if verdict.refused:
        error = StalenessError("future" if verdict.state == "future" else "stale", verdict.message)
        error.verdict = verdict
        raise error


def _naive(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _span(delta: timedelta) -> str:
    """A duration for people: '7d 3h', '4m 10s', '-2h 5m'."""
    seconds = int(delta.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return sign + (" ".join(shown) if shown else "0s")
