"""Globally unique, time-ordered identifiers (UUIDv7, RFC 9562): jobs move between sites."""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> str:
    return uuid7s(1)[0]


def uuid7s(count: int) -> list[str]:
    """`count` UUIDv7s for one moment (a batch of new jobs): 48-bit Unix milliseconds, version 7, 74 random
    bits (12 in rand_a, 62 in rand_b after the variant). One read of the clock and of the OS random source."""
    head = (time.time_ns() // 1_000_000 & ((1 << 48) - 1)) << 80 | 0x7 << 76 | 0b10 << 62
    raw = os.urandom(10 * count)
    out = []
    for start in range(0, 10 * count, 10):
        rand = int.from_bytes(raw[start:start + 10], "big")  # 80 bits: the top 12 and the low 62 are used
        text = (head | (rand >> 68) << 64 | (rand & ((1 << 62) - 1))).to_bytes(16, "big").hex()
        out.append(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")
    return out


def new_lease_id() -> str:
    return str(uuid.uuid4())
