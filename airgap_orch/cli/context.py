"""Global options, ledger opening, --json, and the one place errors become exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import OrchError, exit_code_for
from ..validation import DEFAULT_LOCK_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from ..ledger import Ledger

DEFAULT_LEDGER = "airgap-orch.duckdb"


@dataclass
class Settings:
    ledger_path: Path
    lock_timeout: float
    json: bool = False
    server_url: str | None = None
    token: str | None = None

    def open_ledger(self) -> Ledger:
        from ..ledger import Ledger  # imported here: a command sent to a server needs no DuckDB

        return Ledger.open(self.ledger_path, lock_timeout=self.lock_timeout)

    def server(self) -> str | None:
        """The server to send commands to: --server, else a live server that owns --ledger."""
        if self.server_url:
            return self.server_url
        from ..server import discovery

        record = discovery.live_server(self.ledger_path)
        return record["url"] if record else None


def invoke(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run operation `name` where it lives: on the server that owns the ledger, else on the ledger."""
    current = settings()
    url = current.server()
    if url is not None:
        from ..sdk.client import OrchClient

        return OrchClient(url, current.token).call(name, params)
    from ..operations import dispatch

    with current.open_ledger() as ledger:
        return dispatch.run(ledger, name, params)


def settings() -> Settings:
    return click.get_current_context().find_root().obj


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().obj.json = True


json_option = click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=_set_json,
                           is_eager=True, help="Print machine-readable JSON.")


def command(group: click.Group, name: str, **kwargs: Any) -> Callable:
    """Register a command that returns a result dict (or None); handles --json, output and errors."""

    def wrap(function: Callable[..., Any]) -> click.Command:
        @functools.wraps(function)
        def run(*args: Any, **params: Any) -> None:
            try:
                result = function(*args, **params)
            except OrchError as error:
                fail(error)
            if result is not None:
                emit(result)

        return group.command(name, **kwargs)(json_option(run))

    return wrap


def emit(result: dict[str, Any]) -> None:
    from .output import human

    if settings().json:
        click.echo(json.dumps(result, default=str))
    else:
        click.echo(human(result))


def fail(error: OrchError) -> None:
    code = exit_code_for(error)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    root = click.get_current_context().find_root().obj
    if root is not None and root.json:
        click.echo(json.dumps({"error": {"type": type(error).__name__, "message": message, "exit_code": code}}),
                   err=True)
    else:
        click.echo(f"airgap-orch: error: {message}", err=True)
    sys.exit(code)


def ledger_path_default() -> str:
    return os.environ.get("AIRGAP_ORCH_LEDGER", DEFAULT_LEDGER)


DEFAULT_LOCK = DEFAULT_LOCK_TIMEOUT_SECONDS
