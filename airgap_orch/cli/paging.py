"""Listings from the CLI: `--limit N` lists N rows however many pages that takes (a page holds at most
validation.MAX_PAGE_ROWS). Each page is one invoke(): one request to the server, or one short read of the ledger."""

from __future__ import annotations

from typing import Any

from .. import api
from .context import invoke


def invoke_listing(name: str, params: dict[str, Any], limit: int) -> dict[str, Any]:
    """Up to `limit` rows of listing `name`, answered as one listing (the last page's other fields, e.g. last_seq,
    and no cursor: the CLI continues with --after-seq where a listing has it)."""
    result = api.read_pages(invoke, name, params, limit)
    result.pop("next_cursor", None)
    return result
