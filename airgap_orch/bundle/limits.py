"""Every size and count cap of the bundle format, in one place. Writers refuse to exceed a cap and readers
refuse input beyond one (SizeLimitError, "size:*") before parsing it, so a hostile file costs bounded memory
and time. Caps are part of the format: raising one means old readers refuse new bundles.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# DSSE envelope (`envelope.dsse.json`): the manifest as base64 payload plus signatures.
MAX_ENVELOPE_BYTES = 4 * MIB
# Signatures in one envelope: each costs an Ed25519 verification, so a padded list cannot burn CPU.
MAX_ENVELOPE_SIGNATURES = 32

# One TUF root (`trust/root-<N>.json`); python-tuf's client defaults to 512000 bytes for root too.
MAX_ROOT_BYTES = 512 * KIB
# Root versions one bundle may carry (each rotation the target may not hold yet).
MAX_ROOTS_PER_BUNDLE = 64
# Keys per role and sites per root: a root stays small enough to read and to verify.
MAX_KEYS_PER_ROLE = 32
MAX_SITES = 256

# The signed time anchor (`time-anchor.json`).
MAX_TIME_ANCHOR_BYTES = 64 * KIB

# The tar container.
MAX_MEMBER_NAME_BYTES = 100  # the ustar name field; the writer never uses the prefix field
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 4 * GIB  # below ustar's 8 GiB - 1 limit of an 11-digit octal size field
MAX_ARCHIVE_BYTES = 64 * GIB


@dataclass(frozen=True)
class TarLimits:
    """The caps the tar reader and writer apply; tests pass smaller ones."""

    max_members: int = MAX_MEMBERS
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_archive_bytes: int = MAX_ARCHIVE_BYTES


DEFAULT_TAR_LIMITS = TarLimits()

# Declared uncompressed bytes of all table members of one bundle (the manifest's sum of `uncompressed_bytes`).
MAX_BUNDLE_UNCOMPRESSED_BYTES = 256 * GIB

# zstd streams outside Parquet (bundle/decompress.py): the largest window a frame may ask for (what a
# decoder must allocate) and the output of one member.
MAX_ZSTD_WINDOW_BYTES = 8 * MIB  # window log 23: every level up to 19 stays within it
MAX_DECOMPRESSED_MEMBER_BYTES = 4 * GIB


@dataclass(frozen=True)
class ParquetLimits:
    """What one Parquet member may declare, and what decoding it may produce (bundle/parquet_check.py).

    Footer and page headers are checked against the first group before any page is decoded; the decoded
    sizes are checked batch by batch, dictionary columns before they are expanded."""

    max_footer_bytes: int = 16 * MIB
    max_row_groups: int = 10_000
    max_columns: int = 256
    max_rows: int = 2**31 - 1
    max_uncompressed_bytes: int = 16 * GIB  # sum of the column chunks' total_uncompressed_size
    max_row_group_uncompressed_bytes: int = 512 * MIB  # what reading one row group may hold at once
    max_page_bytes: int = 64 * MIB  # one page's declared uncompressed size
    max_page_header_bytes: int = 256 * KIB
    max_pages: int = 1_000_000
    max_batch_rows: int = 8192
    max_decoded_batch_bytes: int = 256 * MIB  # one record batch, dictionaries expanded
    max_decoded_bytes: int = 64 * GIB  # all batches of one member


DEFAULT_PARQUET_LIMITS = ParquetLimits()
