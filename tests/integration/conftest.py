"""Integration fixtures: the real lab (set up by `make test`) and a real server on it."""
from __future__ import annotations

import grp
import os
import pwd
import secrets
import subprocess
from pathlib import Path

import pytest

from . import stack
from .appliance import Appliance
from .zfs_tools import PREFIX, destroy_pool, pool_names

STATE = Path(os.environ.get("VSNAP_STATE", "/var/lib/vsnap-test"))
PORT = int(os.environ.get("VSNAP_PORT", "8910"))
SSH_PORT = int(os.environ.get("VSNAP_SSH_PORT", "8932"))
# The suite's OS accounts (another prefix lets two runs share the machine).
ACCOUNT_PREFIX = os.environ.get("VSNAP_TEST_ACCOUNT_PREFIX", "vsnaptest")
GROUP = "vsnap"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def lab_ready():
    lab_env = STATE / "lab" / "lab.env"
    if os.geteuid() != 0 or not lab_env.exists():
        pytest.fail(f"the lab is not set up for {STATE}: run the suite with `make test` (as root)")
    if subprocess.run(["zpool", "list"], capture_output=True, timeout=60).returncode != 0:
        pytest.fail("zfs-fuse is not running: run the suite with `make test`")


class OsAccount:
    def __init__(self, name: str, groups: list[str]):
        self.name = name
        self.password = secrets.token_urlsafe(12)
        try:
            pwd.getpwnam(name)  # left by an interrupted earlier run of this suite
            subprocess.run(["userdel", name], check=True)
        except KeyError:
            pass
        argv = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        if groups:
            argv[1:1] = ["--groups", ",".join(groups)]
        subprocess.run(argv, check=True)
        self.set_password(self.password)

    def set_password(self, password: str) -> None:
        subprocess.run(["chpasswd"], input=f"{self.name}:{password}\n", text=True, check=True)
        self.password = password

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.password)

    def remove(self) -> None:
        subprocess.run(["userdel", self.name], check=False)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid


@pytest.fixture(scope="session")
def admin():
    grp.getgrnam(GROUP)  # made by bootstrap
    account = OsAccount(f"{ACCOUNT_PREFIX}-admin", [GROUP])
    yield account
    account.remove()


@pytest.fixture(scope="session")
def outsider():
    account = OsAccount(f"{ACCOUNT_PREFIX}-outsider", [])
    yield account
    account.remove()


@pytest.fixture(scope="session")
def appliance(admin):
    # The 401/403 matrix fails logins on purpose: throttling is tested on a server of its own.
    server = Appliance(STATE, PORT, ssh_port=SSH_PORT, env={"VSNAP_AUTH_FAIL_LIMIT": "100000",
                                                                "VSNAP_TARGET_CHECK_INTERVAL": "1",
                                                                "VSNAP_TARGET_RESYNC_INTERVAL": "5",
                                                                "VSNAP_REPL_STALL_SECONDS": stack.REPL_STALL_SECONDS}
                       ).start()
    server.account = admin
    try:
        sweep_test_pools(server)  # an interrupted earlier run may have left some
    except BaseException:
        server.stop()  # else it keeps the port, and every later run talks to it
        raise
    yield server
    server.stop()


def sweep_test_pools(server, machine_wide: bool = True) -> None:
    """Removes pools named with PREFIX (this suite's only): through the API, then (unless told
    not to: another appliance of this run may be using its own) whatever ZFS still has."""
    for pool in server.ok("GET", "/api/pool")["pools"]:
        if pool["name"].startswith(PREFIX):
            server.delete(f"/api/pool/{pool['id']}")
    if not machine_wide:
        return
    for name in pool_names():
        if name.startswith(PREFIX):
            destroy_pool(name)


@pytest.fixture
def pools(appliance):
    """Makes pools through the API and removes whatever a test leaves behind (pools named
    with PREFIX only: nothing else on the machine is touched)."""
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    made = []

    def create(name, pool_type, disks, **extra):
        body = {"name": name, "pool_type": pool_type, "disk_list": [d["uuid"] for d in disks], **extra}
        made.append(name)
        return appliance.ok("POST", "/api/pool", json=body)

    yield create
    sweep_test_pools(appliance)
