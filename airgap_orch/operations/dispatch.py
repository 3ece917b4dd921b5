"""Run an operation by its API name (airgap_orch/api.py) with JSON-shaped params.

Both doors end here: the CLI (on a ledger it opened) and the server's writer and readers (on the ledger it owns).
`Caller` carries who asks: the actor recorded in history, and the tenants a token is limited to.

The table is operations/registry.py's, filled by the operation modules themselves (@operation next to each
function); this module has no entry of its own per operation. The claims and worker reports (PREPARED) have a
`prepare` step: params in, a validated request out (operations/jobs.py ClaimRequest or Reports), which `run` applies
in a transaction of its own and the server's writer applies with other requests in one group commit. Both paths go
through `prepare`, so every check and cap holds on both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import validation
from ..errors import InvalidInput
from ..ledger import Ledger

# Each operation module registers its operations (registry.operation) as it is imported: this line is the one place
# that names them, once per module, never per operation.
from . import airgap, audit, backfills, identity, jobs, ledger, limits, replays, sources  # noqa: F401
from .registry import OPERATIONS, PREPARED, TAKES_SCOPES


@dataclass(frozen=True)
class Caller:
    actor: str = "cli"
    tenants: frozenset[str] | None = None  # None: every tenant (a local operator)
    scopes: frozenset[str] | None = None  # the token's scopes; None: every scope (a local operator, or --no-auth)


Prepared = jobs.Reports | jobs.ClaimRequest


LOCAL = Caller()


def run(led: Ledger, name: str, params: dict[str, Any], caller: Caller = LOCAL, *,
        text_checked: bool = False) -> dict[str, Any]:
    """Run operation `name`; unknown or malformed params are InvalidInput, never a crash. Text the ledger cannot
    store (validation.utf8_text: e.g. a command-line argument with bytes that are not UTF-8) is refused naming
    the param, unless the caller says its door has checked it already (the server checks every request)."""
    try:
        operation = OPERATIONS[name]
    except KeyError:
        raise InvalidInput(f"unknown operation {name!r}") from None
    return _call(name, functools.partial(operation, led), params, caller, text_checked)


def prepare(name: str, params: dict[str, Any], caller: Caller = LOCAL, *, text_checked: bool = False) -> Prepared:
    """The validated request of a PREPARED operation (a claim or a worker report), as `run` would apply it:
    refused, where `run` would refuse it, with the same error."""
    return _call(name, PREPARED[name], params, caller, text_checked)


def _call(name: str, function: Callable[..., Any], params: dict[str, Any], caller: Caller,
          text_checked: bool) -> Any:
    clean = {key: value for key, value in params.items() if key not in ("actor", "tenants", "scopes")}
    if not text_checked:
        validation.utf8_text(clean, "")
    if name in TAKES_SCOPES:
        clean["scopes"] = caller.scopes
    try:
        return function(**clean, actor=caller.actor, tenants=caller.tenants)
    except TypeError as exc:
        if "argument" in str(exc):
            raise InvalidInput(f"{name}: {str(exc).split(')', 1)[-1].strip() or exc}") from None
        raise
