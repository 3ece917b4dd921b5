"""Entry point: `airgap-orch [--ledger PATH] [--lock-timeout S] [--json] GROUP COMMAND ...`."""

from __future__ import annotations

from pathlib import Path

import click

from .. import __version__
from .context import DEFAULT_LOCK, Settings, ledger_path_default


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path),
              default=ledger_path_default, show_default="$AIRGAP_ORCH_LEDGER or ./airgap-orch.duckdb",
              help="The ledger file.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=DEFAULT_LOCK, show_default=True,
              help="Seconds to wait for another process to release the ledger (then exit 6).")
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
    from .demo import demo
    from .serve import serve

    cli.add_command(demo)
    cli.add_command(serve)


_register()


def main() -> None:
    cli(prog_name="airgap-orch")


if __name__ == "__main__":
    main()
