"""Fair turns among tenants that share a queue (start-time fair queueing over one integer, `fair_seq`).

A new job's turn is max(its tenant's latest turn + 1, the turn claims have reached). Claims take jobs by
priority, then turn. So a tenant with 10 jobs queued behind another's 10,000 gets every other claim, and a
tenant that was idle banks no turns: it starts at the turn claims have reached.

The two counters live in the ledger's cache and are rebuilt from the jobs table after a reopen or rollback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..ledger import Transaction


@dataclass
class _Turns:
    reached: int = 0  # the turn of the latest claimed job
    last: dict[str, int] = field(default_factory=dict)  # tenant -> latest turn given


def _turns(tx: Transaction) -> _Turns:
    turns = tx.cache.get("fairness")
    if turns is None:
        turns = _Turns()
        queued_turns = []
        for tenant, last_turn, next_turn in tx.fetch("fairness_turns"):
            turns.last[tenant] = int(last_turn or 0)
            if next_turn is not None:
                queued_turns.append(int(next_turn))
        turns.reached = min(queued_turns) if queued_turns else max(turns.last.values(), default=0)
        tx.cache["fairness"] = turns
    return turns


def assign(tx: Transaction, tenants: Iterable[str]) -> list[int]:
    """Turns for new jobs of these tenants, in order."""
    turns = _turns(tx)
    out = []
    for tenant in tenants:
        turn = max(turns.last.get(tenant, 0) + 1, turns.reached)
        turns.last[tenant] = turn
        out.append(turn)
    return out


def claimed(tx: Transaction, claimed_turns: Iterable[int | None]) -> None:
    """Move the reached turn forward past jobs just claimed."""
    turns = _turns(tx)
    turns.reached = max([turns.reached, *(turn for turn in claimed_turns if turn is not None)])
