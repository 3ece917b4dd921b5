"""Streaming zstd with an output cap and a bounded window: a real bomb (a small frame that expands past the
cap) is refused after at most the cap, whatever its header says."""

from __future__ import annotations

import io
import tracemalloc

import pytest
import zstandard

from airgap_orch.bundle.decompress import compress_zstd, decompress_zstd, iter_zstd
from airgap_orch.bundle.errors import BundleError
from airgap_orch.bundle.limits import MIB
from airgap_orch.errors import exit_code_for

BOMB_SIZE = 256 * MIB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """256 MiB of zeros in one frame of ~8 KB that declares its size."""
    frame = compress_zstd(bytes(BOMB_SIZE))
    assert len(frame) < 16_384
    return frame


def reason(call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BundleError) as caught:
        call(*args, **kwargs)
    assert exit_code_for(caught.value) == 4
    return caught.value.reason_code


def with_declared_size(frame: bytes, size: int) -> bytes:
    """The frame with its 4-byte Frame_Content_Size field rewritten (a header that lies)."""
    descriptor = frame[4]
    assert descriptor >> 6 == 2 and not descriptor & 0x20 and not descriptor & 0x03  # 4-byte FCS after a window byte
    return frame[:6] + size.to_bytes(4, "little") + frame[10:]


def test_one_shot_decompress_ignores_its_cap_for_a_frame_that_declares_its_size(bomb):
    # why decompress.py streams: python-zstandard's documented behaviour, pinned here
    assert len(zstandard.ZstdDecompressor().decompress(bomb, max_output_size=MIB)) == BOMB_SIZE


def test_a_frame_round_trips_in_bounded_chunks():
    data = bytes(range(256)) * 40_000
    chunks = list(iter_zstd(compress_zstd(data), chunk_size=64 * 1024))
    assert b"".join(chunks) == data and max(len(c) for c in chunks) <= 64 * 1024
    assert decompress_zstd(compress_zstd(b"")) == b""
    stream = io.BytesIO(compress_zstd(data))
    assert b"".join(iter_zstd(stream)) == data


def test_a_bomb_declaring_its_size_is_refused_before_decoding(bomb):
    assert reason(decompress_zstd, bomb, max_output=64 * MIB) == "size:decompressed"


def test_a_bomb_whose_header_lies_is_refused_after_at_most_one_chunk(bomb):
    lying = with_declared_size(bomb, 1024)
    tracemalloc.start()
    try:
        produced = 0
        with pytest.raises(BundleError) as caught:
            for chunk in iter_zstd(lying, max_output=64 * MIB, chunk_size=MIB):
                produced += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason_code in ("payload:zstd", "size:decompressed")
    assert produced <= 1024 and peak < 8 * MIB


def test_the_output_cap_holds_while_streaming(bomb):
    produced = 0
    with pytest.raises(BundleError) as caught:
        for chunk in iter_zstd(with_declared_size(bomb, 2**31), max_output=2**31, chunk_size=MIB):
            produced += len(chunk)
    assert caught.value.reason_code == "payload:zstd"  # the frame ends short of what it declared
    assert produced <= BOMB_SIZE
    produced = 0
    with pytest.raises(BundleError) as caught:
        for chunk in iter_zstd(with_declared_size(bomb, 8 * MIB), max_output=8 * MIB, chunk_size=MIB):
            produced += len(chunk)
    assert caught.value.reason_code in ("payload:zstd", "size:decompressed")
    assert produced <= 8 * MIB


def test_a_frame_needing_a_window_over_the_cap_is_refused():
    parameters = zstandard.ZstdCompressionParameters(window_log=25, write_content_size=True)
    frame = zstandard.ZstdCompressor(compression_params=parameters).compress(bytes(32 * MIB))
    assert zstandard.get_frame_parameters(frame).window_size > 8 * MIB
    assert reason(decompress_zstd, frame, max_output=64 * MIB) == "size:zstd-window"


@pytest.mark.parametrize("damage", [
    lambda f: f[:-6],  # truncated
    lambda f: f + f,  # a second frame
    lambda f: f + b"junk",  # trailing bytes
    lambda f: b"",
    lambda f: b"not zstd at all",
])
def test_damaged_frames_are_refused(damage):
    frame = compress_zstd(b"hello " * 10_000)
    assert reason(decompress_zstd, damage(frame)) == "payload:zstd"


def test_a_frame_without_a_declared_size_is_refused():
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as writer:
        writer.write(b"x" * 1000)
    assert zstandard.get_frame_parameters(out.getvalue()).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert reason(decompress_zstd, out.getvalue()) == "payload:zstd"
