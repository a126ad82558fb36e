"""Advisory file locks in a results folder, so several processes (a second terminal, a cluster array
job) can share one: a lock is an `flock` on `results/locks/<name>.lock`, released by the kernel when
its process dies (kill -9 included), so no lock outlives its owner. The file records host and pid.

Locks span the processes of one machine, and of several machines only where the results folder's
file system honours flock (local disks do; NFS depends on its version and mount options).

A forked child (a data loader worker) shares its parent's open lock files, and with them its locks:
it closes its copies at once, so a lock still dies with the process that took it, not with the last
of its children.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

_HELD: weakref.WeakSet[Lock] = weakref.WeakSet()
_watching_forks = False


def _drop_in_child() -> None:
    """After a fork, in the child: close the inherited lock files (the parent keeps its locks)."""
    for lock in list(_HELD):
        if lock._fd is not None:
            os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


class Lock:
    def __init__(self, results: Path, name: str) -> None:
        self.path = Path(results) / "locks" / f"{name}.lock"
        self._fd: int | None = None

    def acquire(self, block: bool = True) -> bool:
        """Take the lock (waiting for it when `block`); False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._fd = fd
        global _watching_forks
        if not _watching_forks:
            os.register_at_fork(after_in_child=_drop_in_child)
            _watching_forks = True
        _HELD.add(self)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            _HELD.discard(self)

    def owner(self) -> str:
        """Who holds (or last held) the lock, as `host pid N`."""
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        return f"{owner.get('host', '?')} pid {owner.get('pid', '?')}"

    def held_elsewhere(self) -> bool:
        """Whether a live process holds the lock (tested by taking and dropping it)."""
        if self.acquire(block=False):
            self.release()
            return False
        return True


@contextmanager
def locked(results: Path, name: str):
    """Hold `name` for the block, waiting while another process holds it."""
    lock = Lock(results, name)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
