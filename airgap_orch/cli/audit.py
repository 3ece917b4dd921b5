"""`airgap-orch audit list | verify`: the hash-chained log of operator actions."""

from __future__ import annotations

import click

from .context import command, invoke, settings
from .paging import invoke_listing


@click.group("audit")
def group() -> None:
    """Operator actions (cancels, replays, backfills, ...) with actor, time, reason and ticket."""


@command(group, "list")
@click.option("--since", help="Only entries at or after this ISO 8601 time.")
@click.option("--action", help="Only entries of this action (e.g. quota.set).")
@click.option("--actor", help="Only entries by this actor (e.g. token:alice, cli).")
@click.option("--limit", type=int, default=1000, show_default=True)
@click.option("--after-seq", type=int, default=0, show_default=True, help="Only entries after this seq (paging).")
def list_(since: str | None, action: str | None, actor: str | None, limit: int, after_seq: int) -> dict | None:
    """Audit entries, oldest first."""
    result = invoke_listing("audit.list", {"since": since, "action": action, "by": actor, "after_seq": after_seq},
                            limit)
    if settings().json:
        return result
    if not result["entries"]:
        click.echo("no audit entries")
        return None
    for entry in result["entries"]:
        fields = [f"{entry['seq']:>6}", entry["at"], f"{entry['action']:<16}", entry["actor"],
                  entry["target"] or "-", f"reason={entry['reason']!r}" if entry["reason"] else "",
                  f"ticket={entry['ticket']!r}" if entry["ticket"] else ""]
        click.echo("  ".join(field for field in fields if field))
    return None


@command(group, "verify")
def verify() -> dict:
    """Recompute the audit chain; exit 4 naming the first bad entry."""
    return invoke("audit.verify", {})
