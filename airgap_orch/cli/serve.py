"""`airgap-orch serve`: the control plane that owns the ledger."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from .. import api
from ..errors import OrchError
from .context import fail, json_option, settings


def _seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value):  # FloatRange lets NaN through: it compares false with both bounds
        raise click.BadParameter("nan is not a number of seconds", ctx=ctx, param=param)
    return value


_TIMEOUT = click.FloatRange(min=0.1, max=3600.0)


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
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests whose Host header is NAME, e.g. the name remote workers use for a server "
                   "bound to 0.0.0.0 (repeatable). Other names get 421.")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="Let requests from web pages of ORIGIN (scheme://host[:port]) through (repeatable); requests "
                   "with any other Origin header get 403.")
@click.option("--header-timeout", type=_TIMEOUT, default=10.0, show_default=True, callback=_seconds,
              help="Seconds a request head may take from its first byte; then 408 and the connection is closed.")
@click.option("--body-timeout", type=_TIMEOUT, default=60.0, show_default=True, callback=_seconds,
              help="Seconds a request body may take to arrive; then 408 and the connection is closed.")
@click.option("--keepalive-timeout", type=_TIMEOUT, default=30.0, show_default=True, callback=_seconds,
              help="Seconds an idle connection (no request in progress) stays open.")
@click.option("--max-connections", type=click.IntRange(1, 100_000), default=1024, show_default=True,
              help="Open connections at most; the next one gets 503 and is closed.")
@click.option("--max-bundle-bytes", type=click.IntRange(min=1, max=api.MAX_BUNDLE_BYTES), default=api.MAX_BUNDLE_BYTES,
              show_default=True, help="Largest bundle `bundle plan` and `bundle import` may send (default: the bundle "
                                      "format's cap); a larger one gets 413.")
@json_option
def serve(host: str, port: int, token_keys: tuple[Path, ...], no_auth: bool, group_commit: bool,
          handlers: tuple[str, ...], workers: int | None, allow_hosts: tuple[str, ...],
          allow_origins: tuple[str, ...], header_timeout: float, body_timeout: float, keepalive_timeout: float,
          max_connections: int, max_bundle_bytes: int) -> None:
    """Own the ledger and serve the operations over HTTP until SIGTERM."""
    from ..server.connections import ConnectionLimits
    from ..server.main import ServerConfig, serve_forever

    if workers is not None and not handlers:
        raise click.UsageError("--workers runs embedded workers: name their handlers with --handler")

    current = settings()
    limits = ConnectionLimits(header_timeout=header_timeout, body_timeout=body_timeout,
                              keepalive_timeout=keepalive_timeout, max_connections=max_connections,
                              max_bundle_bytes=max_bundle_bytes)
    config = ServerConfig(ledger_path=current.ledger_path, host=host, port=port, token_keys=list(token_keys),
                          no_auth=no_auth, group_commit=group_commit, lock_timeout=current.lock_timeout,
                          limits=limits, allow_hosts=list(allow_hosts), allow_origins=list(allow_origins))

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
