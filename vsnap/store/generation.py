"""A token that changes whenever storage changes, in any process of the appliance.

Readers keep what they read from ZFS and the database (the catalog) for as long as the token
is the one they saw before reading. Writers change it after every change to ZFS or to the
catalog's rows (through the command runner and the store), so a change made by one server
process, the worker or a partner's receive is seen by every other at its next read.

The token lives in a small file of the state directory, rewritten in place (never replaced)
and read through a shared memory map: a read is a copy of 32 bytes, no system call, so a busy
server's threads do not queue for the interpreter lock around one.
"""
from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

SIZE = 32


class Generation:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < SIZE:
            os.pwrite(fd, os.urandom(SIZE // 2).hex().encode(), 0)
        return fd

    def read(self) -> bytes:
        if self._map is None:
            with self._lock:
                if self._map is None:
                    fd = self._open()
                    try:
                        self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
                    finally:
                        os.close(fd)
        return self._map[:SIZE]

    def bump(self) -> None:
        """A new random token (not a counter: two writers need no lock to make different
        ones, and a torn read only looks like one more change)."""
        fd = self._open()
        try:
            os.pwrite(fd, os.urandom(SIZE // 2).hex().encode(), 0)
        finally:
            os.close(fd)
