"""The lab's servers serve every appliance on the machine, as a `make run` appliance and the
suite's appliances run side by side: the one nfs-ganesha serves the exports of each appliance
whose lab is up (from export ids of its own), each appliance has an smbd of its own on its
own port, and one lab going down takes only its own shares away.

The neighbour is a lab of its own with one disk and, standing in for its appliance, the
exports and shares its appliance would write, through vsnap's own drivers."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from vsnap.config import Settings
from vsnap.drivers.nfs import NfsExport, ganesha_exports
from vsnap.drivers.runner import Runner
from vsnap.drivers.smb import SambaDriver, SmbShare

from . import stack
from .appliance import ROOT
from .conftest import STATE
from .system_state import ganesha_pid, nfs_exports, settings
from .test_shares import (
    fs,  # noqa: F401  a fixture, which pytest finds here by name
    kept_busy,  # noqa: F401  a fixture (pool's and fs's), which pytest finds here by name
    nfs_ls,
    pool,  # noqa: F401  a fixture (fs's), which pytest finds here by name
    run,
)
from .zfs_tools import PREFIX, destroy_pool

pytestmark = pytest.mark.skipif(stack.KERNEL, reason="the kernel stack's NFS server is systemd's, not the lab's")

NEIGHBOUR = Path(f"{STATE}-neighbour")
NEIGHBOUR_SSH_PORT, NEIGHBOUR_SMB_PORT = 8946, 4447
NEIGHBOUR_POOL = f"{PREFIX}nb"


def lab(action: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VSNAP_STATE": str(NEIGHBOUR), "VSNAP_SSH_PORT": str(NEIGHBOUR_SSH_PORT),
           "VSNAP_LAB_SMB_PORT": str(NEIGHBOUR_SMB_PORT), "VSNAP_LAB_DISKS": "1"}
    done = subprocess.run([str(ROOT / "lab" / "lab.sh"), action], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def neighbour(admin):
    """A second appliance's lab, with a pool on its disk shared over NFS and SMB."""
    lab("up")
    neighbour = Settings.from_env({"VSNAP_STATE": str(NEIGHBOUR)})
    mountpoint = f"/vsnap/{NEIGHBOUR_POOL}"
    subprocess.run(["zpool", "create", "-f", "-m", mountpoint, NEIGHBOUR_POOL, neighbour.disks[0]],
                   check=True, timeout=120)
    Path(mountpoint, "theirs.txt").write_text("the neighbour's backup")
    neighbour.nfs_exports_file.write_text(
        ganesha_exports([NfsExport(1, mountpoint, False, ["*"])], neighbour.nfs_export_id_base))
    os.kill(ganesha_pid(), signal.SIGHUP)  # as its appliance does after writing its exports
    samba = SambaDriver(Runner(), neighbour.smb_conf_file, neighbour.smb_shares_file, "vsnap")
    samba.apply([SmbShare("neighbour_share", mountpoint)])
    samba.set_password(admin.name, admin.password)
    try:
        yield mountpoint
    finally:
        # As its appliance does before destroying a pool: the servers let go of it first (a
        # pool destroyed under ganesha's export wedges zfs-fuse).
        neighbour.nfs_exports_file.write_text(ganesha_exports([]))
        samba.apply([])
        lab("down")  # tells ganesha, stops its smbd, and exports the pool (its only disk goes)
        subprocess.run(["zpool", "import", NEIGHBOUR_POOL], capture_output=True, timeout=120)
        destroy_pool(NEIGHBOUR_POOL)
        shutil.rmtree(NEIGHBOUR, ignore_errors=True)


def smb_ls(port: int, share: str, account) -> subprocess.CompletedProcess:
    return run("smbclient", "-p", str(port), f"//127.0.0.1/{share}", "-U",
               f"{account.name}%{account.password}", "-c", "ls")


def test_each_appliance_on_the_machine_is_served(appliance, pool, fs, neighbour, admin):  # noqa: F811  the imported fixtures
    ours = appliance.ok("POST", f"/api/volume/{fs('labshare')['id']}/share",
                        json={"share_type": "nfs", "share_options": {"allowed_hosts": ["all"]}})
    # Export ids from ranges of their own: the same share id on both is no collision.
    base, theirs = settings().nfs_export_id_base, Settings.from_env({"VSNAP_STATE": str(NEIGHBOUR)})
    assert base != theirs.nfs_export_id_base
    assert nfs_exports()[int(ours["id"])] == ours["name"]
    assert nfs_ls(ours["name"]).returncode == 0
    listing = nfs_ls(neighbour)
    assert listing.returncode == 0 and "theirs.txt" in listing.stdout, listing
    # Each appliance's smbd, on its own port, with its own shares.
    smb_port = int(next(line.split("=")[1] for line in settings().smb_conf_file.read_text().splitlines()
                        if line.strip().startswith("smb ports")))
    assert smb_port != NEIGHBOUR_SMB_PORT
    assert smb_ls(NEIGHBOUR_SMB_PORT, "neighbour_share", admin).returncode == 0
    assert smb_ls(smb_port, "neighbour_share", admin).returncode != 0


def test_a_lab_going_down_takes_only_its_own_shares(appliance, pool, fs, neighbour):  # noqa: F811  the imported fixtures
    ours = appliance.ok("POST", f"/api/volume/{fs('labshare2')['id']}/share",
                        json={"share_type": "nfs", "share_options": {"allowed_hosts": ["all"]}})
    ganesha = ganesha_pid()
    assert nfs_ls(neighbour).returncode == 0
    down = lab("down")
    assert "the machine's services stay" in down.stdout, down.stdout
    assert alive(ganesha) and ganesha_pid() == ganesha  # the machine's ganesha serves on
    assert nfs_ls(neighbour).returncode != 0             # ...but no longer the neighbour's
    assert nfs_ls(ours["name"]).returncode == 0
    assert smb_ls(NEIGHBOUR_SMB_PORT, "neighbour_share", appliance.account).returncode != 0  # its smbd left
    lab("up")  # its pool comes back, and ganesha is told of its exports again
    listing = nfs_ls(neighbour)
    assert listing.returncode == 0 and "theirs.txt" in listing.stdout, listing
    assert nfs_ls(ours["name"]).returncode == 0
