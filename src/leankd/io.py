"""Atomic artifact writes: a crash never leaves a half-written file, because we write a temporary file in the
same directory and `os.replace` it over the target (atomic on POSIX)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import LeanKDError

# the write failures a user fixes (disk full, quota, read-only mount, permissions): a clear error, not a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class StorageError(LeanKDError):
    """A file could not be written because of the disk or its permissions (full, read-only, not ours)."""


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def write_error(e: OSError, path: str | os.PathLike, needed_bytes: Optional[int] = None) -> BaseException:
    """The user-facing error for a failed write of `path` (a StorageError naming the directory and the fix), or `e`
    itself when it is not a disk/permission problem. Callers: `raise write_error(e, path) from None`."""
    if not isinstance(e, OSError) or e.errno not in WRITE_ERRNOS:
        return e
    target = Path(e.filename) if getattr(e, "filename", None) else Path(path)
    directory = target if target.is_dir() else target.parent
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        probe = next((p for p in (directory, *directory.parents) if p.exists()), None)
        try:
            free = f"{_mb(shutil.disk_usage(probe).free)} free there" if probe else "free space unknown"
        except OSError:
            free = "free space unknown"
        need = f"; this write needs about {_mb(needed_bytes)}" if needed_bytes else ""
        what = "disk quota exceeded" if e.errno == errno.EDQUOT else "no space left on the device"
        return StorageError(
            f"{what} while writing {Path(path).name} in {directory} ({free}{need}). Free some space there or point "
            "output_dir / --run-dir at a disk with room; earlier files are intact (each is replaced atomically), so "
            "rerun with --resume to continue an interrupted stage")
    if e.errno == errno.EROFS:
        return StorageError(f"cannot write {target}: {directory} is on a read-only file system; choose a writable "
                            "output_dir / --run-dir (or remount it read-write)")
    return StorageError(f"permission denied on {target} (in {directory}): make it readable and writable by this "
                        "user (chmod/chown) or choose another output_dir / --run-dir")


@contextmanager
def atomic_path(path: str | os.PathLike, size_hint: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed (and a full or
    read-only disk becomes a StorageError naming the directory and, with `size_hint` bytes, what the write needs)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(e, path, size_hint) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode open() would
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # make sure the bytes are on disk before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself durable
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            raise write_error(e, path, size_hint) from None
        raise


_UMASK: Optional[int] = None


def _umask() -> int:
    """The process's umask, read once. Linux shows it in /proc/self/status; elsewhere os.umask must set it to read
    it, so it is set straight back (once, at the first write, before any worker threads write files)."""
    global _UMASK
    if _UMASK is None:
        try:
            line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
            _UMASK = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line. A torn last line (crash mid-write) is skipped by `read_jsonl`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(e, path) from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 may sit inside a string
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn line from an interrupted write
    return rows


def _json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
