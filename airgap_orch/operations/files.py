"""Files the trust and bundle operations read and write: capped reads, and writes that never leave half a file
under the final name and never replace a file unless asked to."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InvalidInput

Progress = Callable[[int, int], None]  # (done, total): a terminal's progress bar


def read_capped(path: Path, cap: int, what: str, hint: str = "") -> bytes:
    """The file's bytes; InvalidInput (one line, ending with `hint` when given) when it cannot be read or is
    larger than `cap`."""
    try:
        with Path(path).open("rb") as file:
            data = file.read(cap + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > cap:
        raise InvalidInput(f"{what} {path} is larger than {cap} bytes{'; ' + hint if hint else ''}")
    return data


def open_readable(path: Path, what: str) -> BinaryIO:
    try:
        return Path(path).open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror}") from None


def refuse_existing(path: Path, what: str) -> None:
    """InvalidInput when `path` exists (or is a dangling link), or its folder does not."""
    path = Path(path)
    if os.path.lexists(path):
        raise InvalidInput(f"{path} already exists; {what} never replaces a file: choose another --out")
    if not path.parent.is_dir():
        raise InvalidInput(f"folder {path.parent} does not exist; create it or choose another --out")


@contextlib.contextmanager
def partial_file(path: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A new hidden file beside `path` to write into (mode 0644, exclusive); removed on the way out unless the
    caller published it (see publish)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except FileExistsError:
        raise InvalidInput(f"{partial} exists (left by a killed run of this process id?); remove it") from None
    except OSError as exc:
        raise InvalidInput(f"cannot create {partial}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w+b") as file:
            yield partial, file
    finally:
        partial.unlink(missing_ok=True)


def publish(partial: Path, path: Path, *, replace: bool = False) -> None:
    """Give the finished (flushed, closed or synced) `partial` its final name: a hard link that fails if
    `path` appeared meanwhile, or with `replace` an atomic rename over it."""
    if replace:
        os.replace(partial, path)
        return
    try:
        os.link(partial, path)
    except FileExistsError:
        raise InvalidInput(f"{path} appeared while it was being written; nothing was replaced") from None
    except OSError as exc:
        raise InvalidInput(f"cannot create {path}: {exc.strerror}") from None


def write_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to `path` whole or not at all (fsync before it gets its name)."""
    if not replace:
        refuse_existing(path, "this command")
    with partial_file(path) as (partial, file):
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
        publish(partial, path, replace=replace)


class Watched:
    """A file being read (verified), reporting how far into it reads have reached: `progress(start + furthest,
    total)`, at most once per REPORT_BYTES and at the end. Everything else goes to the file itself."""

    REPORT_BYTES = 1024 * 1024

    def __init__(self, file: BinaryIO, progress: Progress, *, start: int = 0,
                 total: int | None = None):
        self._file, self._progress, self._start = file, progress, start
        self._size = os.fstat(file.fileno()).st_size
        self._total = start + self._size if total is None else total
        self._furthest = self._reported = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._seen()
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._file.readinto(buffer)  # type: ignore[attr-defined]
        self._seen()
        return count

    def _seen(self) -> None:
        furthest = max(self._furthest, self._file.tell())
        self._furthest = furthest
        if furthest - self._reported >= self.REPORT_BYTES or (furthest >= self._size > self._reported):
            self._reported = furthest
            self._progress(self._start + furthest, self._total)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)
