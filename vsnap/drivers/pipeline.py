"""Two commands joined by a relay that counts the bytes passing: `zfs send | ssh ... receive`.

The relay moves data with splice(2) between the two pipes (no copy through user space), so it
costs next to nothing, and it is where progress is measured, stalls are noticed and a cancel
takes effect. Both commands are argument lists, never a shell.

The data never waits for the bookkeeping: one thread only relays (a pipe's worth, 1 MiB, at
a time), and a watcher thread reports progress, asks whether to stop and notices stalls once
a tick; when the transfer must end it kills both commands and the relay stops within a tick.
(Done in the relay's own loop, each progress report and cancel check held the data up for a
database round trip: about a tenth of the time on a busy machine.)
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

CHUNK = 1 << 20
PIPE_SIZE = 1 << 20  # Linux's default limit for an unprivileged process (fs.pipe-max-size)


class PipelineStopped(Exception):
    """The relay was told to stop (cancel) or saw no progress for too long (stall)."""

    def __init__(self, reason: str, bytes_moved: int = 0):
        super().__init__(reason)
        self.bytes_moved = bytes_moved


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


def _enlarge(fd: int) -> None:
    """A pipe holds 64 KiB by default: larger, each splice moves more and the relay wakes less."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe still works


class _Watch:
    """What the watcher thread shares with the relay: the bytes moved and when they last moved
    (written by the relay), and why the transfer must end (written by the watcher)."""

    def __init__(self):
        self.moved = 0
        self.last_move = time.monotonic()
        self.reason: str | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def _watch(watch: _Watch, procs, progress, should_stop, stall_seconds: float, tick: float) -> None:
    """Once a tick: the stall limit, a cancel, progress. Ending the transfer kills both commands
    at once (a command stuck in a write or a read ends with them); the relay sees why within a
    tick."""
    try:
        while not watch.done.wait(tick):
            if time.monotonic() - watch.last_move > stall_seconds:
                watch.reason = f"stalled: no data moved for {stall_seconds:g} s"
            elif should_stop is not None and (reason := should_stop()):
                watch.reason = reason
            elif progress is not None:
                progress(watch.moved)
            if watch.reason is not None:
                break
    except BaseException as exc:  # e.g. the database failed: the relay re-raises it
        watch.error = exc
    if watch.reason is not None or watch.error is not None:
        for proc in procs:
            _kill(proc)


def run_pipeline(producer: list[str], consumer: list[str], *,
                 progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], str | None] | None = None,
                 stall_seconds: float = 60.0, tick: float = 0.5,
                 max_rate: int | None = None) -> PipelineResult:
    """Runs producer | consumer. `progress(bytes)` is called about every `tick` seconds while
    data moves; `should_stop()` returning a reason ends both commands and raises
    PipelineStopped(reason), as does no data moving for `stall_seconds`. While the stream flows
    both are called from a thread of the relay's own, so they must be thread-safe.
    `max_rate` (bytes per second) keeps the stream under it, over any stretch of it."""
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
    prod_out, cons_in = prod.stdout, cons.stdin
    assert prod_out is not None and cons_in is not None  # both opened with subprocess.PIPE
    src, dst = prod_out.fileno(), cons_in.fileno()
    _enlarge(src)
    _enlarge(dst)
    watch = _Watch()
    watcher = threading.Thread(target=_watch, args=(watch, (prod, cons), progress, should_stop, stall_seconds, tick),
                               name="pipeline-watch", daemon=True)
    watcher.start()
    consumer_gone = False
    flags = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
    throttle = _Throttle(max_rate) if max_rate else None
    try:
        while watch.reason is None and watch.error is None:
            chunk = CHUNK
            if throttle is not None:
                chunk = throttle.allowance(tick)
                if chunk == 0:
                    continue  # it slept; the watcher's decisions are seen within a tick
            # Wait for data, then for room, a tick at most: never blocked in splice, so the
            # relay ends within a tick of the watcher's decision even if a killed command
            # left its end of a pipe open (in a child of its own, say).
            if not select.select([src], [], [], tick)[0] or not select.select([], [dst], [], tick)[1]:
                continue
            try:
                n = os.splice(src, dst, chunk, flags=flags)
            except BlockingIOError:
                continue
            except BrokenPipeError:  # the consumer gave up (or was killed); its exit status says why
                consumer_gone = True
                break
            if n == 0:
                break  # end of the stream (or the producer was killed)
            watch.moved += n
            watch.last_move = time.monotonic()
            if throttle is not None:
                throttle.moved(n)
    except BaseException:
        # Whatever went wrong here, a half-relayed stream must not end as a clean one.
        watch.done.set()
        for proc in (prod, cons):
            _kill(proc)
            proc.wait()
        raise
    finally:
        watch.done.set()
        # The consumer sees the end of the stream now, not once a progress report (which may
        # be waiting on the database) has returned.
        try:
            cons_in.close()
        except BrokenPipeError:
            pass
        prod_out.close()
        watcher.join()
    moved = watch.moved
    if watch.error is not None:
        for proc in (prod, cons):
            _kill(proc)
            proc.wait()
        raise watch.error
    reason = watch.reason
    producer_killed = consumer_killed = False
    if reason is None:
        if consumer_gone:
            producer_killed = _kill(prod)  # nobody reads what it sends any more
        else:
            # The producer ends right after its stream; a failed one must not leave the
            # consumer to take a truncated stream for a whole one. A cancel no longer applies
            # once the whole stream has passed: the receiving side may be committing it, and
            # killing our end would not stop that, only hide how it ended.
            reason, prod_rc = _wait(prod, None, stall_seconds, tick, "the sending side")
            if reason is None and prod_rc != 0:
                consumer_killed = _kill(cons)
    if reason is None:
        reason = _wait(cons, None, stall_seconds, tick, "the receiving side")[0]
    if reason is not None:
        _kill(prod)
        _kill(cons)
        prod.wait()
        cons.wait()
        raise PipelineStopped(reason, moved)
    prod_rc, cons_rc = prod.wait(), cons.wait()
    for r in readers:
        r.join(5)
    if progress is not None:
        progress(moved)

    def text(key: str) -> str:
        return b"".join(outputs[key]).decode(errors="replace")
    return PipelineResult(moved, prod_rc, text("perr"), cons_rc, text("cout"), text("cerr"),
                          producer_killed, consumer_killed)


class _Throttle:
    """Keeps a stream under `rate` bytes per second, over any stretch of it: each slice (a tenth
    of a second's worth at most) is moved no earlier than the rate allows after the one before.
    Time the stream spent waiting for data is not saved up for a burst after it."""

    def __init__(self, rate: int):
        self.rate = rate
        self.slice = max(4096, min(CHUNK, rate // 10))
        self.free_at = time.monotonic()

    def allowance(self, tick: float) -> int:
        """How much the next splice may move; 0 after sleeping (at most `tick`) when it is early."""
        early = self.free_at - time.monotonic()
        if early > 0:
            time.sleep(min(tick, early))
            return 0
        return self.slice

    def moved(self, n: int) -> None:
        self.free_at = max(self.free_at, time.monotonic()) + n / self.rate


def _wait(proc: subprocess.Popen, should_stop, stall_seconds: float, tick: float,
          what: str) -> tuple[str | None, int | None]:
    """Waits for a command to finish after the end of the stream (the receiving side commits
    what it got): the watchdog applies, and a cancel if `should_stop` is given."""
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
