"""`airgap-orch serve`: the control plane that owns the ledger."""

from __future__ import annotations

import math
import os
import stat
import sys
from pathlib import Path

import click

from .. import api
from ..errors import InvalidInput, OrchError
from . import job_logs
from .context import fail, json_option, settings
from .job_logs import job_log_options
from .keys import load_private_keys, passphrase_file_option, passphrase_prompt_option


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
@click.option("--bundle-key", "bundle_key_paths", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A PRIVATE key of this site that signs bundles `bundle export` writes through the server (repeat; "
                   "an online key, as TUF's timestamp key is). The file must be mode 0600.")
@click.option("--timestamp-key", "timestamp_key_paths", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A PRIVATE key of the trust root's timestamp role that signs the bundles' time anchors (repeat; "
                   "mode 0600). Without --bundle-key and --timestamp-key, `bundle export` is refused while serving.")
@job_log_options
@passphrase_file_option
@passphrase_prompt_option
@json_option
def serve(host: str, port: int, token_keys: tuple[Path, ...], no_auth: bool, group_commit: bool,
          handlers: tuple[str, ...], workers: int | None, allow_hosts: tuple[str, ...],
          allow_origins: tuple[str, ...], header_timeout: float, body_timeout: float, keepalive_timeout: float,
          max_connections: int, max_bundle_bytes: int, bundle_key_paths: tuple[Path, ...],
          timestamp_key_paths: tuple[Path, ...], passphrase_file: Path | None, passphrase_prompt: bool,
          job_log_lines: int, job_log_retention: str) -> None:
    """Own the ledger and serve the operations over HTTP until SIGTERM."""
    from ..server.connections import ConnectionLimits
    from ..server.main import ServerConfig, serve_forever

    if workers is not None and not handlers:
        raise click.UsageError("--workers runs embedded workers: name their handlers with --handler")

    if bool(bundle_key_paths) != bool(timestamp_key_paths):
        raise click.UsageError("--bundle-key and --timestamp-key go together: a bundle is signed by both")
    try:
        bundle_keys, timestamp_keys = _online_keys(bundle_key_paths, timestamp_key_paths, passphrase_file,
                                                   passphrase_prompt)
    except OrchError as error:
        fail(error)
    current = settings()
    try:
        log_limits = job_logs.limits(job_log_lines, job_log_retention)
    except OrchError as error:
        fail(error)
    limits = ConnectionLimits(header_timeout=header_timeout, body_timeout=body_timeout,
                              keepalive_timeout=keepalive_timeout, max_connections=max_connections,
                              max_bundle_bytes=max_bundle_bytes)
    config = ServerConfig(ledger_path=current.ledger_path, host=host, port=port, token_keys=list(token_keys),
                          no_auth=no_auth, group_commit=group_commit, lock_timeout=current.lock_timeout,
                          limits=limits, allow_hosts=list(allow_hosts), allow_origins=list(allow_origins),
                          bundle_keys=bundle_keys, timestamp_keys=timestamp_keys, job_log_limits=log_limits)

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


def _online_keys(bundle_paths: tuple[Path, ...], timestamp_paths: tuple[Path, ...], passphrase_file: Path | None,
                 prompt: bool) -> tuple[list, list]:
    """The bundle and timestamp keys `serve` signs exports with; each file must be its owner's only (mode 0600 or
    stricter), since a server keeps them loaded for as long as it runs."""
    if not bundle_paths:
        return [], []
    from ..operations.bundles import SigningKey

    for path in (*bundle_paths, *timestamp_paths):
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise InvalidInput(f"cannot read key {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise InvalidInput(f"key {path} is readable by others (mode {stat.S_IMODE(mode):04o}); an online key "
                               "must be its owner's only: chmod 600 it")
    loaded = load_private_keys([*bundle_paths, *timestamp_paths], passphrase_file, prompt)
    keys = [SigningKey(str(path), key) for path, key in loaded]
    return keys[:len(bundle_paths)], keys[len(bundle_paths):]
