"""The error tree. Core code raises these; each door (CLI, HTTP) maps a family to its code in one table.

    OrchError
    ├── InvalidInput            bad value, malformed JSON, oversized payload
    │   └── NotFound            unknown job id, missing ledger
    ├── Conflict                state conflicts
    │   ├── StaleLease          expired or superseded lease
    │   └── IllegalTransition   the transition table has no such edge
    ├── VerificationFailed      hash, signature, schema or chain check failed
    ├── PolicyRefused           rollback, staleness, expiry
    ├── LedgerBusy              another process holds the ledger (safe to retry)
    └── NotAuthorized           refused token (401)
        └── Forbidden           missing scope or tenant (403)
"""

from __future__ import annotations

from typing import Self


class OrchError(Exception):
    """Base of every error the orchestrator raises on purpose.

    Where a request is a batch, `index` is the failing item's position in it (from 0) and `field` the failing
    field's path within that item (within the request when there is no item), e.g. `payload` or `keys[0]`:
    data a door passes on (problem+json `index` and `field`) so that no caller parses the message."""

    index: int | None = None
    field: str | None = None

    def __init__(self, *args: object, index: int | None = None, field: str | None = None):
        super().__init__(*args)
        if index is not None:
            self.index = index
        if field is not None:
            self.field = field

    def at(self, index: int | None = None, field: str | None = None) -> Self:
        """This error, placed at item `index` (and `field`) of a batch; returns self to re-raise."""
        if index is not None:
            self.index = index
        if field is not None:
            self.field = field
        return self


class InvalidInput(OrchError):
    pass


class NotFound(InvalidInput):
    pass


class Conflict(OrchError):
    pass


class StaleLease(Conflict):
    pass


class IllegalTransition(Conflict):
    pass


class VerificationFailed(OrchError):
    pass


class PolicyRefused(OrchError):
    pass


class LedgerBusy(OrchError):
    def __init__(self, message: str, holder_pid: int | None = None):
        super().__init__(message)
        self.holder_pid = holder_pid


class NotAuthorized(OrchError):
    """No valid credentials (HTTP 401)."""


class Forbidden(NotAuthorized):
    """Valid credentials that do not allow this (HTTP 403): a missing scope or tenant."""


# One table: error family -> CLI exit code (DESIGN.md "Exit codes"). Most specific first.
EXIT_CODES: tuple[tuple[type[OrchError], int], ...] = (
    (InvalidInput, 1),
    (Conflict, 3),
    (VerificationFailed, 4),
    (PolicyRefused, 5),
    (LedgerBusy, 6),
    (NotAuthorized, 7),
)


def exit_code_for(error: OrchError) -> int:
    for family, code in EXIT_CODES:
        if isinstance(error, family):
            return code
    return 1


# One table: error family -> (HTTP status, stable problem type slug). Most specific first.
HTTP_PROBLEMS: tuple[tuple[type[OrchError], int, str], ...] = (
    (NotFound, 404, "not-found"),
    (InvalidInput, 400, "invalid-input"),
    (StaleLease, 409, "stale-lease"),
    (IllegalTransition, 409, "illegal-transition"),
    (Conflict, 409, "conflict"),
    (VerificationFailed, 422, "verification-failed"),
    (PolicyRefused, 403, "policy-refused"),
    (LedgerBusy, 503, "ledger-busy"),
    (Forbidden, 403, "forbidden"),
    (NotAuthorized, 401, "not-authorized"),
)
PROBLEM_BASE = "https://airgap-orch.dev/problems/"


def http_problem(error: OrchError) -> tuple[int, str]:
    """(status, problem type URI) for an error."""
    for family, status, slug in HTTP_PROBLEMS:
        if isinstance(error, family):
            return status, PROBLEM_BASE + slug
    return 500, PROBLEM_BASE + "internal"


def from_problem(problem_type: str, message: str, *, index: int | None = None,
                 field: str | None = None) -> OrchError:
    """The error a problem+json answer stands for (the client side of http_problem), with the answer's `index`
    and `field` when it has them."""
    slug = problem_type.removeprefix(PROBLEM_BASE)
    place = {"index": index if isinstance(index, int) and not isinstance(index, bool) else None,
             "field": field if isinstance(field, str) else None}
    for family, _status, known in HTTP_PROBLEMS:
        if known == slug:
            return family(message, **place)
    if slug in ("payload-too-large", "malformed-json", "unknown-route", "method-not-allowed"):
        return InvalidInput(message, **place)
    return OrchError(message, **place)
