"""Loads `queries.sql` (named queries) and `migrations/NNNN_*.sql` (numbered schema changes)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@functools.cache
def queries() -> dict[str, str]:
    text = (HERE / "queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def migrations() -> list[tuple[int, str, str]]:
    """[(version, filename, sql)] in order."""
    found = []
    for path in sorted((HERE / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), path.name, path.read_text(encoding="utf-8")))
    return found


def latest_version() -> int:
    return migrations()[-1][0]
