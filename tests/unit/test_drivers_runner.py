"""Runner: argument lists only, never a shell; errors, timeouts and missing programs."""
from __future__ import annotations

import sys
import time

import pytest

from vsnap.drivers.runner import NO_TIMEOUT, CommandError, CommandNotFound, CommandTimeout, Runner


@pytest.mark.parametrize("argv", ["echo hi", ("echo", "hi"), ["echo", 1], ["echo", None]])
def test_refuses_anything_but_a_list_of_strings(argv):
    with pytest.raises(TypeError):
        Runner().run(argv)


def test_runs_and_captures_output():
    result = Runner().run(["echo", "hello"])
    assert result.returncode == 0
    assert result.stdout == "hello\n"
    assert result.stderr == ""
    assert result.argv == ["echo", "hello"]


def test_shell_metacharacters_are_passed_literally(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"$(id); rm -rf /; touch {marker} `whoami` | cat > /dev/null && echo *"
    result = Runner().run(["echo", evil])
    assert result.stdout == evil + "\n"
    assert not marker.exists()


def test_input_and_env_are_passed():
    assert Runner().run(["cat"], input="some input").stdout == "some input"
    env_out = Runner().run([sys.executable, "-c", "import os; print(os.environ['VSNAP_T'])"],
                           env={"VSNAP_T": "x y"}).stdout
    assert env_out == "x y\n"


def test_a_stream_on_stdin_with_no_time_limit(tmp_path):
    """A file descriptor as the command's stdin (a replication stream), read to its end."""
    stream = tmp_path / "stream"
    stream.write_bytes(b"stream bytes")
    with open(stream, "rb") as f:
        assert Runner(timeout=0.001).run(["sh", "-c", "sleep 0.1; cat"], stdin=f.fileno(),
                                          timeout=NO_TIMEOUT).stdout == "stream bytes"


def test_nonzero_exit_raises_command_error():
    with pytest.raises(CommandError) as info:
        Runner().run(["sh", "-c", "echo out; echo first >&2; echo 'last line' >&2; exit 3"])
    err = info.value
    assert err.returncode == 3
    assert err.stdout == "out\n"
    assert err.stderr == "first\nlast line\n"
    assert err.argv[0] == "sh"
    assert str(err) == "sh failed (3): last line"


def test_command_error_message_falls_back_to_stdout_then_placeholder():
    with pytest.raises(CommandError) as info:
        Runner().run(["sh", "-c", "echo only stdout; exit 1"])
    assert str(info.value) == "sh failed (1): only stdout"
    with pytest.raises(CommandError) as info:
        Runner().run(["false"])
    assert str(info.value) == "false failed (1): no output"


def test_check_false_returns_the_failure():
    result = Runner().run(["sh", "-c", "echo oops >&2; exit 4"], check=False)
    assert result.returncode == 4 and result.stderr == "oops\n"


def test_timeout():
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        Runner().run(["sleep", "5"], timeout=0.2)
    assert time.monotonic() - start < 3
    assert info.value.timeout == 0.2
    assert info.value.argv == ["sleep", "5"]
    assert "0.2 s" in str(info.value)


def test_default_timeout_comes_from_the_runner():
    with pytest.raises(CommandTimeout) as info:
        Runner(timeout=0.2).run(["sleep", "5"])
    assert info.value.timeout == 0.2


def test_missing_program():
    with pytest.raises(CommandNotFound) as info:
        Runner().run(["vsnap-no-such-program-xyz", "--help"])
    assert info.value.argv[0] == "vsnap-no-such-program-xyz"
    assert "is not installed" in str(info.value)


def _levels(caplog, argv, context, check=False):
    import logging

    from vsnap.logs import request_id_var
    token = request_id_var.set(context)
    try:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="vsnap.drivers.runner"):
            Runner().run(argv, check=check)
    finally:
        request_id_var.reset(token)
    return [r.levelname for r in caplog.records if r.message.startswith("ran ")]


def test_the_workers_routine_reads_are_debug_and_what_changes_or_fails_is_info(caplog, tmp_path):
    tool = tmp_path / "tgtadm"  # stands in for the worker's periodic `tgtadm --op show`
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    show = [str(tool), "--lld", "iscsi", "--op", "show", "--mode", "target"]
    change = [str(tool), "--lld", "iscsi", "--op", "new", "--mode", "target"]
    assert _levels(caplog, show, "worker") == ["DEBUG"]
    assert _levels(caplog, change, "worker") == ["INFO"]
    assert _levels(caplog, ["false"], "worker") == ["INFO"]  # a failure is news
    assert _levels(caplog, show, "a1b2c3") == ["INFO"]  # a request's commands: always
