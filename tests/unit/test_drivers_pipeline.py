"""run_pipeline with real small commands (sh, head, cat, md5sum, sleep): the bytes relayed,
progress, cancel, stall detection, failures on either side and the output captured.

Timing bounds are loose on purpose (these are not performance tests); each test that starts a
long-lived command records its pid so that it can be ended if the relay leaves it behind."""
from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest

from vsnap.drivers.pipeline import PipelineResult, PipelineStopped, run_pipeline

LOOSE = 10.0  # seconds: "promptly", for a relay that looks every tick


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not: it has stopped, only its exit status is left)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def read_pid(path, timeout: float = 5.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError(f"{path} never written")


@pytest.fixture
def pids():
    """Pids of commands a test started; any still running at the end are killed (by pid)."""
    found: list[int] = []
    yield found
    for pid in found:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def sh_with_pid(pidfile, script: str) -> list[str]:
    """sh that writes its pid, then runs `script` (use `exec` to keep the pid)."""
    return ["sh", "-c", f"echo $$ > '{pidfile}'; {script}"]


# =============================================================================================
# data and counting
# =============================================================================================

@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 1 << 20, 3_000_000 + 12345])
def test_bytes_counted_exactly_and_data_intact(tmp_path, size):
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    result = run_pipeline(["cat", str(src)], ["md5sum"], stall_seconds=LOOSE, tick=0.1)
    assert isinstance(result, PipelineResult)
    assert result.bytes_moved == size
    assert result.producer_rc == 0 and result.consumer_rc == 0
    assert result.consumer_out.split()[0] == hashlib.md5(data).hexdigest()


def test_data_arrives_byte_for_byte(tmp_path):
    data = os.urandom(2_500_000)
    (tmp_path / "src.bin").write_bytes(data)
    out = tmp_path / "out.bin"
    result = run_pipeline(["cat", str(tmp_path / "src.bin")], ["sh", "-c", f"cat > '{out}'"],
                          stall_seconds=LOOSE, tick=0.1)
    assert result.bytes_moved == len(data) and result.consumer_rc == 0
    assert out.read_bytes() == data


def test_empty_stream():
    result = run_pipeline(["true"], ["md5sum"], stall_seconds=LOOSE)
    assert result.bytes_moved == 0 and result.producer_rc == 0 and result.consumer_rc == 0
    assert result.consumer_out.split()[0] == hashlib.md5(b"").hexdigest()


def test_commands_are_argument_lists_not_shell():
    # A shell would expand these; as argv they reach the command untouched.
    result = run_pipeline(["printf", "%s", "$(echo x);`id`|*"], ["cat"], stall_seconds=LOOSE)
    assert result.consumer_out == "$(echo x);`id`|*"
    assert result.bytes_moved == len("$(echo x);`id`|*")


# =============================================================================================
# progress
# =============================================================================================

def test_progress_non_decreasing_and_ends_with_the_total():
    seen: list[int] = []
    chunk, rounds = 100_000, 6
    producer = ["sh", "-c", f"for i in $(seq {rounds}); do head -c {chunk} /dev/zero; sleep 0.1; done"]
    result = run_pipeline(producer, ["md5sum"], progress=seen.append, stall_seconds=LOOSE, tick=0.05)
    assert result.bytes_moved == chunk * rounds
    assert seen, "progress was never called"
    assert seen == sorted(seen)
    assert seen[-1] == chunk * rounds
    assert len(seen) >= 3  # called while data moved, not only at the end
    assert any(0 < v < chunk * rounds for v in seen)


def test_progress_called_with_the_total_even_for_a_quick_stream():
    seen: list[int] = []
    result = run_pipeline(["head", "-c", "1000", "/dev/zero"], ["cat"], progress=seen.append, tick=60)
    assert seen and seen[-1] == 1000 == result.bytes_moved


def test_the_stream_does_not_wait_for_a_slow_progress_report(tmp_path):
    # progress() blocks (as a database round trip can) until the consumer has taken the whole
    # stream: a relay that reported in its own loop would move nothing meanwhile.
    done = tmp_path / "consumer-done"
    size = 8 << 20  # more than both pipes hold
    seen: list[tuple[int, bool]] = []

    def progress(moved):
        if not seen:
            end = time.monotonic() + LOOSE
            while not done.exists() and time.monotonic() < end:
                time.sleep(0.01)
        seen.append((moved, done.exists()))

    result = run_pipeline(["head", "-c", str(size), "/dev/zero"], ["sh", "-c", f"md5sum; touch '{done}'"],
                          progress=progress, stall_seconds=LOOSE, tick=0.05)
    assert result.bytes_moved == size and result.consumer_rc == 0
    assert seen[0][1], "the consumer had not got the stream while the first progress report was blocked"
    assert seen[-1][0] == size  # (whether the consumer has touched its file by then is a race)


# =============================================================================================
# cancel (should_stop)
# =============================================================================================

def test_should_stop_kills_both_and_raises_promptly(tmp_path, pids):
    ppid, cpid = tmp_path / "p.pid", tmp_path / "c.pid"
    producer = sh_with_pid(ppid, "while :; do printf xxxxxxxx; sleep 0.01; done")
    consumer = sh_with_pid(cpid, "exec cat > /dev/null")
    asked: list[float] = []
    start = time.monotonic()

    def should_stop():
        asked.append(time.monotonic())
        return "Canceled" if time.monotonic() - start > 0.5 else None

    with pytest.raises(PipelineStopped) as info:
        run_pipeline(producer, consumer, should_stop=should_stop, stall_seconds=LOOSE, tick=0.1)
    elapsed = time.monotonic() - start
    pids += [read_pid(ppid), read_pid(cpid)]
    assert str(info.value) == "Canceled"
    assert 0.5 <= elapsed < LOOSE
    assert len(asked) >= 2
    assert not alive(pids[0]) and not alive(pids[1])


def test_should_stop_honoured_when_nothing_moves(tmp_path, pids):
    ppid, cpid = tmp_path / "p.pid", tmp_path / "c.pid"
    start = time.monotonic()
    with pytest.raises(PipelineStopped, match="^stop now$"):
        run_pipeline(sh_with_pid(ppid, "exec sleep 30"), sh_with_pid(cpid, "exec sleep 30"),
                     should_stop=lambda: "stop now" if time.monotonic() - start > 0.3 else None,
                     stall_seconds=LOOSE, tick=0.1)
    assert time.monotonic() - start < 5
    pids += [read_pid(ppid), read_pid(cpid)]
    assert not alive(pids[0]) and not alive(pids[1])


def test_should_stop_returning_nothing_lets_the_stream_finish():
    result = run_pipeline(["head", "-c", "300000", "/dev/zero"], ["md5sum"], should_stop=lambda: None,
                          stall_seconds=LOOSE, tick=0.05)
    assert result.bytes_moved == 300000 and result.consumer_rc == 0


# =============================================================================================
# stalls
# =============================================================================================

def test_stall_when_the_producer_sends_nothing(tmp_path, pids):
    ppid = tmp_path / "p.pid"
    start = time.monotonic()
    with pytest.raises(PipelineStopped, match="stalled"):
        run_pipeline(sh_with_pid(ppid, "exec sleep 30"), ["cat"], stall_seconds=1, tick=0.1)
    elapsed = time.monotonic() - start
    assert 0.95 <= elapsed < LOOSE
    pids.append(read_pid(ppid))
    assert not alive(pids[0])


def test_stall_when_the_producer_stops_midway(tmp_path, pids):
    ppid = tmp_path / "p.pid"
    seen: list[int] = []
    with pytest.raises(PipelineStopped, match="stalled"):
        run_pipeline(sh_with_pid(ppid, "head -c 200000 /dev/zero; exec sleep 30"), ["md5sum"],
                     progress=seen.append, stall_seconds=1, tick=0.1)
    assert seen and seen[-1] == 200000
    pids.append(read_pid(ppid))
    assert not alive(pids[0])


def test_stall_when_the_consumer_does_not_read(tmp_path, pids):
    cpid = tmp_path / "c.pid"
    start = time.monotonic()
    with pytest.raises(PipelineStopped, match="stalled"):
        run_pipeline(["head", "-c", "10000000", "/dev/zero"], sh_with_pid(cpid, "exec sleep 30"),
                     stall_seconds=1, tick=0.1)
    elapsed = time.monotonic() - start
    assert 0.95 <= elapsed < LOOSE
    pids.append(read_pid(cpid))
    assert not alive(pids[0])


def test_slow_but_steady_is_not_a_stall():
    # 7 pieces 0.3 s apart: 2 s in all, never 1 s without data.
    producer = ["sh", "-c", "for i in 1 2 3 4 5 6 7; do printf 0123456789; sleep 0.3; done"]
    result = run_pipeline(producer, ["cat"], stall_seconds=1, tick=0.1)
    assert result.bytes_moved == 70 and result.consumer_out == "0123456789" * 7


def _run_in_thread(kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        start = time.monotonic()
        try:
            outcome["result"] = run_pipeline(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - start
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_stall_when_the_consumer_hangs_after_the_stream_ended(tmp_path, pids):
    cpid = tmp_path / "c.pid"
    # The whole stream fits in the pipe; then the consumer sits without reading or exiting.
    thread, outcome = _run_in_thread(dict(producer=["printf", "abc"],
                                          consumer=sh_with_pid(cpid, "exec sleep 30"),
                                          stall_seconds=0.5, tick=0.1))
    try:
        thread.join(3)
        assert not thread.is_alive(), "run_pipeline still waiting 3 s after a 0.5 s stall limit"
        assert isinstance(outcome.get("error"), PipelineStopped)
        assert "stalled" in str(outcome["error"])
    finally:
        pids.append(read_pid(cpid))
        if alive(pids[-1]):
            os.kill(pids[-1], signal.SIGKILL)
        thread.join(5)


def test_a_cancel_after_the_whole_stream_lets_the_consumer_finish():
    # The receiving side may be committing what it got: killing our end would not stop that,
    # only hide how it ended. The consumer's own ending is the result.
    start = time.monotonic()
    result = run_pipeline(["printf", "abc"], ["sh", "-c", "cat > /dev/null; sleep 0.6; echo committed"],
                          should_stop=lambda: "Canceled" if time.monotonic() - start > 0.2 else None,
                          stall_seconds=LOOSE, tick=0.1)
    assert result.consumer_rc == 0 and result.consumer_out == "committed\n" and result.bytes_moved == 3


def test_after_the_stream_the_stall_limit_still_ends_a_consumer_that_hangs(tmp_path, pids):
    cpid = tmp_path / "c.pid"
    start = time.monotonic()
    thread, outcome = _run_in_thread(dict(producer=["printf", "abc"],
                                          consumer=sh_with_pid(cpid, "cat > /dev/null; exec sleep 30"),
                                          should_stop=lambda: "Canceled" if time.monotonic() - start > 0.2 else None,
                                          stall_seconds=0.5, tick=0.1))
    try:
        thread.join(3)
        assert not thread.is_alive(), "a consumer hanging after the stream was waited for past the limit"
        assert isinstance(outcome.get("error"), PipelineStopped)
        assert "stalled" in str(outcome["error"]) and outcome["error"].bytes_moved == 3
    finally:
        pids.append(read_pid(cpid))
        if alive(pids[-1]):
            os.kill(pids[-1], signal.SIGKILL)
        thread.join(5)


def test_consumer_finishing_after_the_stream_within_the_limit():
    result = run_pipeline(["printf", "abc"], ["sh", "-c", "cat > /dev/null; sleep 0.5; echo committed"],
                          stall_seconds=3, tick=0.1)
    assert result.consumer_rc == 0 and result.consumer_out == "committed\n" and result.bytes_moved == 3


def test_producer_lingering_after_the_consumer_died(tmp_path, pids):
    ppid = tmp_path / "p.pid"
    thread, outcome = _run_in_thread(dict(producer=sh_with_pid(ppid, "head -c 1000000 /dev/zero; exec sleep 30"),
                                          consumer=["sh", "-c", "exit 3"],
                                          should_stop=lambda: None, stall_seconds=0.5, tick=0.1))
    try:
        thread.join(3)
        assert not thread.is_alive(), "run_pipeline still waiting for a producer whose consumer is gone"
    finally:
        pids.append(read_pid(ppid))
        if alive(pids[-1]):
            os.kill(pids[-1], signal.SIGKILL)
        thread.join(5)


# =============================================================================================
# failures
# =============================================================================================

def test_producer_failure_is_reported_and_the_consumer_not_left_to_succeed():
    # The consumer would exit 0 a while after the end of its input: it must not get to.
    start = time.monotonic()
    result = run_pipeline(["sh", "-c", "printf partial; echo 'send failed' >&2; exit 7"],
                          ["sh", "-c", "cat > /dev/null; sleep 30; exit 0"], stall_seconds=LOOSE, tick=0.1)
    assert result.producer_rc == 7
    assert result.producer_err == "send failed\n"
    assert result.consumer_rc != 0 and result.consumer_killed
    assert result.bytes_moved == len("partial")
    assert time.monotonic() - start < 20  # killed, not waited for (no timing claim beyond that)


def test_producer_failure_with_a_hanging_consumer_is_a_producer_failure(tmp_path, pids):
    cpid = tmp_path / "c.pid"
    try:
        result = run_pipeline(["sh", "-c", "echo 'cannot send: I/O error' >&2; exit 1"],
                              sh_with_pid(cpid, "exec sleep 30"), stall_seconds=1, tick=0.1)
    finally:
        # The consumer may be killed before it wrote its pid, even after its shell created
        # the file (a loaded machine): then it never got to run anything else.
        if cpid.exists() and cpid.read_text().strip():
            pids.append(read_pid(cpid))
    assert result.producer_rc == 1 and "I/O error" in result.producer_err
    assert result.consumer_killed and result.consumer_rc == -signal.SIGKILL
    assert not pids or not alive(pids[0])


def test_producer_failure_with_a_quick_consumer():
    result = run_pipeline(["sh", "-c", "exit 2"], ["md5sum"], stall_seconds=LOOSE)
    assert result.producer_rc == 2  # whatever the consumer made of the empty stream
    assert result.bytes_moved == 0


def test_consumer_failing_early_does_not_hang():
    start = time.monotonic()
    result = run_pipeline(["head", "-c", "50000000", "/dev/zero"],
                          ["sh", "-c", "echo 'cannot receive' >&2; exit 3"], stall_seconds=LOOSE, tick=0.1)
    assert result.consumer_rc == 3
    assert result.consumer_err == "cannot receive\n"
    assert result.producer_rc != 0  # its output had nowhere to go
    assert result.bytes_moved < 50_000_000
    assert time.monotonic() - start < LOOSE


def test_consumer_failing_after_reading_some():
    result = run_pipeline(["head", "-c", "20000000", "/dev/zero"], ["sh", "-c", "head -c 1000 > /dev/null; exit 4"],
                          stall_seconds=LOOSE, tick=0.1)
    assert result.consumer_rc == 4
    assert 1000 <= result.bytes_moved < 20_000_000


def test_missing_producer_command():
    with pytest.raises(FileNotFoundError):
        run_pipeline(["/nonexistent/zfs", "send"], ["cat"])


def test_missing_consumer_command_kills_the_producer(monkeypatch):
    import vsnap.drivers.pipeline as pipeline
    started: list = []
    real_popen = pipeline.subprocess.Popen

    def spy(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc
    monkeypatch.setattr(pipeline.subprocess, "Popen", spy)
    with pytest.raises(FileNotFoundError):
        run_pipeline(["sleep", "30"], ["/nonexistent/ssh"])
    (producer,) = started
    try:
        assert producer.wait(5) == -signal.SIGKILL
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        producer.stdout.close()
        producer.stderr.close()


def test_exception_in_progress_kills_both(tmp_path, pids):
    ppid, marker = tmp_path / "p.pid", tmp_path / "consumer-finished"

    def progress(moved):
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        run_pipeline(sh_with_pid(ppid, "head -c 2000000 /dev/zero; exec sleep 30"),
                     ["sh", "-c", f"cat > /dev/null && touch '{marker}'"], progress=progress,
                     stall_seconds=LOOSE, tick=0.05)
    pids.append(read_pid(ppid))  # the pids fixture kills a producer left running
    assert not alive(pids[0]), "the producer is still running"
    time.sleep(0.3)
    assert not marker.exists(), "the consumer took the truncated stream for a complete one"


# =============================================================================================
# output
# =============================================================================================

def test_stdout_and_stderr_captured():
    result = run_pipeline(["sh", "-c", "echo 'producer says' >&2; printf payload"],
                          ["sh", "-c", "cat; echo; echo 'consumer says' >&2"], stall_seconds=LOOSE)
    assert result.producer_err == "producer says\n"
    assert result.consumer_out == "payload\n"
    assert result.consumer_err == "consumer says\n"
    assert result.producer_rc == 0 and result.consumer_rc == 0


def test_large_stderr_does_not_block_the_stream():
    # More than a pipe holds on both stderrs and the consumer's stdout: read while data moves.
    noisy = "head -c 300000 /dev/zero | tr '\\0' e >&2"
    result = run_pipeline(["sh", "-c", f"{noisy}; head -c 500000 /dev/zero"],
                          ["sh", "-c", f"{noisy}; md5sum; head -c 300000 /dev/zero | tr '\\0' o"],
                          stall_seconds=5, tick=0.1)
    assert result.bytes_moved == 500000
    assert result.producer_err == "e" * 300000
    assert result.consumer_err == "e" * 300000
    assert result.consumer_out.startswith(hashlib.md5(b"\0" * 500000).hexdigest())
    assert result.consumer_out.endswith("o" * 300000)


def test_undecodable_output_is_replaced_not_fatal():
    result = run_pipeline(["sh", "-c", "printf '\\377\\376' >&2; printf x"], ["cat"], stall_seconds=LOOSE)
    assert result.producer_err == "\ufffd\ufffd"
    assert result.consumer_out == "x"


# =============================================================================================
# bandwidth limit
# =============================================================================================

def test_max_rate_keeps_the_stream_under_the_limit_and_the_data_whole(tmp_path):
    data = os.urandom(1_500_000)
    (tmp_path / "src.bin").write_bytes(data)
    rate = 1_000_000
    seen: list[tuple[float, int]] = []
    started = time.monotonic()
    result = run_pipeline(["cat", str(tmp_path / "src.bin")], ["md5sum"], max_rate=rate, stall_seconds=LOOSE,
                          tick=0.05, progress=lambda moved: seen.append((time.monotonic() - started, moved)))
    elapsed = time.monotonic() - started
    assert result.bytes_moved == len(data) and result.consumer_out.split()[0] == hashlib.md5(data).hexdigest()
    # Never ahead of the limit by more than one slice (a tenth of a second's worth), at any
    # moment: a slow machine only makes the stream slower, so these bounds cannot flake.
    assert elapsed >= (len(data) - rate // 10) / rate
    assert all(moved <= rate * at + rate // 10 for at, moved in seen)


def test_a_small_limit_still_moves_in_slices_and_a_cancel_is_prompt():
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(PipelineStopped) as info:
        run_pipeline(["head", "-c", "10000000", "/dev/zero"], ["md5sum"], max_rate=10_000, stall_seconds=LOOSE,
                     tick=0.05, should_stop=lambda: "canceled" if stop.is_set() else None)
    assert time.monotonic() - started < LOOSE
    assert 0 < info.value.bytes_moved <= 10_000 * (time.monotonic() - started) + 4096


def test_time_spent_waiting_for_data_is_not_saved_up_for_a_burst():
    rate = 1_000_000
    seen: list[tuple[float, int]] = []
    started = time.monotonic()
    # Nothing for a second, then 1.2 MB at once: it still moves at the limit, not in a burst.
    producer = ["sh", "-c", "sleep 1; head -c 1200000 /dev/zero"]
    result = run_pipeline(producer, ["md5sum"], max_rate=rate, stall_seconds=LOOSE, tick=0.05,
                          progress=lambda moved: seen.append((time.monotonic() - started, moved)))
    assert result.bytes_moved == 1_200_000
    first = next(at for at, moved in seen if moved > 0)  # when data began to move
    assert all(moved <= rate * (at - first) + 2 * (rate // 10) for at, moved in seen if at >= first)
