"""Entry point: `airgap-orch [--ledger PATH] [--lock-timeout S] [--json] GROUP COMMAND ...`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from .. import __version__
from ..validation import MAX_LOCK_TIMEOUT_SECONDS
from .context import DEFAULT_LOCK, Settings, ledger_path_default


def _refuse_nan(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value):  # FloatRange lets NaN through: it compares false with both bounds
        raise click.BadParameter("nan is not a number of seconds", ctx=ctx, param=param)
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path),
              default=ledger_path_default, show_default="$AIRGAP_ORCH_LEDGER or ./airgap-orch.duckdb",
              help="The ledger file.")
@click.option("--lock-timeout", type=click.FloatRange(min=0, max=MAX_LOCK_TIMEOUT_SECONDS), default=DEFAULT_LOCK,
              show_default=True, callback=_refuse_nan,
              help="Seconds to wait for another process to release the ledger, or for a sign of life from the "
                   "server a command goes to (then exit 6).")
@click.option("--json", "json_output", is_flag=True, help="Print machine-readable JSON.")
@click.option("--server", "server_url", envvar="AIRGAP_ORCH_SERVER", metavar="URL",
              help="Send commands to this server (default: the live server that owns --ledger, if any).")
@click.option("--token", envvar="AIRGAP_ORCH_TOKEN", help="Bearer token for the server ($AIRGAP_ORCH_TOKEN).")
@click.version_option(__version__, prog_name="airgap-orch")
@click.pass_context
def cli(ctx: click.Context, ledger_path: Path, lock_timeout: float, json_output: bool, server_url: str | None,
        token: str | None) -> None:
    """Job orchestrator for air-gapped sites, on an embedded DuckDB ledger."""
    ctx.obj = Settings(ledger_path=ledger_path, lock_timeout=lock_timeout, json=json_output,
                       server_url=server_url, token=token)


def _register() -> None:
    from . import deadletter, jobs, ledger, worker

    for group in (ledger.group, jobs.group, deadletter.group, worker.group):
        cli.add_command(group)
    from . import keys, tokens
    cli.commands.update(keys=keys.group, tokens=tokens.group)
    from . import audit, backfill, limits
    cli.commands.update(audit=audit.group, backfill=backfill.group)
    for group in limits.GROUPS:
        cli.add_command(group)
    from . import sources
    for group in sources.GROUPS:
        cli.add_command(group)
    from . import bundle, trust
    cli.commands.update(trust=trust.group, bundle=bundle.group, airgap=bundle.airgap_group)
    from .demo import demo
    from .serve import serve
    from .whoami import whoami

    cli.add_command(demo)
    cli.add_command(serve)
    cli.add_command(whoami)


_register()


def main() -> None:
    """Run the CLI; click's own usage errors become one line too (a JSON object with --json), exit 2."""
    try:
        cli.main(prog_name="airgap-orch", standalone_mode=False)
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else "airgap-orch"
        _usage_exit(f"{' '.join(error.format_message().split())} (see `{where} --help`)", error.exit_code)
    except click.ClickException as error:
        _usage_exit(" ".join(error.format_message().split()), error.exit_code)
    except click.exceptions.Abort:
        _usage_exit("aborted", 1)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    sys.exit(0)


def _usage_exit(message: str, code: int) -> None:
    if "--json" in sys.argv[1:]:
        click.echo(json.dumps({"error": {"type": "UsageError", "message": message, "exit_code": code}}), err=True)
    else:
        click.echo(f"airgap-orch: error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
