"""The canonical bundle tar: what the writer writes, and the strict reader refusing everything else."""

from __future__ import annotations

import io
import tarfile

import pytest

from airgap_orch.bundle.errors import SizeLimitError, TarFormatError
from airgap_orch.bundle.limits import TarLimits
from airgap_orch.bundle.tarfmt import (
    BLOCK,
    END_OF_ARCHIVE,
    TarWriter,
    iter_member_chunks,
    read_index,
    read_member,
    render_header,
    write_tar,
)
from airgap_orch.errors import InvalidInput, exit_code_for

# Sizes chosen so the archive has a short member (padding 412), a member needing 511 bytes of padding,
# an empty member (header only) and a member ending exactly on a block boundary (no padding).
MEMBERS = [
    ("envelope.dsse.json", b'{"payload":"e30=","payloadType":"x","signatures":[]}' + b" " * 48),
    ("trust/root-2.json", bytes(range(256)) * 2 + b"!"),
    ("time-anchor.json", b""),
    ("data/jobs.parquet.zst", b"\xaa" * 512),
]


def canonical() -> bytes:
    return write_tar(MEMBERS)


def data_offsets(archive: bytes) -> set[int]:
    index = read_index(archive)
    return {offset for m in index.members for offset in range(m.data_offset, m.data_offset + m.size)}


def tarfile_archive(entries: list[tuple[str, bytes, bytes]], trim: bool = True) -> bytes:
    """An archive written by Python's tarfile (USTAR) with our field values; typeflag per entry. With
    `trim`, the record padding after the end marker is cut so only the entries differ from canonical."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data, typeflag in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data) if typeflag == tarfile.REGTYPE else 0
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
            info.type = typeflag
            if typeflag == tarfile.SYMTYPE:
                info.linkname = "target"
            archive.addfile(info, io.BytesIO(data) if typeflag == tarfile.REGTYPE else None)
    raw = out.getvalue()
    if trim:
        end = sum(BLOCK + len(d) + (-len(d) % BLOCK) if t == tarfile.REGTYPE else BLOCK for _, d, t in entries)
        raw = raw[:end + len(END_OF_ARCHIVE)]
    return raw


def refused(archive: bytes, limits: TarLimits | None = None) -> str:
    with pytest.raises((TarFormatError, SizeLimitError)) as caught:
        read_index(archive, limits) if limits else read_index(archive)
    assert exit_code_for(caught.value) == 4
    return caught.value.reason_code


def test_reader_returns_the_members_the_writer_wrote_in_order():
    archive = canonical()
    index = read_index(archive)
    assert index.names == tuple(name for name, _ in MEMBERS)
    assert index.archive_size == len(archive)
    for (_name, data), member in zip(MEMBERS, index.members, strict=True):
        assert member.size == len(data)
        assert read_member(archive, member) == data
    assert len(archive) % BLOCK == 0 and archive.endswith(END_OF_ARCHIVE)


def test_headers_are_what_tarfile_writes_and_tarfile_reads_the_archive_back():
    archive = canonical()
    from_tarfile = tarfile_archive([(name, data, tarfile.REGTYPE) for name, data in MEMBERS], trim=False)
    # tarfile pads to a 10240-byte record after the end marker; up to there the bytes are identical
    assert from_tarfile.startswith(archive) and not from_tarfile[len(archive):].strip(b"\x00")
    with tarfile.open(fileobj=io.BytesIO(archive)) as read_back:
        assert [(m.name, m.size, m.mode, m.mtime, m.type) for m in read_back.getmembers()] == [
            (name, len(data), 0o644, 0, tarfile.REGTYPE) for name, data in MEMBERS]
        assert read_back.extractfile("trust/root-2.json").read() == MEMBERS[1][1]


def test_a_tarfile_archive_is_refused_because_of_its_record_padding():
    from_tarfile = tarfile_archive([(name, data, tarfile.REGTYPE) for name, data in MEMBERS], trim=False)
    assert len(from_tarfile) == 10240 and from_tarfile != canonical()
    assert refused(from_tarfile) == "tar:trailing-data"


def test_a_tarfile_archive_identical_to_the_canonical_one_is_accepted():
    # one member of 8704 bytes: header + 17 data blocks + end marker is exactly one 10240-byte record
    members = [("data/one.bin", b"\x01" * 8704)]
    from_tarfile = tarfile_archive([(n, d, tarfile.REGTYPE) for n, d in members], trim=False)
    assert from_tarfile == write_tar(members)
    assert read_index(from_tarfile).names == ("data/one.bin",)


def test_every_flipped_byte_outside_member_data_is_refused():
    archive = canonical()
    inside_data = data_offsets(archive)
    checked = 0
    for offset in range(len(archive)):
        if offset in inside_data:
            continue
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(archive)
            damaged[offset] ^= mask
            with pytest.raises((TarFormatError, SizeLimitError)):
                read_index(bytes(damaged))
            checked += 1
    # 4 headers, 412 + 511 bytes of padding, the end marker
    assert checked == 3 * (4 * BLOCK + 412 + 511 + 2 * BLOCK)


def test_a_flipped_byte_inside_member_data_is_left_to_the_manifest_hashes():
    archive = bytearray(canonical())
    member = read_index(bytes(archive)).member("trust/root-2.json")
    archive[member.data_offset + 7] ^= 0x01
    assert read_member(bytes(archive), read_index(bytes(archive)).member("trust/root-2.json")) != MEMBERS[1][1]


def test_every_truncation_is_refused():
    archive = canonical()
    reasons = {refused(archive[:length]) for length in range(len(archive))}
    assert reasons == {"tar:truncated"}


@pytest.mark.parametrize("extra", [b"\x00", bytes(BLOCK), bytes(10240 - 3584), b"PK\x03\x04", b"x" * BLOCK])
def test_data_after_the_end_marker_is_refused(extra):
    assert refused(canonical() + extra) == "tar:trailing-data"


def test_an_end_marker_of_one_block_is_refused():
    archive = canonical()
    assert refused(archive[:-BLOCK]) == "tar:truncated"
    assert refused(archive[:-BLOCK] + b"\x01" + bytes(BLOCK - 1)) == "tar:end-marker"


@pytest.mark.parametrize(("name", "reason"), [
    ("/etc/passwd", "tar:name"),
    ("../escape", "tar:name"),
    ("data/../../escape", "tar:name"),
    ("./data", "tar:name"),
    (".hidden", "tar:name"),
    ("data//double", "tar:name"),
    ("data/", "tar:name"),
    ("sp ace", "tar:name"),
    ("-dash", "tar:name"),
])
def test_unsafe_member_names_are_refused_even_with_a_valid_header(name, reason):
    archive = tarfile_archive([(name, b"abc", tarfile.REGTYPE)])
    assert refused(archive) == reason


@pytest.mark.parametrize("typeflag", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE,
                                      tarfile.CHRTYPE, tarfile.CONTTYPE, tarfile.AREGTYPE])
def test_non_regular_entries_are_refused(typeflag):
    archive = tarfile_archive([("data/a", b"abc", tarfile.REGTYPE), ("data/b", b"", typeflag)])
    assert refused(archive) == "tar:header"


def test_pax_and_gnu_headers_are_refused():
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
            info = tarfile.TarInfo("data/" + "x" * 120)  # long name: pax header / GNU longname entry
            info.size, info.mode, info.mtime = 3, 0o644, 0
            archive.addfile(info, io.BytesIO(b"abc"))
        assert refused(out.getvalue()) in {"tar:header", "tar:trailing-data"}
        assert refused(out.getvalue()[:2048]) == "tar:header"


def test_duplicate_names_are_refused():
    archive = tarfile_archive([("data/a", b"1", tarfile.REGTYPE), ("data/a", b"2", tarfile.REGTYPE)])
    assert refused(archive) == "tar:duplicate-name"


def test_a_different_mtime_or_mode_is_refused():
    for field, value in (("mtime", 1_700_000_000), ("mode", 0o600), ("uid", 1000), ("uname", "root")):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            info = tarfile.TarInfo("data/a")
            info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 3, 0o644, 0, 0, 0, "", ""
            setattr(info, field, value)
            archive.addfile(info, io.BytesIO(b"abc"))
        assert refused(out.getvalue()[:BLOCK * 4]) == "tar:header", field


def test_size_caps_are_enforced_by_the_reader():
    archive = canonical()
    assert refused(archive, TarLimits(max_members=3)) == "size:members"
    assert refused(archive, TarLimits(max_member_bytes=511)) == "size:member"
    assert refused(archive, TarLimits(max_archive_bytes=len(archive) - 1)) == "size:archive"
    assert read_index(archive, TarLimits(max_members=4, max_member_bytes=513, max_archive_bytes=len(archive)))


def test_reader_works_on_a_seekable_file_and_streams_member_chunks(tmp_path):
    path = tmp_path / "b.bundle"
    path.write_bytes(canonical())
    with path.open("rb") as file:
        index = read_index(file)
        assert index.names == tuple(name for name, _ in MEMBERS)
        member = index.member("trust/root-2.json")
        chunks = list(iter_member_chunks(file, member, chunk_size=100))
        assert [len(c) for c in chunks] == [100] * 5 + [13]
        assert b"".join(chunks) == MEMBERS[1][1]
    with path.open("ab") as file:
        file.write(b"\x00")
    with path.open("rb") as file, pytest.raises(TarFormatError) as caught:
        read_index(file)
    assert caught.value.reason_code == "tar:trailing-data"


def test_writer_streams_from_file_objects_and_matches_the_in_memory_form():
    out = io.BytesIO()
    writer = TarWriter(out)
    for name, data in MEMBERS:
        writer.add(name, io.BytesIO(data), len(data))
    assert writer.close() == len(out.getvalue())
    assert out.getvalue() == canonical()


def test_writer_refuses_what_the_reader_would_refuse():
    writer = TarWriter(io.BytesIO(), TarLimits(max_members=2, max_member_bytes=10, max_archive_bytes=10_000))
    for bad in ("/abs", "../x", "a/./b", "x" * 101, "ünïcode"):
        with pytest.raises(InvalidInput):
            writer.add(bad, b"")
    writer.add("a", b"1")
    with pytest.raises(InvalidInput, match="twice"):
        writer.add("a", b"2")
    with pytest.raises(InvalidInput, match="cap"):
        writer.add("big", b"x" * 11)
    writer.add("b", b"22")
    assert writer.close() == 2 * (BLOCK + BLOCK) + 2 * BLOCK
    with pytest.raises(InvalidInput, match="at most 0"):
        TarWriter(io.BytesIO(), TarLimits(max_members=0)).add("a", b"")
    TarWriter(io.BytesIO(), TarLimits(max_archive_bytes=2048)).add("a", b"x")  # 512 + 512 + 1024
    with pytest.raises(InvalidInput, match="exceed"):
        TarWriter(io.BytesIO(), TarLimits(max_archive_bytes=2047)).add("a", b"x")


@pytest.mark.parametrize(("source", "message"), [(b"abc", "short"), (b"abcdef", "longer")])
def test_a_source_that_does_not_match_its_size_breaks_the_writer(source, message):
    writer = TarWriter(io.BytesIO())
    with pytest.raises(InvalidInput, match=message):
        writer.add("data/a", io.BytesIO(source), 5)
    with pytest.raises(ValueError, match="half-written"):
        writer.add("data/b", b"")
    with pytest.raises(ValueError, match="half-written"):
        writer.close()


def test_render_header_round_trips_the_size_field_and_refuses_sizes_ustar_cannot_hold():
    header = render_header("a", 8**11 - 1)
    assert header[124:136] == b"77777777777\x00"
    with pytest.raises(ValueError):
        render_header("a", 8**11)
    with pytest.raises(ValueError):
        render_header("a/../b", 1)


def test_open_member_reads_that_member_only_and_seeks_within_it():
    from airgap_orch.bundle.tarfmt import open_member

    archive = canonical()
    index = read_index(archive)
    member = index.member("trust/root-2.json")
    for source in (archive, io.BytesIO(archive)):
        handle = open_member(source, member)
        assert handle.read() == MEMBERS[1][1] and handle.read(10) == b""
        assert handle.seek(-1, io.SEEK_END) == member.size - 1 and handle.read(5) == b"!"
        handle.seek(member.size + 100)
        assert handle.read(10) == b""  # never the padding or the next header
        with pytest.raises(ValueError):
            handle.seek(-1)
    with pytest.raises(TarFormatError):
        open_member(archive[:member.data_offset + 10], member)
