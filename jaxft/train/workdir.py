"""The run's working directory: checked writable before anything heavy is built, and locked.

The lock is ``<workdir>/lock``: a file holding the holder's host, pid and start time, with an
exclusive ``flock`` on it for as long as the holding process lives. The kernel drops the flock
when that process dies (even by ``kill -9``), so a lock file whose flock can be taken belongs to a
dead run: it is taken over with a notice. A second live run on the same workdir is refused.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger("jaxft")

LOCK_NAME = "lock"


class WorkdirError(OSError):
    """The workdir (or the checkpoint directory) cannot be used; the message says why."""


def check_writable(directory: str | os.PathLike, what: str = "workdir") -> Path:
    """Create ``directory`` if needed and prove a file can be written in it, or raise ``WorkdirError``."""
    path = Path(directory).expanduser()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise WorkdirError(f"{what} {path}: {parent} is a file, not a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise WorkdirError(f"{what} {path} is not writable: {err.strerror or err}") from None
    return path


_HELD: dict[Path, int] = {}  # lock file -> open descriptor, for the locks this process holds


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["since"])))
        return f"pid {holder['pid']} on host {holder['host']}, since {started}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def acquire_lock(workdir: str | os.PathLike) -> Path:
    """Lock ``workdir`` for this process (again a no-op when it already holds it); released at exit.

    Raises ``WorkdirError`` naming the holder when another live process has it.
    """
    path = Path(workdir).expanduser().resolve() / LOCK_NAME
    if path in _HELD:
        return path
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirError(f"workdir {path.parent} is in use by another run ({holder}; lock file {path}); "
                                   "wait for it to finish or use another --workdir") from None
            raise WorkdirError(f"cannot lock workdir {path.parent}: {err.strerror or err}") from None
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # the holder released (removed) the file between our open and flock: retry
    previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if previous:
        log.warning("workdir %s: taking over the lock of a run that is gone (%s)", path.parent, _describe(previous))
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (record + "\n").encode(), 0)
    _HELD[path] = fd
    return path


def release_lock(workdir: str | os.PathLike) -> None:
    path = Path(workdir).expanduser().resolve() / LOCK_NAME
    fd = _HELD.pop(path, None)
    if fd is None:
        return
    try:
        path.unlink()  # before unlocking, so a waiting process retries on a fresh file
    except OSError:
        pass
    os.close(fd)


@atexit.register
def _release_all() -> None:
    for path in list(_HELD):
        release_lock(path.parent)
