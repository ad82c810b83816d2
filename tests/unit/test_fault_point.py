"""The test-only crash injection (vsnap/faults.py, VSNAP_FAULT_KILL_AFTER_COMMANDS): the
ordinary Runner unless armed; armed, it counts only system-changing steps taken for requests
and sessions (commands, and what drivers announce through step_done), and kills the process
group at the armed step."""
from __future__ import annotations

import signal

import pytest

from vsnap import faults
from vsnap.drivers import runner
from vsnap.drivers.files import write_atomically
from vsnap.drivers.nfs import GaneshaNfsDriver, NfsExport, choose_nfs_driver
from vsnap.logs import request_id_var


@pytest.fixture
def kills(monkeypatch):
    seen = []
    monkeypatch.setattr(faults.os, "killpg", lambda pgid, sig: seen.append(sig))
    monkeypatch.setattr(faults.os, "write", lambda fd, data: len(data))
    return seen


@pytest.fixture
def in_request():
    token = request_id_var.set("req-1")
    yield
    request_id_var.reset(token)


def test_the_ordinary_runner_unless_armed(monkeypatch):
    monkeypatch.delenv(faults.ENVIRONMENT, raising=False)
    assert type(faults.runner_for(5, None)) is runner.Runner
    for unarmed in ("", "0", "x"):
        monkeypatch.setenv(faults.ENVIRONMENT, unarmed)
        assert type(faults.runner_for(5, None)) is runner.Runner
    monkeypatch.setenv(faults.ENVIRONMENT, "3")
    armed = faults.runner_for(5, None)
    assert isinstance(armed, faults.CrashingRunner) and armed.kill_after == 3 and armed.timeout == 5


def test_the_ordinary_runner_ignores_steps(kills, in_request):
    plain = runner.Runner()
    for _ in range(5):
        plain.step_done("step")
    assert kills == []


def test_kills_the_group_at_the_armed_step_of_a_request(kills):
    crashing = faults.CrashingRunner(3)
    crashing.step_done("start-up recovery: not counted")
    token = request_id_var.set("worker")
    crashing.step_done("background: not counted")
    request_id_var.reset(token)
    token = request_id_var.set("req-1")
    try:
        crashing.step_done("one")
        crashing.step_done("two")
        assert kills == []
        crashing.step_done("three")
    finally:
        request_id_var.reset(token)
    assert kills == [signal.SIGKILL]


def test_commands_that_change_the_system_are_steps_even_when_they_fail(kills, in_request):
    crashing = faults.CrashingRunner(2)
    crashing.run(["true", "read"])  # not a system-changing command: not counted
    with pytest.raises(runner.CommandError):
        crashing.run(["smbpasswd", "--no-such-option-vsnap"])  # ran, failed: counted
    assert crashing.steps == 1 and kills == []
    crashing.run(["smbcontrol", "--version"], check=False)
    assert kills == [signal.SIGKILL]


def test_drivers_announce_the_files_they_write(tmp_path, kills, in_request):
    crashing = faults.CrashingRunner(1)
    nfs = choose_nfs_driver(crashing, tmp_path / "exports.conf", None, tmp_path / "k", ganesha_log=None)
    if not isinstance(nfs, GaneshaNfsDriver):
        pytest.skip("this machine has a kernel NFS server: choose_nfs_driver picks exportfs")
    nfs.apply([NfsExport(1, "/p/v", False, ["*"])])
    assert kills == [signal.SIGKILL]


def test_write_atomically_leaves_nothing_behind_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_text("old\n")

    def fail(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr("vsnap.drivers.files.os.replace", fail)
    with pytest.raises(OSError):
        write_atomically(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_only_system_changing_commands_are_steps():
    assert runner.changes_system(["zfs", "create", "p/v"])
    assert not runner.changes_system(["zfs", "get", "-Hp", "guid", "p/v"])
    assert runner.changes_system(["tgtadm", "--lld", "iscsi", "--op", "new", "--mode", "target"])
    assert not runner.changes_system(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
    assert runner.changes_system(["smbcontrol", "-s", "c", "smbd", "reload-config"])
    assert not runner.changes_system(["pdbedit", "-L"])
    assert not runner.changes_system(["tgtadm", "--op"])
