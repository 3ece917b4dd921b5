"""Scopes: what a token may do. The two tables below are the documentation and the code at once.

Scopes do not imply one another: an operator who also lists jobs carries `orch:operate` and `orch:read`.
A request is allowed when the token carries the operation's scope (`require`) and names the job's tenant
(`can_see_tenant`); the server answers another tenant's job as not found, never as forbidden.

Totals a token reads count only its tenants. `orch:admin` allows nothing on its own: it makes the totals of the
operations in SITE_WIDE_OPERATIONS cover the whole site (`tenant_reach`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..errors import Forbidden, InvalidInput

if TYPE_CHECKING:
    from .tokens import Principal

READ = "orch:read"
OPERATE = "orch:operate"
QUOTA = "orch:quota"
BACKFILL = "orch:backfill"
WORKER = "orch:worker"
ADMIN = "orch:admin"

# scope -> one line on what it allows. The order is the order of the README table.
SCOPES = MappingProxyType({
    READ: "See jobs, dead letters, sources, ledger info and verification, and the event stream.",
    OPERATE: "Produce and steer jobs: enqueue, cancel, recover expired leases, replay dead letters, pause and "
             "resume queues and sources, add sources, run due schedules.",
    QUOTA: "Change quotas, rate limits, concurrency limits and circuit breakers; every change needs a reason "
           "(X-Orch-Reason).",
    BACKFILL: "Create and manage backfills; each needs a reason and a ticket (X-Orch-Reason, X-Orch-Ticket).",
    WORKER: "Run jobs and nothing else: claim, heartbeat, ack, fail and release under a lease (least privilege).",
    ADMIN: "Nothing on its own: it makes the totals of the operations listed here cover every tenant (site-wide "
           "metrics and ledger info, whole-ledger verify counts and failure details); without it they cover the "
           "token's tenants.",
})

# operation (the function name in airgap_orch/operations/) -> the scope it needs.
OPERATION_SCOPES = MappingProxyType({
    "enqueue": OPERATE,
    "claim": WORKER,
    "heartbeat": WORKER,
    "ack": WORKER,
    "fail": WORKER,
    "release": WORKER,
    "cancel": OPERATE,
    "list": READ,
    "show": READ,
    "recover": OPERATE,
    "deadletter_list": READ,
    "replay": OPERATE,
    "ledger_info": READ,
    "ledger_verify": READ,
    "events": READ,
    "audit_list": READ,
    "audit_verify": READ,
    "backfill_create": BACKFILL,
    "backfill_list": READ,
    "backfill_show": READ,
    "backfill_cancel": BACKFILL,
    "limits_set": QUOTA,
    "limits_read": READ,
    "queue_pause": OPERATE,
    "source_add": OPERATE,
    "source_pause": OPERATE,
    "source_list": READ,
    "source_show": READ,
    "schedules_run": OPERATE,
    "metrics": READ,
})

# Operations whose totals an orch:admin token reads for the whole site; any other token reads its tenants' only.
SITE_WIDE_OPERATIONS = frozenset({"ledger_info", "ledger_verify", "audit_verify", "metrics"})


class ScopeMissing(Forbidden):
    """The token is valid but lacks the scope an operation needs (a NotAuthorized: exit 7, HTTP 403)."""


def scope_for(operation: str) -> str:
    """The scope `operation` needs; ValueError for an operation the table does not name (a server bug)."""
    try:
        return OPERATION_SCOPES[operation]
    except KeyError:
        raise ValueError(f"no scope is defined for operation {operation!r}") from None


def require(principal: Principal, scope: str) -> None:
    """Raise ScopeMissing unless the principal's token carries `scope`."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    if scope not in principal.scopes:
        raise ScopeMissing(f"token lacks scope {scope}")


def can_see_tenant(principal: Principal, tenant: str) -> bool:
    """True when the token names `tenant`; the server answers other tenants' jobs as not found."""
    return tenant in principal.tenants


def tenant_reach(principal: Principal, operation: str) -> frozenset[str] | None:
    """The tenants `operation` covers for this token: every tenant (None) for a site-wide operation and an
    orch:admin token, else the tenants the token names."""
    if operation in SITE_WIDE_OPERATIONS and ADMIN in principal.scopes:
        return None
    return frozenset(principal.tenants)


def checked_scopes(requested: Iterable[str]) -> tuple[str, ...]:
    """Known scopes, deduplicated, in table order; InvalidInput names an unknown one."""
    wanted = list(requested)
    for scope in wanted:
        if scope not in SCOPES:
            raise InvalidInput(f"unknown scope {scope!r}; known scopes: {', '.join(SCOPES)}")
    if not wanted:
        raise InvalidInput(f"a token needs at least one scope; known scopes: {', '.join(SCOPES)}")
    return tuple(scope for scope in SCOPES if scope in wanted)
