"""Two commands joined by a relay that counts the bytes passing: `zfs send | ssh ... receive`.

The relay moves data with splice(2) between the two pipes (no copy through user space), so it
costs next to nothing, and it is where progress is measured, stalls are noticed and a cancel
takes effect. Both commands are argument lists, never a shell.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

CHUNK = 1 << 20


class PipelineStopped(Exception):
    """The relay was told to stop (cancel) or saw no progress for too long (stall)."""


@dataclass
class PipelineResult:
    bytes_moved: int
    producer_rc: int
    producer_err: str
    consumer_rc: int
    consumer_out: str
    consumer_err: str
    producer_killed: bool = False  # by the relay, because the consumer had gone
    consumer_killed: bool = False  # by the relay, because the producer failed


def _read_all(stream, sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(65536), b""):
        sink.append(chunk)


def run_pipeline(producer: list[str], consumer: list[str], *,
                 progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], str | None] | None = None,
                 stall_seconds: float = 60.0, tick: float = 0.5) -> PipelineResult:
    """Runs producer | consumer. `progress(bytes)` is called about every `tick` seconds while
    data moves; `should_stop()` returning a reason ends both commands and raises
    PipelineStopped(reason), as does no data moving for `stall_seconds`."""
    prod = subprocess.Popen(producer, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        cons = subprocess.Popen(consumer, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except BaseException:
        _kill(prod)
        raise
    outputs: dict[str, list[bytes]] = {"perr": [], "cout": [], "cerr": []}
    readers = [threading.Thread(target=_read_all, args=(s, outputs[k]), daemon=True)
               for s, k in ((prod.stderr, "perr"), (cons.stdout, "cout"), (cons.stderr, "cerr"))]
    for r in readers:
        r.start()
    moved = 0
    src, dst = prod.stdout.fileno(), cons.stdin.fileno()
    last_move = last_report = time.monotonic()
    reason = None
    consumer_gone = False
    flags = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
    try:
        while True:
            now = time.monotonic()
            if now - last_move > stall_seconds:
                reason = f"stalled: no data moved for {stall_seconds:g} s"
                break
            # Both may cost a database round trip: once a tick, not once a chunk.
            if now - last_report >= tick:
                last_report = now
                if should_stop is not None and (reason := should_stop()):
                    break
                if progress is not None:
                    progress(moved)
            # Wait for data, then for room: never blocked in splice, so a stall or a cancel is
            # seen within a tick whichever side is stuck.
            if not select.select([src], [], [], tick)[0] or not select.select([], [dst], [], tick)[1]:
                continue
            try:
                n = os.splice(src, dst, CHUNK, flags=flags)
            except BlockingIOError:
                continue
            except BrokenPipeError:  # the consumer gave up; its exit status says why
                consumer_gone = True
                break
            if n == 0:
                break  # end of the stream
            moved += n
            last_move = time.monotonic()
    except BaseException:
        # Whatever went wrong here, a half-relayed stream must not end as a clean one.
        for proc in (prod, cons):
            _kill(proc)
            proc.wait()
        raise
    finally:
        if reason is not None:
            _kill(prod)
            _kill(cons)
        try:
            cons.stdin.close()
        except BrokenPipeError:
            pass
        prod.stdout.close()
    producer_killed = consumer_killed = False
    if reason is None:
        if consumer_gone:
            producer_killed = _kill(prod)  # nobody reads what it sends any more
        else:
            # The producer ends right after its stream; a failed one must not leave the
            # consumer to take a truncated stream for a whole one.
            reason, prod_rc = _wait(prod, should_stop, stall_seconds, tick, "the sending side")
            if reason is None and prod_rc != 0:
                consumer_killed = _kill(cons)
    if reason is None:
        reason = _wait(cons, should_stop, stall_seconds, tick, "the receiving side")[0]
    if reason is not None:
        _kill(prod)
        _kill(cons)
        prod.wait()
        cons.wait()
        raise PipelineStopped(reason)
    prod_rc, cons_rc = prod.wait(), cons.wait()
    for r in readers:
        r.join(5)
    if progress is not None:
        progress(moved)

    def text(key: str) -> str:
        return b"".join(outputs[key]).decode(errors="replace")
    return PipelineResult(moved, prod_rc, text("perr"), cons_rc, text("cout"), text("cerr"),
                          producer_killed, consumer_killed)


def _wait(proc: subprocess.Popen, should_stop, stall_seconds: float, tick: float,
          what: str) -> tuple[str | None, int | None]:
    """Waits for a command to finish after the end of the stream (the receiving side commits
    what it got): a cancel still applies, and so does the watchdog."""
    deadline = time.monotonic() + stall_seconds
    while proc.poll() is None:
        if should_stop is not None and (reason := should_stop()):
            return reason, None
        if time.monotonic() > deadline:
            return f"stalled: {what} did not finish within {stall_seconds:g} s of the stream's end", None
        try:
            proc.wait(tick)
        except subprocess.TimeoutExpired:
            pass
    return None, proc.returncode


def _kill(proc: subprocess.Popen) -> bool:
    """Kills a command still running; says whether it did."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGKILL)
            return True
        except ProcessLookupError:
            pass
    return False
