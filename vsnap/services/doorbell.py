"""A doorbell between the server's processes: a FIFO in the state directory.

The replication queue lives in the database and the worker looks at it every half second; a
session queued by a request (in whichever server process took it) rings the bell, so the
worker, in whichever process holds the worker lock, starts it at once instead of up to half a
second later. A ring nobody hears is lost, which costs nothing: the worker still looks every
half second.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import stat
from pathlib import Path

log = logging.getLogger(__name__)


class Doorbell:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def ring(self) -> None:
        """Wakes whoever waits, if anyone does; never blocks, never fails."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no FIFO yet, or nobody listening (ENXIO)
            return
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):  # never write into something else there
                os.write(fd, b"\n")
        except OSError:  # full: it rings already
            pass
        finally:
            os.close(fd)

    def wait(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for a ring; True when there was one (all rings so far
        are taken)."""
        fd = self._open()
        if fd is None:
            select.select([], [], [], timeout)
            return False
        if not select.select([fd], [], [], timeout)[0]:
            return False
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def _open(self) -> int | None:
        if self._fd is None:
            try:
                try:
                    os.mkfifo(self.path, 0o600)
                except FileExistsError:
                    if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                        raise OSError(errno.EEXIST, "exists and is not a FIFO", str(self.path))
                # Read and write: the FIFO then never reads as closed when a ringer leaves.
                self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            except OSError as exc:
                log.warning("doorbell %s unusable (%s): the queue is looked at every half second only",
                            self.path, exc)
                self._fd = -1
        return self._fd if self._fd >= 0 else None

    def close(self) -> None:
        if self._fd is not None and self._fd >= 0:
            os.close(self._fd)
        self._fd = None
