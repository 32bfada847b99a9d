"""Writing a run's files: atomically (a temp file beside the target, then a rename: no torn file and
no ``*.tmp`` left, whatever happens), and a full disk said plainly (:class:`DiskFull`).

A full disk is ENOSPC, EDQUOT (a quota) or EROFS (a read-only filesystem), however a library
reports it (an ``OSError``, SQLite's "database or disk is full", an error raised from one of those).
Commands end with one line naming the path, the free space there and the fix, exit :data:`DISK_FULL_EXIT`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Iterator

DISK_FULL_EXIT = 3
"""The exit status of a command stopped by a full disk (or a read-only filesystem)."""
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
FULL_TEXTS = ("no space left on device", "disk quota exceeded", "read-only file system", "database or disk is full")


class DiskFull(OSError):
    """A write failed for want of space (or on a read-only filesystem): :attr:`path`, :attr:`free` bytes there."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason, self.free = Path(path), reason, free_bytes(path)
        super().__init__(errno.ENOSPC, f"{reason}: {self.path} ({human(self.free)} free there)")

    def __str__(self) -> str:
        return self.strerror


def free_bytes(path: Path | str) -> int | None:
    """Free bytes on the filesystem of ``path`` (its nearest existing folder); None when unknown."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def human(size: int | None) -> str:
    if size is None:
        return "unknown space"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def disk_full(exc: BaseException, path: Path | str | None = None) -> DiskFull | None:
    """``exc`` as a :class:`DiskFull` naming ``path`` (default: the file the error names) when it (or
    what it was raised from or during) is a full disk; else None."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, DiskFull):
            return seen
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return DiskFull(path or seen.filename or "(unknown file)", os.strerror(seen.errno))
        text = str(seen).lower()
        found = next((t for t in FULL_TEXTS if t in text), None)
        if found is not None:
            return DiskFull(path or "(unknown file)", found)
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Within the block, a full disk raises :class:`DiskFull` naming ``path``."""
    try:
        yield
    except DiskFull:
        raise
    except BaseException as exc:
        full = disk_full(exc, path)
        if full is not None:
            raise full from exc
        raise


@contextlib.contextmanager
def atomic(path: Path, mode: str = "wb", keep: Path | None = None) -> Iterator[IO]:
    """A file to write ``path`` through: a temp file ``<path>.tmp`` renamed over ``path`` once written
    (``keep``: the file it replaces is renamed there first), deleted on any error; a full disk is
    raised as :class:`DiskFull` naming ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, mode, **({} if "b" in mode else {"newline": ""})) as handle:
                yield handle
            if keep is not None and path.exists():
                os.replace(path, keep)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def warn(message: str) -> None:
    """One line on stderr, ``warning: ...`` (what a run says about its files)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
