"""gunicorn's control socket is each appliance's own, under its state directory: starting or
stopping one appliance never takes another's away (gunicorn's default path, one per user under
root's home, was shared by every appliance on the machine)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from gunicorn.ctl.client import ControlClient

from .appliance import Appliance
from .conftest import PORT, STATE

STATE_B = Path(os.environ.get("VSNAP_STATE_B", "/var/lib/vsnap-test-b"))
PORT_B = int(os.environ.get("VSNAP_PORT_B", "8920"))
SSH_PORT_B = int(os.environ.get("VSNAP_SSH_PORT_B", "8942"))


def served_by(path: Path) -> int | None:
    """The pid of the gunicorn master answering on the control socket at `path`, if any."""
    if not path.is_socket():
        return None
    try:
        with ControlClient(str(path), timeout=10) as client:
            return client.send_command("show stats")["pid"]
    except Exception:
        return None


def test_each_appliance_has_its_own_control_socket(appliance):
    if not (STATE_B / "lab" / "lab.env").exists():
        pytest.skip(f"the partner appliance's lab is not set up ({STATE_B})")
    ours = STATE / "run" / "gunicorn.ctl"
    assert served_by(ours) == appliance.proc.pid
    run_dir = os.lstat(STATE / "run")
    assert stat.S_ISDIR(run_dir.st_mode) and stat.S_IMODE(run_dir.st_mode) == 0o700
    assert run_dir.st_uid == 0
    assert stat.S_IMODE(os.stat(ours).st_mode) == 0o600

    other = Appliance(STATE_B, PORT_B, ssh_port=SSH_PORT_B, log_name="server-b-ctl").start()
    theirs = STATE_B / "run" / "gunicorn.ctl"
    try:
        assert served_by(theirs) == other.proc.pid
        assert served_by(ours) == appliance.proc.pid  # its start took nothing from us
    finally:
        other.stop()
    assert not theirs.exists()  # it removed its own socket when it stopped...
    assert served_by(ours) == appliance.proc.pid  # ...and only its own


def test_a_second_server_of_one_state_directory_keeps_to_its_own_socket(appliance):
    ours = STATE / "run" / "gunicorn.ctl"
    second = Appliance(STATE, PORT + 3, log_name="server-ctl").start()
    own = STATE / "run" / f"gunicorn-{second.proc.pid}.ctl"
    try:
        assert served_by(own) == second.proc.pid
        assert served_by(ours) == appliance.proc.pid
    finally:
        second.stop()
    assert not own.exists()
    assert served_by(ours) == appliance.proc.pid
