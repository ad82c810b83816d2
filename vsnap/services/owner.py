"""Which process owns a change in flight, told apart from a later process that got the same pid.

An owner is "pid:start time" (the start time from /proc/PID/stat, in clock ticks since boot).
A zombie owner is dead: its work stopped when it was killed, whenever it gets reaped.
"""
from __future__ import annotations

import os


def _stat(pid: int) -> tuple[str, str] | None:
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return fields[0], fields[19]  # state, starttime


def current_owner() -> str:
    stat = _stat(os.getpid())
    return f"{os.getpid()}:{stat[1] if stat else 0}"


def owner_alive(owner: str | None) -> bool:
    if not owner:
        return False
    pid, _, start = owner.partition(":")
    if not pid.isdigit():
        return False
    stat = _stat(int(pid))
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == start


def is_current(owner: str | None) -> bool:
    return owner == current_owner()
