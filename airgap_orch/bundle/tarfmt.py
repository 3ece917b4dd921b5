"""The bundle container: one uncompressed POSIX ustar archive written canonically, and a strict reader.

Canonical form (the only form the reader accepts):
- Each member is one 512-byte ustar header, its data, then zero bytes up to the next 512-byte boundary.
- A header is a pure function of (name, size): name NUL-padded in the 100-byte name field (the prefix field
  is never used), mode "0000644", uid and gid "0000000", size as 11 octal digits, mtime 0 (11 zero digits),
  checksum as 6 octal digits + NUL + space, typeflag '0' (regular file), empty linkname, magic "ustar\\0",
  version "00", empty uname, gname, devmajor and devminor, every other byte zero. Each numeric field ends
  with one NUL. This is byte for byte what Python's tarfile writes in USTAR_FORMAT for such a member.
- mtime is 0, not the bundle's created_at: the signed manifest carries the time, and with mtime fixed every
  header byte follows from the manifest's member list, so nothing in a header is unsigned or free to vary.
- After the last member: exactly two zero blocks (the end-of-archive marker) and nothing else; unlike
  tarfile we do not pad to a 10240-byte record.
- Names are relative paths of '/'-separated components, each `[A-Za-z0-9_][A-Za-z0-9._-]*` (so no '.',
  '..', hidden or empty component, no leading '/'), at most 100 bytes, unique within the archive.

The reader walks headers and padding only (member data is skipped by offset, read later and hashed by the
caller), re-renders every header from the name and size it parsed and compares the bytes, requires padding
and end marker to be zero and the archive to end right after the marker. So a flipped byte anywhere outside
member data is refused here; flips inside member data are the manifest hashes' job. Python's tarfile is not
used: it ignores checksum-neutral and most padding and trailer changes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import InvalidInput
from .errors import SizeLimitError, TarFormatError
from .limits import DEFAULT_TAR_LIMITS, MAX_MEMBER_NAME_BYTES, TarLimits

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
END_OF_ARCHIVE = bytes(2 * BLOCK)
COPY_CHUNK = 1024 * 1024

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

# Fixed fields between the size and the checksum, and after the checksum (offsets 136..148 and 156..512).
_MTIME = b"00000000000\x00"
_AFTER_CHECKSUM = (b"0" + bytes(100) + b"ustar\x00" + b"00" + bytes(32) + bytes(32)
                   + bytes(8) + bytes(8) + bytes(155) + bytes(12))
_MODE_UID_GID = b"0000644\x00" + b"0000000\x00" + b"0000000\x00"
assert 100 + len(_MODE_UID_GID) + 12 + len(_MTIME) + 8 + len(_AFTER_CHECKSUM) == BLOCK


@dataclass(frozen=True)
class TarMember:
    """One member the reader accepted: where its data starts in the archive and how long it is."""

    name: str
    size: int
    header_offset: int

    @property
    def data_offset(self) -> int:
        return self.header_offset + BLOCK


@dataclass(frozen=True)
class TarIndex:
    """The verified structure of a canonical archive: its members in archive order."""

    members: tuple[TarMember, ...]
    archive_size: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(member.name for member in self.members)

    def member(self, name: str) -> TarMember:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)


def name_problem(name: str) -> str | None:
    """Why `name` is not an acceptable member name, or None when it is."""
    encoded = name.encode("utf-8", "replace")
    if not name:
        return "is empty"
    if len(encoded) > MAX_MEMBER_NAME_BYTES:
        return f"is longer than {MAX_MEMBER_NAME_BYTES} bytes"
    if name.startswith("/"):
        return "is an absolute path"
    components = name.split("/")
    if ".." in components:
        return "contains a '..' component"
    for component in components:
        if not _COMPONENT.fullmatch(component):
            return ("must be '/'-separated components of letters, digits, '.', '_' and '-', each starting "
                    "with a letter, digit or '_'")
    return None


def render_header(name: str, size: int) -> bytes:
    """The canonical 512-byte header of a member; ValueError for a name or size the format cannot hold."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"member name {name!r} {problem}")
    if not 0 <= size < 8**11:
        raise ValueError(f"member size {size} does not fit a ustar size field")
    return _render(name.encode("ascii"), size)


def padding(size: int) -> bytes:
    """The zero bytes after `size` bytes of member data."""
    return bytes(-size % BLOCK)


def _render(name: bytes, size: int) -> bytes:
    head = name.ljust(100, b"\x00") + _MODE_UID_GID + b"%011o\x00" % size + _MTIME
    checksum = sum(head) + sum(b"        ") + sum(_AFTER_CHECKSUM)
    return head + b"%06o\x00 " % checksum + _AFTER_CHECKSUM


# --- writer -----------------------------------------------------------------------------------------------

class TarWriter:
    """Writes a canonical archive to `out` member by member, streaming each member's data.

    `add()` copies exactly `size` bytes from bytes or a readable file object; `close()` writes the end
    marker and returns the archive's length. Names, sizes and counts beyond the caps are refused
    (InvalidInput) before anything of that member is written; a source shorter or longer than its size
    is refused mid-member, after which the writer refuses to go on (discard the partial output)."""

    def __init__(self, out: BinaryIO, limits: TarLimits = DEFAULT_TAR_LIMITS):
        self._out = out
        self._limits = limits
        self._names: set[str] = set()
        self._written = 0
        self._closed = False
        self._broken = False

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError("the archive is closed")
        if self._broken:
            raise ValueError("a member failed half-written; discard this archive")

    def add(self, name: str, data: bytes | BinaryIO, size: int | None = None) -> TarMember:
        self._check_usable()
        if isinstance(data, bytes | bytearray | memoryview):
            data = bytes(data)
            if size is not None and size != len(data):
                raise ValueError(f"member {name!r}: size {size} given for {len(data)} bytes")
            size = len(data)
        elif size is None:
            raise ValueError(f"member {name!r}: a file object needs its size")
        problem = name_problem(name)
        if problem:
            raise InvalidInput(f"bundle member name {name!r} {problem}")
        if name in self._names:
            raise InvalidInput(f"bundle member {name!r} is added twice")
        if len(self._names) >= self._limits.max_members:
            raise InvalidInput(f"a bundle holds at most {self._limits.max_members} members")
        if size > self._limits.max_member_bytes:
            raise InvalidInput(f"bundle member {name!r} is {size} bytes; the cap is "
                               f"{self._limits.max_member_bytes}")
        if self._written + BLOCK + size + len(padding(size)) + len(END_OF_ARCHIVE) > self._limits.max_archive_bytes:
            raise InvalidInput(f"the bundle would exceed {self._limits.max_archive_bytes} bytes")
        member = TarMember(name, size, self._written)
        self._broken = True  # until this member is whole: `out` then holds a partial member
        self._out.write(_render(name.encode("ascii"), size))
        if isinstance(data, bytes):
            self._out.write(data)
        else:
            _copy_exactly(data, self._out, size, name)
        self._out.write(padding(size))
        self._broken = False
        self._names.add(name)
        self._written += BLOCK + size + len(padding(size))
        return member

    def close(self) -> int:
        """Write the end-of-archive marker; return the archive's total length."""
        if self._broken:
            raise ValueError("a member failed half-written; discard this archive")
        if not self._closed:
            self._out.write(END_OF_ARCHIVE)
            self._written += len(END_OF_ARCHIVE)
            self._closed = True
        return self._written


def write_tar(members: Iterable[tuple[str, bytes]], limits: TarLimits = DEFAULT_TAR_LIMITS) -> bytes:
    """A canonical archive of in-memory members, in the order given."""
    out = io.BytesIO()
    writer = TarWriter(out, limits)
    for name, data in members:
        writer.add(name, data)
    writer.close()
    return out.getvalue()


def _copy_exactly(source: BinaryIO, out: BinaryIO, size: int, name: str) -> None:
    remaining = size
    while remaining:
        chunk = source.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise InvalidInput(f"bundle member {name!r} ended {remaining} bytes short of its size {size}; "
                               "was the file changed while the bundle was written?")
        out.write(chunk)
        remaining -= len(chunk)
    if source.read(1):
        raise InvalidInput(f"bundle member {name!r} is longer than its size {size}; "
                           "was the file changed while the bundle was written?")


# --- reader -----------------------------------------------------------------------------------------------

class _Source:
    """Bounded positional reads over bytes or a seekable binary file."""

    def __init__(self, source: bytes | bytearray | memoryview | BinaryIO):
        if isinstance(source, bytes | bytearray | memoryview):
            self._view: memoryview | None = memoryview(source)
            self._file: BinaryIO | None = None
            self.size = len(self._view)
        else:
            self._view, self._file = None, source
            self.size = source.seek(0, io.SEEK_END)

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end of the source)."""
        if self._view is not None:
            return bytes(self._view[offset:offset + length])
        assert self._file is not None
        self._file.seek(offset)
        parts, remaining = [], length
        while remaining:
            chunk = self._file.read(remaining)
            if not chunk:
                break
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)


def read_index(source: bytes | BinaryIO, limits: TarLimits = DEFAULT_TAR_LIMITS) -> TarIndex:
    """Walk a canonical archive's headers, padding and end marker; return its members or raise
    TarFormatError (tar:*) or SizeLimitError (size:*). Member data is not read."""
    src = _Source(source)
    if src.size > limits.max_archive_bytes:
        raise SizeLimitError("archive", f"the bundle is {src.size} bytes; the cap is {limits.max_archive_bytes}")
    members: list[TarMember] = []
    seen: set[str] = set()
    offset = 0
    while True:
        block = _read_block(src, offset, "a member header")
        if block == ZERO_BLOCK:
            _check_end(src, offset)
            return TarIndex(tuple(members), src.size)
        name, size = _parse_header(block, offset)
        problem = name_problem(name)
        if problem:
            raise TarFormatError("name", f"member name {name!r} at offset {offset} {problem}")
        if name in seen:
            raise TarFormatError("duplicate-name", f"member {name!r} appears twice in the bundle")
        if len(members) >= limits.max_members:
            raise SizeLimitError("members", f"the bundle has more than {limits.max_members} members")
        if size > limits.max_member_bytes:
            raise SizeLimitError("member", f"member {name!r} is {size} bytes; the cap is {limits.max_member_bytes}")
        data_end = offset + BLOCK + size
        pad = padding(size)
        if data_end + len(pad) > src.size:
            raise TarFormatError("truncated", f"the bundle ends inside member {name!r}; it is truncated")
        if pad and src.read_at(data_end, len(pad)) != pad:
            raise TarFormatError("padding", f"the padding after member {name!r} (offset {data_end}) is not zero")
        members.append(TarMember(name, size, offset))
        seen.add(name)
        offset = data_end + len(pad)


def read_member(source: bytes | BinaryIO, member: TarMember) -> bytes:
    """A member's whole data (for small members whose size the caller has capped)."""
    return b"".join(iter_member_chunks(source, member))


def iter_member_chunks(source: bytes | BinaryIO, member: TarMember, chunk_size: int = COPY_CHUNK) -> Iterator[bytes]:
    """A member's data in chunks of at most `chunk_size` bytes."""
    src = _Source(source)
    position, end = member.data_offset, member.data_offset + member.size
    while position < end:
        chunk = src.read_at(position, min(chunk_size, end - position))
        if not chunk:
            raise TarFormatError("truncated", f"the bundle ends inside member {member.name!r}; it is truncated")
        yield chunk
        position += len(chunk)


def open_member(source: bytes | BinaryIO, member: TarMember) -> BinaryIO:
    """A read-only, seekable file object over one member's data and nothing else (for decoders such as
    pyarrow that need to seek within a member). Reads past the member's end return b""."""
    return io.BufferedReader(_MemberFile(_Source(source), member), buffer_size=64 * 1024)  # type: ignore[return-value]


class _MemberFile(io.RawIOBase):
    def __init__(self, src: _Source, member: TarMember):
        if member.data_offset + member.size > src.size:
            raise TarFormatError("truncated", f"the bundle ends inside member {member.name!r}; it is truncated")
        self._src, self._start, self._size, self._position = src, member.data_offset, member.size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        length = max(0, min(len(buffer), self._size - self._position))
        data = self._src.read_at(self._start + self._position, length) if length else b""
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


def _read_block(src: _Source, offset: int, what: str) -> bytes:
    block = src.read_at(offset, BLOCK)
    if len(block) < BLOCK:
        raise TarFormatError("truncated", f"the bundle ends at offset {src.size}, inside {what}; it is truncated")
    return block


def _parse_header(block: bytes, offset: int) -> tuple[str, int]:
    """The name and size a header claims, accepted only if the header is byte-for-byte canonical."""
    raw_name = block[:100].split(b"\x00", 1)[0]
    size_field = block[124:136]
    digits = size_field[:11]
    if not raw_name or not raw_name.isascii() or size_field[11] != 0 or digits.strip(b"01234567"):
        raise TarFormatError("header", f"the header at offset {offset} is not one this tool writes")
    size = int(digits, 8)
    if _render(raw_name, size) != block:
        raise TarFormatError("header", f"the header at offset {offset} is not one this tool writes "
                             "(a field, the checksum or its padding differs)")
    return raw_name.decode("ascii"), size


def _check_end(src: _Source, offset: int) -> None:
    second = _read_block(src, offset + BLOCK, "the end-of-archive marker")
    if second != ZERO_BLOCK:
        raise TarFormatError("end-marker", f"the end-of-archive marker at offset {offset} is not two zero blocks")
    end = offset + len(END_OF_ARCHIVE)
    if src.size != end:
        raise TarFormatError("trailing-data", f"{src.size - end} bytes follow the end-of-archive marker "
                             f"at offset {offset}; a bundle ends there")
