"""Runs system commands as argument lists (never through a shell), always with a timeout."""
from __future__ import annotations

import logging
import shlex
import subprocess
import time
from dataclasses import dataclass
from enum import Enum
from typing import IO, Literal

from ..logs import request_id_var

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A command exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip().splitlines()
        super().__init__(f"{argv[0]} failed ({returncode}): {detail[-1] if detail else 'no output'}")

    @property
    def reason(self) -> str:
        """What the command said, in a line a client can read (zfs-fuse's 'Defaulting to
        4K blocksize' notices are noise, not the reason)."""
        lines = [line.strip() for line in (self.stderr or self.stdout).splitlines()
                 if line.strip() and not line.startswith("Defaulting to")]
        return "; ".join(lines[:3]) or str(self)


def describe(exc: Exception) -> str:
    """A failure of a command or of a file operation, as words for an error message."""
    return exc.reason if isinstance(exc, CommandError) else str(exc)


class CommandTimeout(Exception):
    """A command did not finish in time (e.g. a stuck ZFS)."""

    def __init__(self, argv: list[str], timeout: float):
        self.argv = argv
        self.timeout = timeout
        super().__init__(f"{argv[0]} did not finish within {timeout:g} s")


class CommandNotFound(Exception):
    def __init__(self, argv: list[str]):
        self.argv = argv
        super().__init__(f"{argv[0]} is not installed")


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def error(self) -> CommandError:
        """This (failed) command's CommandError, for a caller that ran it with check=False and
        then found the failure was not one it expected."""
        return CommandError(self.argv, self.returncode, self.stdout, self.stderr)


def summary(argv: list[str], limit: int = 240) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[:limit] + "..."


# zfs/zpool subcommands that only read; any other one (even a failed one) may have changed
# storage, and readers that cache what they read must hear of it.
READ_ONLY_SUBCOMMANDS = {"zfs": {"get", "list", "send", "holds", "userspace", "groupspace", "diff", "help",
                                 "version"},
                         "zpool": {"list", "status", "get", "iostat", "history", "help", "version"}}


def changes_storage(argv: list[str]) -> bool:
    reads = READ_ONLY_SUBCOMMANDS.get(argv[0].rsplit("/", 1)[-1]) if argv else None
    return reads is not None and (len(argv) < 2 or argv[1] not in reads)


# The background threads' own work: routine reads of theirs are logged at DEBUG.
BACKGROUND_CONTEXTS = ("worker", "catalog")


def changes_system(argv: list[str]) -> bool:
    """A command that changes storage or a service's configuration (for the logs and the crash tests)."""
    name = argv[0].rsplit("/", 1)[-1] if argv else ""
    if name == "tgtadm":
        return "--op" in argv[:-1] and argv[argv.index("--op") + 1] != "show"
    return changes_storage(argv) or name in ("smbcontrol", "exportfs", "smbpasswd")


class _Unlimited(Enum):
    NO_TIMEOUT = "no timeout"


# `timeout=NO_TIMEOUT`: a command that takes as long as it takes (a replication stream's
# receive, which the sender's watchdog ends when it stalls).
NO_TIMEOUT = _Unlimited.NO_TIMEOUT


class Runner:
    """The one way drivers run commands. Tests replace it with a fake to cover parsing and errors."""

    def __init__(self, timeout: float = 120.0, on_storage_change=None):
        self.timeout = timeout
        self.on_storage_change = on_storage_change  # called after each zfs/zpool command that may change

    def step_done(self, what: str) -> None:
        """A driver changed the system without a command: a configuration file replaced, a
        kernel object made through configfs. Nothing to do here; this is the seam where the
        crash tests' runner (vsnap/faults.py) counts its kill points."""

    def storage_changed(self, argv: list[str]) -> None:
        if self.on_storage_change is not None and changes_storage(argv):
            self.on_storage_change()

    def run(self, argv: list[str], *, check: bool = True, input: str | None = None,
            stdin: int | IO | None = None,
            timeout: float | Literal[_Unlimited.NO_TIMEOUT] | None = None,
            env: dict[str, str] | None = None, changes: bool | None = None) -> Result:
        """`changes=False` for a command that changes nothing readers keep (default: judged
        from the command). `stdin`, a file descriptor or file the command reads (instead of
        `input`, text given to it); `timeout=NO_TIMEOUT` for one with no time limit."""
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise TypeError("commands are argument lists of strings")
        limit = None if timeout is NO_TIMEOUT else self.timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, input=input, stdin=stdin, capture_output=True, text=True,
                                  timeout=limit, env=env, errors="replace")
        except subprocess.TimeoutExpired as exc:
            assert limit is not None  # only a command with a limit times out
            if changes is not False:
                self.storage_changed(argv)
            log.error("command timed out after %gs: %s", limit, summary(argv),
                      extra={"command": argv[0], "rc": None, "duration": round(limit, 3)})
            raise CommandTimeout(argv, limit) from exc
        except FileNotFoundError as exc:
            raise CommandNotFound(argv) from exc
        duration = time.monotonic() - started
        if changes is not False:
            self.storage_changed(argv)
        # Every command, with its exit status and duration; never its input (which may hold
        # a password), and argument lists carry none. The background threads' routine reads
        # (the worker's target check every few seconds) go to DEBUG; what they change or what
        # fails stays at INFO.
        routine = (request_id_var.get() in BACKGROUND_CONTEXTS and proc.returncode == 0
                   and not changes_system(argv))
        log.log(logging.DEBUG if routine else logging.INFO, "ran %s: rc=%s in %.3fs", summary(argv),
                proc.returncode, duration,
                extra={"command": argv[0], "rc": proc.returncode, "duration": round(duration, 3)})
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise result.error()
        return result
