"""Human rendering of operation results (the --json form is the result dict itself)."""

from __future__ import annotations

import json
from typing import Any

_JOB_COLUMNS = ("job_id", "state", "tenant", "type", "attempts", "run_at")


def human(result: dict[str, Any]) -> str:
    if "jobs" in result and isinstance(result["jobs"], list):
        rows = [{**job, "state": f"{job['state']} (lease expired)"} if job.get("lease_expired") else job
                for job in result["jobs"]]
        return _table(rows, _JOB_COLUMNS) or "no jobs"
    if "leases" in result:
        if not result["leases"]:
            return "no jobs ready"
        return _table(result["leases"], ("job_id", "lease_id", "attempt", "type", "lease_expires_at"))
    if "lines" in result and isinstance(result["lines"], list):
        return "\n".join(log_line(line) for line in result["lines"]) or "no log lines"
    if "events" in result:
        return "\n".join(json.dumps(event) for event in result["events"])
    lines = []
    for key, value in result.items():
        if key == "history" and isinstance(value, list):
            lines.append("history:")
            for entry in value:
                lines.append(f"  {entry['seq']:>6}  {entry['occurred_at']}  {entry['event_type']:<22} "
                             f"{entry['from_state'] or '-':>9} -> {entry['to_state']:<11} "
                             f"attempt {entry['attempt']}  {entry['actor']}  {entry['reason'] or ''}".rstrip())
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value)
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)  # unset, not the text "None"


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not rows:
        return ""
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(cell[i]) for cell in cells)) for i, column in enumerate(columns)]
    header = "  ".join(column.upper().ljust(widths[i]) for i, column in enumerate(columns))
    body = ["  ".join(cell[i].ljust(widths[i]) for i in range(len(columns))).rstrip() for cell in cells]
    return "\n".join([header, *body])


def log_line(line: dict[str, Any]) -> str:
    """One job log line: seq, time, level, attempt, message."""
    return f"{line['seq']:>6}  {line['at']}  {line['level']:<7}  attempt {line['attempt']}  {line['message']}"
