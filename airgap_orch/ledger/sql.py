"""Loads `queries.sql` (named queries) and `migrations/NNNN_*.sql` (numbered schema changes)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
_SECTION = re.compile(r"^-- (name|fragment): ([a-z_]+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"\{\{([a-z_]+)\}\}")


@functools.cache
def queries() -> dict[str, str]:
    """Named queries from queries.sql, with the fragments they include ({{name}}) filled in."""
    return parse((HERE / "queries.sql").read_text(encoding="utf-8"))


def parse(text: str) -> dict[str, str]:
    """Queries by name from the text of a queries file (see queries.sql for its form)."""
    parts = _SECTION.split(text)
    found: dict[str, dict[str, str]] = {"name": {}, "fragment": {}}
    for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        if name in found[kind]:
            raise ValueError(f"the queries file defines the {kind} {name} twice")
        found[kind][name] = body.strip()
    fragments = {name: "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
                 for name, body in found["fragment"].items()}

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in fragments:
            raise ValueError(f"the queries file includes an unknown fragment {{{{{match.group(1)}}}}}")
        return fragments[match.group(1)]

    return {name: _INCLUDE.sub(fill, body) for name, body in found["name"].items()}


def migrations() -> list[tuple[int, str, str]]:
    """[(version, filename, sql)] in order."""
    found = []
    for path in sorted((HERE / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), path.name, path.read_text(encoding="utf-8")))
    return found


def latest_version() -> int:
    return migrations()[-1][0]
