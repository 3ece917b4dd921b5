"""`airgap-orch demo` — being built."""

import click


@click.command("demo")
def demo() -> None:
    """Run the demo scenario."""
    raise click.ClickException("demo is not built yet")
