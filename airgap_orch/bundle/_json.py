"""Strict JSON for signed documents: the parser every door uses (validation.parse_json: UTF-8 only, no duplicate
object keys, no NaN or Infinity, no lone surrogates), raising StrictJSONError so each bundle step can turn it into
its own typed error.

Python's json keeps the last of duplicate keys and accepts NaN; either would let two different byte strings
mean the same signed document, or one byte string mean different things to different parsers.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..validation import parse_json


class StrictJSONError(ValueError):
    pass


def loads_strict(data: bytes) -> Any:
    """Parse `data` as strict JSON; StrictJSONError (one line) on anything else."""
    try:
        return parse_json(data, "it", hint="the document must be one JSON object")
    except InvalidInput as exc:
        raise StrictJSONError(str(exc)) from None
