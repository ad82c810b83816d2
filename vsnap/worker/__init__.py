"""Background work of the appliance: one server process at a time runs it, whichever holds
the worker lock (an flock, freed when that process dies, so another one takes over)."""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

from ..config import Settings

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, services):
        self.settings = settings
        self.services = services
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vsnap-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _lead(self) -> bool:
        """Waits until this process holds the worker lock (or is told to stop)."""
        self.settings.worker_lock_file.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.settings.worker_lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        while not self._stop.is_set():
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                log.info("worker: running in process %s", os.getpid())
                return True
            except BlockingIOError:
                self._stop.wait(1.0)
        return False

    def _run(self) -> None:
        if not self._lead():
            return
        targets = self.services.targets
        last_resync = time.monotonic()
        while not self._stop.wait(self.settings.target_check_interval):
            try:
                if time.monotonic() - last_resync >= self.settings.target_resync_interval:
                    last_resync = time.monotonic()
                    targets.check(full=True)
                else:
                    targets.check()
            except Exception:  # the worker must outlive any one failure
                log.exception("worker: target check failed")
