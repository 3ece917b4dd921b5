"""`airgap-orch ledger init | info | verify | events`."""

from __future__ import annotations

import click

from .context import command, invoke, progress_bar, settings
from .paging import invoke_listing


@click.group("ledger")
def group() -> None:
    """Create and inspect the ledger file."""


@command(group, "init")
@click.option("--site-id", help="This site's identity (default: a generated one).")
def init(site_id: str | None) -> dict:
    """Create a new ledger with a site identity."""
    from ..operations import ledger as ops

    return ops.init(settings().ledger_path, site_id=site_id, lock_timeout=settings().lock_timeout)


@command(group, "info")
def info() -> dict:
    """Site id, schema version, job counts by state, history head."""
    return invoke("ledger.info", {})


@command(group, "verify")
def verify() -> dict:
    """Check schema version, the history hash chain, and state tables against history (exit 4 if not)."""
    with progress_bar("verifying hash chains") as bar:
        return invoke("ledger.verify", {}, progress=bar)


@command(group, "events")
@click.option("--after-seq", type=click.IntRange(min=0), default=0, help="Only events after this history seq.")
@click.option("--limit", type=click.IntRange(min=1, max=100_000), default=1000, show_default=True)
def events(after_seq: int, limit: int) -> dict:
    """Transitions as orch.event.v1 envelopes, oldest first."""
    return invoke_listing("ledger.events", {"after_seq": after_seq}, limit)
