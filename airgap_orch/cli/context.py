"""Global options, ledger opening, --json, and the one place errors become exit codes."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import OrchError, exit_code_for
from ..validation import DEFAULT_LOCK_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from ..ledger import Ledger
    from . import remote

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
        """The URL of the server to send commands to: --server, else a live server that owns --ledger."""
        target = self.server_target()
        return target.url if target is not None else None

    def server_target(self) -> remote.Server | None:
        """--server, else the live server that owns --ledger (by its discovery file; a symlink to the ledger
        finds the same one), else None."""
        from . import remote  # imported here, like the ledger: a local command needs no HTTP client

        if self.server_url:
            return remote.Server(self.server_url)
        from ..server import discovery

        record = discovery.live_server(self.ledger_path)
        if record is None:
            return None
        return remote.Server(record["url"], record["pid"], Path(record.get("ledger") or self.ledger_path))


def invoke(name: str, params: dict[str, Any], *, progress: Callable[[int, int], None] | None = None,
           upload: Path | None = None, download: Path | None = None,
           local: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run operation `name` where it lives: on the server that owns the ledger, else on the ledger. Locally,
    `progress(done, total)` hears how long work goes (a server does the work out of sight). A server that does
    not show life within --lock-timeout ends the command with exit 6, as a held ledger does (cli/remote.py).
    `upload`: the bundle file of an upload operation (api.Route.upload), streamed to a server as the body (then
    `progress` hears how much of it was sent), or named to the local operation as its `bundle` param. `download`: the
    file a download operation (api.Route.download) writes: the server's answer, written there as it arrives (then
    `progress` hears how much came), or named to the local operation as its `out` param. `local`: params only the
    local operation takes (objects that do not travel, such as the keys the CLI loaded)."""
    current = settings()
    target = current.server_target()
    if target is not None:
        from . import remote

        if upload is not None:
            return remote.upload(target, current.token, name, params, upload, bound=current.lock_timeout,
                                 progress=progress)
        if download is not None:
            return remote.download(target, current.token, name, params, download, bound=current.lock_timeout,
                                   progress=progress)
        return remote.call(target, current.token, name, params, bound=current.lock_timeout)
    from ..operations import dispatch

    if upload is not None:
        params = {**params, "bundle": str(upload)}
    if download is not None:
        params = {**params, "out": str(download)}
    params = {**params, **(local or {})}
    with current.open_ledger() as ledger:
        return dispatch.run(ledger, name, {**params, "progress": progress} if progress is not None else params)


class ProgressBar:
    """A progress bar on stderr for long local work: see progress_bar()."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.finished = False

    def __call__(self, done: int, total: int) -> None:
        if self.finished:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)
        if done >= total:
            self.finished = True
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[ProgressBar | None]:
    """A bar only on a terminal and without --json; None otherwise (scripts and pipes see nothing). The bar is
    closed on the way out, also when the work fails."""
    bar = ProgressBar(label) if sys.stderr.isatty() and not settings().json else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


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
