"""Streaming zstd decompression with a bounded window and an output cap.

No bundle member of format version 1 is zstd outside Parquet: every table travels as a Parquet member whose
pages are zstd-compressed inside the file (bundle/parquet_check.py bounds those). This module is the one way to
read a zstd stream (a future JSON Lines member, a compressed attachment), so that way is safe from the start.

Why not `ZstdDecompressor().decompress(data, max_output_size=n)`: python-zstandard honours `max_output_size`
only for frames that do not declare their content size; a frame that declares one is decompressed whole, so
a few KiB expand to whatever the frame declares. And `stream_reader` alone cannot tell a truncated frame from a
finished one. So:
- the frame header is read first: the frame must declare its content size (this tool's writer always does),
  which must be within the output cap, and its window within the window cap (what a decoder must allocate);
- decompression streams through `ZstdDecompressor(max_window_size=...).stream_reader(...)` in bounded chunks,
  counting output and failing as soon as it passes the cap (a lying header is caught here);
- at the end the output must be exactly the declared content size (a truncated frame yields less, a second
  frame more) and nothing but frames may follow.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from .errors import PayloadError, SizeLimitError
from .limits import MAX_DECOMPRESSED_MEMBER_BYTES, MAX_ZSTD_WINDOW_BYTES, MIB

CHUNK = 1 * MIB
_MAX_FRAME_HEADER = 18  # zstd's ZSTD_FRAMEHEADERSIZE_MAX


def iter_zstd(source: bytes | BinaryIO, *, max_output: int = MAX_DECOMPRESSED_MEMBER_BYTES,
              max_window: int = MAX_ZSTD_WINDOW_BYTES, chunk_size: int = CHUNK,
              what: str = "member") -> Iterator[bytes]:
    """Decompress one zstd frame from `source` (bytes or a seekable binary file positioned at the frame) in
    chunks of at most `chunk_size` bytes. SizeLimitError size:decompressed or size:zstd-window; PayloadError
    payload:zstd (not zstd, corrupt, truncated, no declared content size, trailing data)."""
    stream: BinaryIO = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    start = stream.tell()
    header = stream.read(_MAX_FRAME_HEADER)
    stream.seek(start)
    try:
        parameters = zstandard.get_frame_parameters(header)
    except zstandard.ZstdError:
        raise PayloadError("zstd", f"{what} is not a zstd frame") from None
    declared = parameters.content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        raise PayloadError("zstd", f"{what}'s zstd frame does not declare its content size; this tool writes it "
                           "and refuses frames without it")
    if declared > max_output:
        raise SizeLimitError("decompressed", f"{what} declares {declared} decompressed bytes; the cap is {max_output}")
    if parameters.window_size > max_window:
        raise SizeLimitError("zstd-window", f"{what}'s zstd frame needs a {parameters.window_size}-byte window; the "
                             f"cap is {max_window}")
    reader = zstandard.ZstdDecompressor(max_window_size=max_window).stream_reader(
        stream, read_size=min(chunk_size, CHUNK), read_across_frames=True, closefd=False)
    produced = 0
    while True:
        try:
            chunk = reader.read(chunk_size)
        except zstandard.ZstdError as exc:
            if "window" in str(exc).lower() or "memory" in str(exc).lower():
                raise SizeLimitError("zstd-window", f"{what}'s zstd frame needs a window over {max_window} bytes") \
                    from None
            raise PayloadError("zstd", f"{what} does not decompress: {str(exc)[:120]}") from None
        if not chunk:
            break
        produced += len(chunk)
        if produced > max_output:
            raise SizeLimitError("decompressed", f"{what} decompresses to more than {max_output} bytes")
        if produced > declared:
            raise PayloadError("zstd", f"{what} decompresses to more than the {declared} bytes its frame declares")
        yield chunk
    if produced != declared:
        raise PayloadError("zstd", f"{what} decompresses to {produced} bytes, not the {declared} its frame "
                           "declares; it is truncated")


def decompress_zstd(data: bytes, *, max_output: int = MAX_DECOMPRESSED_MEMBER_BYTES,
                    max_window: int = MAX_ZSTD_WINDOW_BYTES, what: str = "member") -> bytes:
    """The whole output of `iter_zstd`, for small members whose cap the caller has chosen."""
    return b"".join(iter_zstd(data, max_output=max_output, max_window=max_window, what=what))


def compress_zstd(data: bytes, level: int = 3) -> bytes:
    """One zstd frame with its content size and a checksum: what `iter_zstd` accepts."""
    parameters = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(data),
                                                                 write_content_size=True, write_checksum=True)
    compressed = zstandard.ZstdCompressor(compression_params=parameters).compress(data)
    return compressed
