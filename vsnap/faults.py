"""Test-only crash injection for the crash tests (tests/integration/test_crash.py and
test_update_crash.py), kept out of the drivers' code paths: a Runner that counts the steps
which changed the system and SIGKILLs its whole process group (the gunicorn master and all its
workers, as a crash or `kill -9` of the service would) right after the N-th one.

A step is a storage-changing zfs/zpool command, a tgtadm change, a Samba reload or password
change, an exportfs, or a change a driver made without a command and announced through
`Runner.step_done` (a configuration file written, a LIO object made through configfs, the
partner's side of a relationship deleted). Only steps taken for an API request or a replication
session count; start-up recovery and the background threads are left alone. The tests sweep N
to land a crash after every step of an operation.

Armed by VSNAP_FAULT_KILL_AFTER_COMMANDS=N in the server's environment (the tests start the
server as a process of its own, so the environment is how they install it). Unset, as always
outside those tests, `runner_for` returns the ordinary Runner and nothing here runs."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

from .drivers.runner import BACKGROUND_CONTEXTS, CommandError, Result, Runner, changes_system, summary
from .logs import request_id_var

ENVIRONMENT = "VSNAP_FAULT_KILL_AFTER_COMMANDS"
_UNCOUNTED_CONTEXTS = ("-", *BACKGROUND_CONTEXTS)  # start-up and background threads


def runner_for(timeout: float, on_storage_change: Callable[[], None] | None) -> Runner:
    """The crashing runner when a crash test armed one in the environment, else a Runner."""
    value = os.environ.get(ENVIRONMENT, "")
    if value.isdigit() and int(value) > 0:
        return CrashingRunner(int(value), timeout=timeout, on_storage_change=on_storage_change)
    return Runner(timeout=timeout, on_storage_change=on_storage_change)


class CrashingRunner(Runner):
    def __init__(self, kill_after: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.kill_after = kill_after
        self.steps = 0
        self._lock = threading.Lock()

    def run(self, argv: list[str], **kwargs: Any) -> Result:
        try:
            result = super().run(argv, **kwargs)
        except CommandError:  # it ran, and may have changed something before it failed
            self._command_done(argv)
            raise
        self._command_done(argv)
        return result

    def _command_done(self, argv: list[str]) -> None:
        if changes_system(argv):
            self.step_done(summary(argv))

    def step_done(self, what: str) -> None:
        if request_id_var.get() in _UNCOUNTED_CONTEXTS:
            return
        with self._lock:
            self.steps += 1
            if self.steps < self.kill_after:
                return
            os.write(2, f"vsnap fault point: SIGKILL of the process group after step {self.steps}: "
                        f"{what[:200]}\n".encode("utf-8", "replace"))
            os.killpg(os.getpgrp(), signal.SIGKILL)
