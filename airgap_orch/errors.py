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
    └── NotAuthorized           refused token or scope
"""

from __future__ import annotations


class OrchError(Exception):
    """Base of every error the orchestrator raises on purpose."""


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
    pass


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
