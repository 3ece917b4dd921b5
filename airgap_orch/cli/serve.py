"""`airgap-orch serve`: the control plane that owns the ledger."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import OrchError
from .context import fail, json_option, settings


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="0 picks a free port (see the first line printed and the discovery file).")
@click.option("--token-key", "token_keys", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Public key (PEM) whose tokens the server accepts (repeatable).")
@click.option("--no-auth", is_flag=True, help="Accept requests without a token (only on loopback).")
@click.option("--group-commit/--no-group-commit", default=True, show_default=True,
              help="Coalesce concurrent worker requests into one transaction.")
@click.option("--handler", "handlers", multiple=True, metavar="JOBTYPE=module:function",
              help="Run this handler in embedded SDK workers (repeatable).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Embedded SDK workers to run with --handler (default 1); each runs up to 4 handlers at once.")
@json_option
def serve(host: str, port: int, token_keys: tuple[Path, ...], no_auth: bool, group_commit: bool,
          handlers: tuple[str, ...], workers: int | None) -> None:
    """Own the ledger and serve the operations over HTTP until SIGTERM."""
    from ..server.main import ServerConfig, serve_forever

    if workers is not None and not handlers:
        raise click.UsageError("--workers runs embedded workers: name their handlers with --handler")

    current = settings()
    config = ServerConfig(ledger_path=current.ledger_path, host=host, port=port, token_keys=list(token_keys),
                          no_auth=no_auth, group_commit=group_commit, lock_timeout=current.lock_timeout)

    def announce(line: str) -> None:
        print(line, flush=True)

    try:
        if handlers:
            from ..server.embedded import serve_embedded
            from ..worker import load_handlers

            serve_embedded(config, load_handlers(handlers), workers or 1, announce=announce)
        else:
            serve_forever(config, announce=announce)
    except OrchError as error:
        fail(error)
    sys.exit(0)
