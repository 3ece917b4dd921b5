"""Scopes: what a token may do. SCOPES below is the documentation and the code at once; each operation's scope is
named by its route (api.py), and OPERATION_SCOPES collects them. A route naming no scope (api.ANY_TOKEN: whoami,
which only tells a token its own claims) needs a valid token and nothing more.

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

from ..api import AIRGAP, BACKFILL, OPERATE, QUOTA, READ, ROUTES, WORKER
from ..errors import Forbidden, InvalidInput

if TYPE_CHECKING:
    from .tokens import Principal

ADMIN = "orch:admin"  # no route needs it on its own (see SCOPES)

# scope -> one line on what it allows. The order is the order of the README table.
SCOPES = MappingProxyType({
    READ: "See jobs, dead letters, sources, ledger info and verification, and the event stream.",
    OPERATE: "Produce and steer jobs: enqueue, cancel, recover expired leases, replay dead letters, pause and "
             "resume queues and sources, add sources, run due schedules.",
    QUOTA: "Change quotas, rate limits, concurrency limits and circuit breakers; every change needs a reason "
           "(X-Orch-Reason).",
    BACKFILL: "Create and manage backfills; each needs a reason and a ticket (X-Orch-Reason, X-Orch-Ticket).",
    WORKER: "Run jobs and nothing else: claim, heartbeat, ack, fail and release under a lease (least privilege).",
    AIRGAP: "Move state across the air gap: show and pin the trust root, export, plan and import bundles, list them, "
            "see and set the air-gap status, staleness mode and policy authority (every change is audited).",
    ADMIN: "Nothing on its own: it makes the totals of `ledger.info`, `ledger.verify`, `audit.verify`, `metrics` and "
           "`bundles.export` cover every tenant (site-wide metrics and ledger info, whole-ledger verify counts and "
           "failure details, a bundle export of every tenant); without it they cover the token's tenants.",
})

# The server's endpoints that are not operations, and the scope each needs.
ENDPOINT_SCOPES = {"events": READ, "metrics": READ}  # GET /events (the SSE stream), GET /metrics

# operation (api.Route.name, or an endpoint above) -> the scope it needs (None: any valid token): read from the
# routes, which name their scope, so a new operation needs no line here.
OPERATION_SCOPES = MappingProxyType({**{route.name: route.scope for route in ROUTES}, **ENDPOINT_SCOPES})

# Operations whose totals an orch:admin token reads for the whole site; any other token reads its tenants' only
# (named in SCOPES[ADMIN] too: a test keeps the two equal).
SITE_WIDE_OPERATIONS = frozenset({"ledger.info", "ledger.verify", "audit.verify", "metrics", "bundles.export"})


class ScopeMissing(Forbidden):
    """The token is valid but lacks the scope an operation needs (a NotAuthorized: exit 7, HTTP 403)."""


def scope_for(operation: str) -> str | None:
    """The scope `operation` (a route's name, or an ENDPOINT_SCOPES endpoint) needs, None when any valid token may
    call it; ValueError for one the table does not name (a server bug)."""
    try:
        return OPERATION_SCOPES[operation]
    except KeyError:
        raise ValueError(f"no scope is defined for operation {operation!r}") from None


def require(principal: Principal, scope: str | None) -> None:
    """Raise ScopeMissing unless the principal's token carries `scope` (None: no scope needed)."""
    if scope is None:
        return
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
