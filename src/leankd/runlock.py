"""One process at a time per run directory.

Two `leankd run` (or compress, export, a search's base run) on the same directory would train the same stage and
race their writes. `run_lock(dir)` takes an exclusive `fcntl.flock` on `<dir>/.leankd.lock`, a small JSON file that
names the holder (pid, host, start time, command) so the refusal can say who holds it and how to proceed.

Why flock and not only the file's existence: the kernel releases a flock when its process dies, even by kill -9,
so a lock left by a dead process is never an obstacle; its file (which names the dead holder) is simply taken over,
with a note. The lock is per open file, so a process must not take it twice for the same directory (the pipeline
takes it once, in `Pipeline.run`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import LeanKDError

LOCK_NAME = ".leankd.lock"


class RunLocked(LeanKDError):
    """Another process holds the run directory."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(h: dict) -> str:
    return (f"pid {h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started', '?')}"
            + (f" ({h['command']})" if h.get("command") else ""))


def _open_locked(path: Path, what: str) -> int:
    """An fd of `path` holding the flock, or RunLocked. Loops when the holder removed the file between our open and
    our flock (we would otherwise hold a lock on a file nobody else can see)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"{path.parent} is in use by another leankd process ({_describe(holder)}): two processes would train "
                f"the same stages and race their writes. Wait for it to finish, or stop it (kill {holder.get('pid', '?')}) "
                f"and rerun{' with --resume' if what == 'run' else ''}; use another --run-dir to run both at once"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | os.PathLike, what: str = "run", log: Optional[Callable[[str], None]] = None
             ) -> Iterator[Path]:
    """Hold `<run_dir>/.leankd.lock` for the body (the directory is created if needed, and removed again if it was
    made here and is still empty, so a refused or failed first run leaves nothing behind)."""
    run_dir = Path(run_dir)
    # the folders made here (run_dir and missing parents): removed again at the end if still empty
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .io import write_error

        raise write_error(e, run_dir) from None
    path = run_dir / LOCK_NAME
    try:
        fd = _open_locked(path, what)
    except RunLocked:
        raise
    except OSError as e:
        from .io import write_error

        raise write_error(e, path) from None
    try:
        stale = _holder(fd)
        if stale and log is not None:
            log(f"note: taking over the lock of {run_dir} left by {_describe(stale)}, which is no longer running")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(["leankd", *sys.argv[1:]])[:300] if sys.argv and sys.argv[0] else None}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode("utf-8"))
        yield path
    finally:
        try:
            path.unlink()  # before unlocking: a waiter that opened this file re-checks the inode and retries
        except OSError:
            pass
        os.close(fd)  # releases the flock
        for folder in created:  # innermost first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
