"""Who is asking: `auth.whoami` answers the caller's subject, tenants and scopes from the token the door verified
(the console reads it to show only the pages and buttons the token may use). It reads nothing from the ledger."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..auth.scopes import SCOPES
from ..ledger import Ledger
from .registry import operation

TOKEN_ACTOR = "token:"  # server/app.py Door.caller: the actor of a verified token


@operation("auth.whoami", takes_scopes=True)
def whoami(ledger: Ledger, *, actor: str = "cli", tenants: Collection[str] | None = None,
           scopes: Collection[str] | None = None) -> dict[str, Any]:
    """`authenticated` is false for a local operator and on a server started with --no-auth: then `subject` is
    None, `tenants` None (every tenant) and `scopes` every scope."""
    authenticated = actor.startswith(TOKEN_ACTOR)
    return {"subject": actor.removeprefix(TOKEN_ACTOR) if authenticated else None, "actor": actor,
            "authenticated": authenticated, "tenants": sorted(tenants) if tenants is not None else None,
            "scopes": [scope for scope in SCOPES if scopes is None or scope in scopes]}
