"""The table of operations by API name (api.Route.name): each operation registers itself where it is written.

    @operation("quotas.set")
    def quota_set(ledger, *, tenant, ..., actor, tenants): ...

An operation takes the ledger, its params as keywords (JSON names: a route's path, query and body fields), and
`actor` and `tenants` (dispatch.Caller); a param whose JSON name is not the function's (`type`, `spec`) is mapped
by a small adapter beside the function, registered in its place. Claims and worker reports register their
`prepare` step with @prepared: params in, a validated request out (with `.apply(tx)`), which the local path applies
in a transaction of its own and the server's writer applies with others in one group commit.

This module imports nothing: dispatch.py imports the operation modules, which fill the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OPERATIONS: dict[str, Callable[..., dict[str, Any]]] = {}
PREPARED: dict[str, Callable[..., Any]] = {}
# Operations that also take the caller's `scopes` (dispatch.Caller.scopes): only those that answer about the caller.
TAKES_SCOPES: set[str] = set()


def operation(name: str, *, takes_scopes: bool = False
              ) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Register the decorated function as operation `name` (a second registration of one name is a bug);
    `takes_scopes`: it is also called with `scopes`, the caller's (None: every scope)."""

    def register(function: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if name in OPERATIONS:
            raise ValueError(f"operation {name!r} is registered twice")
        OPERATIONS[name] = function
        if takes_scopes:
            TAKES_SCOPES.add(name)
        return function

    return register


def prepared(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the prepare step of operation `name`, and as the operation itself its
    request applied in a transaction of its own."""

    def register(prepare: Callable[..., Any]) -> Callable[..., Any]:
        def run(ledger: Any, **params: Any) -> dict[str, Any]:
            request = prepare(**params)
            with ledger.transaction() as tx:
                return request.apply(tx)

        operation(name)(run)
        PREPARED[name] = prepare
        return prepare

    return register
