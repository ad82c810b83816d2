"""The test-only fault point of the command runner (VSNAP_FAULT_KILL_AFTER_COMMANDS): inert
unless armed, counts only system-changing steps taken for requests and sessions, and kills
the process group at the armed step."""
from __future__ import annotations

import signal

import pytest

from vsnap.drivers import runner
from vsnap.logs import request_id_var


@pytest.fixture
def kills(monkeypatch):
    seen = []
    monkeypatch.setattr(runner.os, "killpg", lambda pgid, sig: seen.append(sig))
    monkeypatch.setattr(runner.os, "write", lambda fd, data: len(data))
    monkeypatch.setattr(runner, "_fault_count", 0)
    return seen


def test_inert_when_unset(monkeypatch, kills):
    monkeypatch.setattr(runner, "_FAULT_KILL_AFTER", 0)
    token = request_id_var.set("req-1")
    try:
        for _ in range(5):
            runner.fault_point("step")
    finally:
        request_id_var.reset(token)
    assert kills == [] and runner._fault_count == 0


def test_kills_the_group_at_the_armed_step_of_a_request(monkeypatch, kills):
    monkeypatch.setattr(runner, "_FAULT_KILL_AFTER", 3)
    runner.fault_point("start-up recovery: not counted")
    token = request_id_var.set("worker")
    runner.fault_point("background: not counted")
    request_id_var.reset(token)
    token = request_id_var.set("req-1")
    try:
        runner.fault_point("one")
        runner.fault_point("two")
        assert kills == []
        runner.fault_point("three")
    finally:
        request_id_var.reset(token)
    assert kills == [signal.SIGKILL]


def test_only_system_changing_commands_are_steps():
    assert runner.changes_system(["zfs", "create", "p/v"])
    assert not runner.changes_system(["zfs", "get", "-Hp", "guid", "p/v"])
    assert runner.changes_system(["tgtadm", "--lld", "iscsi", "--op", "new", "--mode", "target"])
    assert not runner.changes_system(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
    assert runner.changes_system(["smbcontrol", "-s", "c", "smbd", "reload-config"])
    assert not runner.changes_system(["pdbedit", "-L"])
    assert not runner.changes_system(["tgtadm", "--op"])
