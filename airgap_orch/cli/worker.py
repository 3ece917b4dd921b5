"""`airgap-orch worker run` (in-process worker runner) — being built."""

import click


@click.group("worker")
def group() -> None:
    """Run job handlers in this process."""
