"""The doorbell between server processes (a FIFO), and the replication queue's worker that
waits on it: real FIFOs, a real other process ringing."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from vsnap.services.doorbell import Doorbell
from vsnap.worker import Worker

LOOSE = 10.0


@pytest.fixture
def bell(tmp_path):
    b = Doorbell(tmp_path / "sessions.bell")
    yield b
    b.close()


def test_ringing_with_nobody_listening_does_nothing(tmp_path):
    Doorbell(tmp_path / "none.bell").ring()  # no FIFO at all
    waiter = Doorbell(tmp_path / "b.bell")
    waiter.wait(0)  # makes the FIFO
    waiter.close()  # ...and nobody listens any more
    start = time.monotonic()
    Doorbell(tmp_path / "b.bell").ring()
    assert time.monotonic() - start < LOOSE


def test_a_ring_from_another_process_wakes_the_waiter(bell):
    assert bell.wait(0) is False  # listening now
    code = f"from vsnap.services.doorbell import Doorbell; Doorbell({str(bell.path)!r}).ring()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    start = time.monotonic()
    assert bell.wait(LOOSE) is True
    assert time.monotonic() - start < LOOSE / 2


def test_rings_are_taken_together_and_silence_times_out(bell):
    bell.wait(0)
    for _ in range(3):
        Doorbell(bell.path).ring()
    assert bell.wait(LOOSE) is True
    start = time.monotonic()
    assert bell.wait(0.2) is False
    assert time.monotonic() - start >= 0.19


def test_ringing_never_blocks_on_a_full_fifo(bell):
    bell.wait(0)
    ringer = Doorbell(bell.path)
    start = time.monotonic()
    for _ in range(70_000):  # more than the FIFO holds, nobody draining it
        ringer.ring()
    assert time.monotonic() - start < LOOSE * 3
    assert bell.wait(0) is True and bell.wait(0) is False


def test_a_path_that_is_no_fifo_still_waits_and_says_so(tmp_path, caplog):
    path = tmp_path / "taken"
    path.write_text("not a fifo")
    b = Doorbell(path)
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        assert b.wait(0.2) is False
    assert time.monotonic() - start >= 0.19
    assert "unusable" in caplog.text
    Doorbell(path).ring()
    assert path.read_text() == "not a fifo"


# == the queue's worker ==========================================================================

class FakeReplication:
    """A queue of sessions (relationship id per session); run_session waits for `release`."""

    def __init__(self, bell):
        self.doorbell = bell
        self.pending: list[tuple[int, str]] = []
        self.started: dict[int, float] = {}
        self.release: dict[int, threading.Event] = {}
        self.lock = threading.Lock()

    def queue(self, session_id, rel_id):
        with self.lock:
            self.pending.append((session_id, rel_id))
            self.release[session_id] = threading.Event()
        self.doorbell.ring()

    def fail_interrupted(self):
        pass

    def claim_next(self, busy):
        with self.lock:
            for i, (sid, rel) in enumerate(self.pending):
                if rel not in busy:
                    del self.pending[i]
                    return sid
        return None

    def get_session(self, session_id):
        return {"rel_id": next(r for s, r in self.all if s == session_id)}

    def run_session(self, session_id):
        self.started[session_id] = time.monotonic()
        self.release[session_id].wait(LOOSE)


def wait_for(predicate, timeout=LOOSE):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_the_queue_starts_a_session_when_rung_not_at_its_next_look(tmp_path):
    bell = Doorbell(tmp_path / "sessions.bell")
    repl = FakeReplication(bell)
    repl.all = [(1, "r1"), (2, "r1")]
    worker = Worker(SimpleNamespace(repl_parallel=2), SimpleNamespace(replication=repl))
    worker.queue_interval = 60  # without the bell, nothing would start for a minute
    thread = threading.Thread(target=worker._run_sessions, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: bell._fd is not None)  # the worker listens
        repl.queue(1, "r1")
        repl.queue(2, "r1")  # same relationship: waits for the first
        assert wait_for(lambda: 1 in repl.started), "a queued session did not start when rung"
        time.sleep(0.2)
        assert 2 not in repl.started
        repl.release[1].set()
        assert wait_for(lambda: 2 in repl.started), "the next session did not start when the first ended"
        repl.release[2].set()
    finally:
        worker.stop()
        bell.ring()
        thread.join(LOOSE)
        bell.close()
    assert not thread.is_alive()
