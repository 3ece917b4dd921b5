"""Strict JSON for signed documents: UTF-8 only, no duplicate object keys, no NaN or Infinity.

Python's json keeps the last of duplicate keys and accepts NaN; either would let two different byte strings
mean the same signed document, or one byte string mean different things to different parsers.
"""

from __future__ import annotations

import json
from typing import Any


class StrictJSONError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"the key {key[:40]!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def loads_strict(data: bytes) -> Any:
    """Parse `data` as strict JSON; StrictJSONError (one line) on anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJSONError("it is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"it is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise StrictJSONError("it nests too deeply") from None
