"""The SQL that changes job states agrees with the one transition table (orchestrator/states.py).

Claim and ack set states in queries.sql, where they are fast, instead of calling next_state(). Each such query
names the transitions it makes (`-- transitions: claim`); this test derives every state literal the query writes
and every state it selects rows in, and checks them against those transitions' targets and sources.
"""

from __future__ import annotations

import re

import pytest

from airgap_orch.ledger import sql
from airgap_orch.orchestrator.states import ALL_STATES, TRANSITIONS, sources

_WRITES_JOBS = re.compile(r"\b(?:UPDATE|INSERT INTO)\s+jobs\b")
_DECLARED = re.compile(r"^-- transitions: (.+)$", re.MULTILINE)
_LITERAL = re.compile(r"'([a-z_]+)'")
_SOURCE_FILTER = re.compile(r"\bstate\s*(?:=\s*'([a-z_]+)'|IN\s*\(([^)]*)\))")


def _top_level_items(text: str) -> list[str]:
    """Comma-separated items of a SET list, not splitting inside parentheses or CASE ... END."""
    items, depth, current = [], 0, []
    for token in re.split(r"(\(|\)|,|\bCASE\b|\bEND\b)", text):
        if token in ("(", "CASE"):
            depth += 1
        elif token in (")", "END"):
            depth -= 1
        if token == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(token)
    items.append("".join(current))
    return [item.strip() for item in items]


def _sets_state(query: str) -> bool:
    match = re.search(r"\bSET\b(.*?)(?:\bFROM\b|\bWHERE\b)", query, re.DOTALL)
    return match is not None and any(re.match(r"state\s*=", item) for item in _top_level_items(match.group(1)))


def state_literals(query: str) -> tuple[set[str], set[str]]:
    """(states the query writes into jobs.state, states it selects the rows to change in)."""
    match = re.search(r"\bSET\b(.*?)(?:\bFROM\b|\bWHERE\b)", query, re.DOTALL)
    assert match is not None, query
    written: set[str] = set()
    for item in _top_level_items(match.group(1)):
        if re.match(r"state\s*=", item):
            written |= set(_LITERAL.findall(item))
    where = query[match.end():]
    read: set[str] = set()
    for single, listed in _SOURCE_FILTER.findall(where):
        read |= {single} if single else set(_LITERAL.findall(listed))
    return written, read


def check(name: str, query: str) -> list[str]:
    """What is wrong with one job-writing query (empty when it agrees with the transition table)."""
    declared = _DECLARED.search(query)
    if declared is None:
        if "UPDATE" in query and not _sets_state(query):
            return []  # changes other columns only (e.g. leases_assign)
        return [f"{name} writes jobs but names no `-- transitions:`"]
    if declared.group(1).startswith("python"):
        written, _ = state_literals(query) if "UPDATE" in query else (set(), set())
        return [f"{name} says Python decides its states but writes {sorted(written)}"] if written else []
    events = [event.strip() for event in declared.group(1).split(",")]
    problems = [f"{name} names unknown transition {event!r}" for event in events if event not in TRANSITIONS]
    events = [event for event in events if event in TRANSITIONS]
    targets = {target for event in events for target in TRANSITIONS[event].values() if target is not None}
    allowed_sources = {state for event in events for state in sources(event)}
    written, read = state_literals(query)
    problems += [f"{name} writes unknown state {state!r}" for state in written - set(ALL_STATES)]
    problems += [f"{name} writes {state!r}, which none of {events} leads to" for state in written - targets]
    problems += [f"{name} makes {sorted(targets - written)} by its transitions but never writes them"
                 for _ in [0] if targets - written]
    problems += [f"{name} changes rows in state {state!r}, where none of {events} applies"
                 for state in read - allowed_sources]
    return problems


def job_writing_queries() -> dict[str, str]:
    return {name: query for name, query in sql.queries().items() if _WRITES_JOBS.search(query)}


def test_the_claim_and_ack_queries_are_among_those_checked():
    assert {"claim", "claim_outside_blocked", "claim_rows", "ack", "ack_and_claim", "jobs_update"} <= set(
        job_writing_queries())


@pytest.mark.parametrize("name", sorted(job_writing_queries()))
def test_every_state_a_query_writes_or_selects_agrees_with_the_transition_table(name):
    assert check(name, job_writing_queries()[name]) == []


@pytest.mark.parametrize(("query", "wrong"), [
    ("-- transitions: claim\nUPDATE jobs SET state = 'running' WHERE state = 'queued'", "writes 'running'"),
    ("-- transitions: claim\nUPDATE jobs SET state = 'leased' WHERE state = 'waiting'", "in state 'waiting'"),
    ("-- transitions: ack\nUPDATE jobs SET state = CASE WHEN x THEN 'canceled' ELSE 'succeeded' END WHERE true",
     "writes 'canceled'"),
    ("UPDATE jobs SET state = 'leased' WHERE state = 'queued'", "names no"),
    ("INSERT INTO jobs SELECT * FROM incoming", "names no"),
    ("-- transitions: launch\nUPDATE jobs SET state = 'leased' WHERE state = 'queued'", "unknown transition"),
    ("-- transitions: python\nUPDATE jobs SET state = 'queued' WHERE true", "Python decides"),
])
def test_the_check_catches_sql_that_disagrees_with_the_table(query, wrong):
    assert any(wrong in problem for problem in check("q", query)), check("q", query)
