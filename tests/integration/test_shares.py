"""NFS and SMB shares checked with real clients: libnfs's nfs-cp/nfs-ls (also from a network
namespace outside allowed_hosts), the kernel's NFS client where there is one (the kernel lab's
guest), and smbclient with vsnap accounts. The NFS tests marked `guest` run on nfs-ganesha here
and on the kernel NFS server in the guest."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from . import stack
from .conftest import STATE
from .system_state import ganesha_pid, kernel_exports_file
from .zfs_tools import PREFIX, unused

NS = "vsnaptest-nfs"
HOST_ADDR, NS_ADDR = "198.18.0.1", "198.18.0.2"  # the range set aside for such tests
SMB_CONF = str(STATE / "samba" / "smb.conf")


def run(*argv, ns: str | None = None, timeout=30) -> subprocess.CompletedProcess:
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def nfs_ls(path: str, addr: str = "127.0.0.1", ns: str | None = None, version: int = 3):
    url = f"nfs://{addr}{path}" + ("?version=4" if version == 4 else "")
    return run("nfs-ls", url, ns=ns)


def nfs_put(local: str, path: str, addr: str = "127.0.0.1", ns: str | None = None):
    return run("nfs-cp", local, f"nfs://{addr}{path}", ns=ns)


def smb(share: str, auth: str, command: str):
    # The lab's smbd listens where its configuration says (its own port beside the system's
    # smbd in the kernel lab's guest); smbclient takes the port from -p only.
    port = re.search(r"^\s*smb ports = (\d+)", Path(SMB_CONF).read_text(), re.M).group(1)
    return run("smbclient", "-s", SMB_CONF, "-p", port, f"//127.0.0.1/{share}", "-U", auth, "-c", command)


@pytest.fixture(scope="module")
def netns():
    """A test host on its own veth pair, removed afterwards."""
    run("ip", "netns", "del", NS)  # left by an interrupted earlier run
    run("ip", "link", "del", "vsnt0")
    steps = [("ip", "netns", "add", NS), ("ip", "link", "add", "vsnt0", "type", "veth", "peer", "name", "vsnt1"),
             ("ip", "link", "set", "vsnt1", "netns", NS), ("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "vsnt0"),
             ("ip", "link", "set", "vsnt0", "up")]
    for step in steps:
        assert run(*step).returncode == 0, step
    for step in [("ip", "addr", "add", f"{NS_ADDR}/24", "dev", "vsnt1"), ("ip", "link", "set", "vsnt1", "up"),
                 ("ip", "link", "set", "lo", "up")]:
        assert run(*step, ns=NS).returncode == 0, step
    yield NS
    run("ip", "netns", "del", NS)
    run("ip", "link", "del", "vsnt0")


# The kernel NFS server (Debian 12's 6.1) keeps a filesystem an NFS client used referenced for
# minutes after its export is withdrawn, and ZFS cannot unmount it meanwhile: the appliance
# answers a delete or rename 409 "busy" and changes nothing. Deletes that meet it are tried
# again at the end of the module, waiting for the server to let go (once for all).
BUSY_WAIT = 600 if stack.KERNEL else 0


def busy(response) -> bool:
    return response.status_code == 409 and "busy" in response.text


def delete_when_let_go(appliance, paths: list[str]) -> None:
    deadline = time.monotonic() + BUSY_WAIT
    for path in paths:
        while busy(r := appliance.delete(path)) and time.monotonic() < deadline:
            time.sleep(10)
        assert r.status_code in (200, 404), f"DELETE {path}: {r.status_code} {r.text}"


@pytest.fixture(scope="module")
def kept_busy():
    """Deletes refused as busy, to try again when the module ends."""
    return []


@pytest.fixture(scope="module")
def pool(appliance, kept_busy):
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    made = appliance.ok("POST", "/api/pool", json={"name": f"{PREFIX}sh", "pool_type": "raid0",
                                                   "disk_list": [d["uuid"] for d in unused(appliance, 1)]})
    yield made
    delete_when_let_go(appliance, [*kept_busy, f"/api/pool/{made['id']}"])


@pytest.fixture
def fs(appliance, pool, kept_busy):
    made = []

    def create(name):
        volume = appliance.ok("POST", "/api/volume", json={"name": name, "volume_type": "filesystem",
                                                           "pool_id": pool["id"]})
        made.append(volume)
        return volume

    yield create
    for volume in reversed(made):
        path = f"/api/volume/{volume['id']}"
        if busy(appliance.delete(path)):
            kept_busy.append(path)


@pytest.mark.guest
def test_nfs_share_read_write_and_details(appliance, pool, fs, tmp_path):
    vol = fs("nfs1")
    share = appliance.ok("POST", f"/api/volume/{vol['id']}/share",
                         json={"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}})
    path = f"/vsnap/{pool['name']}/nfs1"
    assert (share["name"], share["vol_id"], share["share_type"]) == (path, vol["id"], "nfs")
    assert share["share_options"] == {"read_only": False, "allowed_hosts": ["127.0.0.1"]}
    local = tmp_path / "backup.dat"
    local.write_bytes(os.urandom(100_000))
    assert nfs_put(str(local), f"{path}/backup.dat").returncode == 0
    with open(f"{path}/backup.dat", "rb") as f:
        assert f.read() == local.read_bytes()  # really written into the volume
    for version in (3, 4):
        listing = nfs_ls(path, version=version)
        assert listing.returncode == 0 and "backup.dat" in listing.stdout, listing
    assert appliance.ok("GET", f"/api/volume/{vol['id']}")["share_id"] == share["id"]
    assert appliance.ok("GET", f"/api/share/{share['id']}") == share
    assert appliance.ok("GET", "/api/share", params={"id": share["id"]}) == share
    listed = {s["id"]: s for s in appliance.ok("GET", "/api/share")["shares"]}
    assert set(listed[share["id"]]) == {"id", "name", "vol_id", "share_type", "time_created", "time_updated"}
    r = appliance.post(f"/api/volume/{vol['id']}/share", json={"share_type": "smb"})
    assert r.status_code == 409


@pytest.mark.guest
def test_clone_share_serves_the_snapshot(appliance, pool, fs, tmp_path):
    vol = fs("nfs2")
    with open(f"/vsnap/{pool['name']}/nfs2/state.txt", "w") as f:
        f.write("as backed up")
    snap = appliance.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": "b1"})
    with open(f"/vsnap/{pool['name']}/nfs2/state.txt", "w") as f:
        f.write("changed later")
    clone = appliance.ok("POST", "/api/volume", json={"name": "nfs2restore", "snapshot_id": snap["id"]})
    try:
        share = appliance.ok("POST", "/api/share", json={"vol_id": clone["id"], "share_type": "nfs",
                                                         "share_options": {"allowed_hosts": ["all"]}})
        out = tmp_path / "got.txt"
        assert run("nfs-cp", f"nfs://127.0.0.1{share['name']}/state.txt", str(out)).returncode == 0
        assert out.read_text() == "as backed up"
    finally:
        appliance.delete(f"/api/volume/{clone['id']}")
    assert appliance.get(f"/api/share/{share['id']}").status_code == 404  # went with the volume


@pytest.mark.guest
def test_hosts_outside_allowed_hosts_are_refused(appliance, pool, fs, netns, tmp_path):
    vol = fs("nfs3")
    path = f"/vsnap/{pool['name']}/nfs3"
    share = appliance.ok("POST", f"/api/volume/{vol['id']}/share",
                         json={"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}})
    assert nfs_ls(path).returncode == 0
    assert nfs_ls(path, HOST_ADDR, ns=netns).returncode != 0
    assert nfs_ls(path, HOST_ADDR, ns=netns, version=4).returncode != 0
    body = {**share, "share_options": {"read_only": False, "allowed_hosts": ["198.18.0.0/24"]}}
    appliance.ok("PUT", f"/api/volume/{vol['id']}/share", json=body)  # the whole GET body, sent back
    assert nfs_ls(path, HOST_ADDR, ns=netns).returncode == 0
    assert nfs_ls(path).returncode != 0  # 127.0.0.1 is no longer listed
    appliance.ok("PUT", f"/api/volume/{vol['id']}/share", json={"share_type": "nfs", "share_options": {}})
    assert nfs_ls(path, HOST_ADDR, ns=netns).returncode != 0  # absent: no external host
    assert nfs_ls(path).returncode != 0


@pytest.mark.kernel_stack
def test_kernel_nfs_client_mounts_from_an_allowed_address_only(appliance, pool, fs, netns, tmp_path):
    """The kernel's own NFS client, as a backup server mounts a share: from an address in
    allowed_hosts it mounts and writes, from another the server refuses the mount, and a
    read-only share mounts but refuses writes."""
    vol = fs("kmount")
    path = f"/vsnap/{pool['name']}/kmount"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    share = appliance.ok("POST", f"/api/volume/{vol['id']}/share",
                         json={"share_type": "nfs", "share_options": {"allowed_hosts": [NS_ADDR]}})

    def mount_and(command: str, ns: str | None = NS):
        # ip netns exec gives the command a mount namespace of its own: the mount ends with it.
        script = (f"mount -t nfs -o vers=4.2,soft,timeo=30,retrans=1 {HOST_ADDR}:{path} {mnt} && "
                  f"{{ {command}; rc=$?; umount {mnt}; exit $rc; }}")
        return run("unshare", "--mount", "sh", "-c", script, ns=ns, timeout=120) if ns is None \
            else run("sh", "-c", script, ns=ns, timeout=120)

    r = mount_and(f"echo written-over-the-kernel-client > {mnt}/k.txt")
    assert r.returncode == 0, r.stderr
    with open(f"{path}/k.txt") as f:
        assert f.read() == "written-over-the-kernel-client\n"
    refused = mount_and("true", ns=None)  # from HOST_ADDR, not in allowed_hosts
    assert refused.returncode != 0 and "denied" in refused.stderr.lower(), refused
    appliance.ok("PUT", f"/api/volume/{vol['id']}/share",
                 json={**share, "share_options": {"read_only": True, "allowed_hosts": [NS_ADDR]}})
    r = mount_and(f"cat {mnt}/k.txt && ! touch {mnt}/refused.txt")
    assert r.returncode == 0 and "written-over-the-kernel-client" in r.stdout, r
    assert not os.path.exists(f"{path}/refused.txt")


@pytest.mark.guest
def test_read_only_share_refuses_writes(appliance, pool, fs, tmp_path):
    vol = fs("nfs4")
    path = f"/vsnap/{pool['name']}/nfs4"
    appliance.ok("POST", f"/api/volume/{vol['id']}/share",
                 json={"share_type": "nfs", "share_options": {"read_only": True, "allowed_hosts": ["all"]}})
    with open(f"{path}/existing.txt", "w") as f:
        f.write("readable")
    local = tmp_path / "x"
    local.write_text("write attempt")
    assert nfs_put(str(local), f"{path}/new.txt").returncode != 0
    assert not os.path.exists(f"{path}/new.txt")
    assert "existing.txt" in nfs_ls(path).stdout


@pytest.mark.guest
def test_smb_share_with_vsnap_accounts(appliance, pool, fs, admin, outsider, tmp_path):
    vol = fs("smb1")
    share = appliance.ok("POST", f"/api/volume/{vol['id']}/share", json={"share_type": "smb"})
    assert share["name"] == f"{pool['name']}_smb1" and share["share_options"] == {}
    appliance.ok("GET", "/api/system")  # the account's API login gives Samba its password
    local = tmp_path / "in.txt"
    local.write_text("over smb")
    r = smb(share["name"], f"{admin.name}%{admin.password}", f"put {local} backup.txt; ls")
    assert r.returncode == 0 and "backup.txt" in r.stdout, r.stdout + r.stderr
    with open(f"/vsnap/{pool['name']}/smb1/backup.txt") as f:
        assert f.read() == "over smb"
    assert smb(share["name"], f"{admin.name}%wrong-password", "ls").returncode != 0
    assert smb(share["name"], f"{outsider.name}%{outsider.password}", "ls").returncode != 0
    # A changed password works for SMB after the next API login with it.
    old = admin.password
    admin.set_password(old + "-smb")
    try:
        import time
        time.sleep(3.5)  # past the API's login cache
        appliance.ok("GET", "/api/system")
        assert smb(share["name"], f"{admin.name}%{admin.password}", "ls").returncode == 0
        assert smb(share["name"], f"{admin.name}%{old}", "ls").returncode != 0
    finally:
        admin.set_password(old)
        time.sleep(3.5)
        appliance.ok("GET", "/api/system")


@pytest.mark.guest
def test_deleted_shares_are_unreachable(appliance, pool, fs):
    nfs_vol, smb_vol = fs("gone1"), fs("gone2")
    nfs_share = appliance.ok("POST", f"/api/volume/{nfs_vol['id']}/share",
                             json={"share_type": "nfs", "share_options": {"allowed_hosts": ["all"]}})
    smb_share = appliance.ok("POST", f"/api/volume/{smb_vol['id']}/share", json={"share_type": "smb"})
    appliance.ok("GET", "/api/system")
    assert nfs_ls(nfs_share["name"]).returncode == 0
    assert appliance.ok("DELETE", f"/api/volume/{nfs_vol['id']}/share") == {}
    assert appliance.ok("DELETE", f"/api/share/{smb_share['id']}") == {}
    assert nfs_ls(nfs_share["name"]).returncode != 0
    assert smb(smb_share["name"], f"{appliance.account.name}%{appliance.account.password}", "ls").returncode != 0
    assert appliance.get(f"/api/share/{nfs_share['id']}").status_code == 404
    assert appliance.ok("GET", f"/api/volume/{nfs_vol['id']}")["share_id"] is None


@pytest.mark.guest
def test_shares_come_back_after_restarts(appliance, pool, fs):
    import signal
    nfs_vol, smb_vol = fs("keep"), fs("keep2")
    nfs_share = appliance.ok("POST", f"/api/volume/{nfs_vol['id']}/share",
                             json={"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}})
    smb_share = appliance.ok("POST", f"/api/volume/{smb_vol['id']}/share", json={"share_type": "smb"})
    auth = f"{appliance.account.name}%{appliance.account.password}"
    appliance.ok("GET", "/api/system")
    assert smb(smb_share["name"], auth, "ls").returncode == 0
    # The servers lose their configuration (a service restart with a stale file, an edit by
    # hand) and are reloaded: the shares are gone...
    if stack.KERNEL:
        kernel_exports_file().write_text("")
        assert run("exportfs", "-ra").returncode == 0
    else:
        (STATE / "nfs" / "exports.conf").write_text("")
        os.kill(ganesha_pid(), signal.SIGHUP)
    (STATE / "samba" / "shares.conf").write_text("")
    run("smbcontrol", "-s", SMB_CONF, "smbd", "reload-config")
    import time
    time.sleep(1)
    assert nfs_ls(nfs_share["name"]).returncode != 0
    assert smb(smb_share["name"], auth, "ls").returncode != 0
    # ...until the server starts and writes them again from its database.
    appliance.restart()
    time.sleep(1)
    assert nfs_ls(nfs_share["name"]).returncode == 0
    assert smb(smb_share["name"], auth, "ls").returncode == 0


@pytest.mark.guest
def test_bad_share_bodies_change_nothing(appliance, pool, fs):
    vol = fs("badshare")
    lun = appliance.ok("POST", "/api/volume", json={"name": "sharelun", "volume_type": "lun",
                                                    "pool_id": pool["id"], "size_total": 8 << 20})
    exports_file = kernel_exports_file() if stack.KERNEL else STATE / "nfs" / "exports.conf"
    try:
        exports = exports_file.read_text()
        shares_conf = (STATE / "samba" / "shares.conf").read_text()
        bodies = [
            {"share_type": "afp"}, {}, {"share_type": "smb", "share_options": {"read_only": True}},
            {"share_type": "nfs", "share_options": {"allowed_hosts": ["bad host"]}},
            {"share_type": "nfs", "share_options": {"allowed_hosts": ["1.2.3.4; }"]}},
            {"share_type": "nfs", "share_options": {"allowed_hosts": ['x" } EXPORT {']}},
            {"share_type": "nfs", "share_options": {"allowed_hosts": ["10.0.0.0/33"]}},
            {"share_type": "nfs", "share_options": {"allowed_hosts": "all"}},
            {"share_type": "nfs", "share_options": {"allowed_hosts": [5]}},
            {"share_type": "nfs", "share_options": {"read_only": "maybe"}},
            {"share_type": "nfs", "share_options": {"squash": "none"}},
        ]
        for body in bodies:
            r = appliance.post(f"/api/volume/{vol['id']}/share", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["type"] == "ValidationError"
        r = appliance.post(f"/api/volume/{lun['id']}/share", json={"share_type": "nfs"})
        assert r.status_code == 400
        assert appliance.post("/api/volume/999999/share", json={"share_type": "nfs"}).status_code == 404
        assert appliance.delete(f"/api/volume/{vol['id']}/share").status_code == 404
        assert exports_file.read_text() == exports
        assert (STATE / "samba" / "shares.conf").read_text() == shares_conf
        assert appliance.ok("GET", f"/api/volume/{vol['id']}")["share_id"] is None
    finally:
        appliance.delete(f"/api/volume/{lun['id']}")


@pytest.mark.guest
def test_shares_follow_pool_and_volume_renames(appliance, pools):
    pool = pools(f"{PREFIX}rn1", "raid0", unused(appliance, 1))
    vol = appliance.ok("POST", "/api/volume", json={"name": "v1", "volume_type": "filesystem", "pool_id": pool["id"]})
    share = appliance.ok("POST", f"/api/volume/{vol['id']}/share",
                         json={"share_type": "nfs", "share_options": {"allowed_hosts": ["127.0.0.1"]}})
    smb_vol = appliance.ok("POST", "/api/volume",
                           json={"name": "s1", "volume_type": "filesystem", "pool_id": pool["id"]})
    smb_share = appliance.ok("POST", f"/api/volume/{smb_vol['id']}/share", json={"share_type": "smb"})
    # On the kernel NFS server (see BUSY_WAIT) the share is used only after the renames, and
    # the pool's delete waits for the server to let go.
    used_before = not stack.KERNEL
    assert not used_before or nfs_ls(share["name"]).returncode == 0
    appliance.ok("PUT", f"/api/pool/{pool['id']}", json={"name": f"{PREFIX}rn2"})
    moved = appliance.ok("GET", f"/api/share/{share['id']}")
    assert moved["name"] == f"/vsnap/{PREFIX}rn2/v1"
    assert not used_before or nfs_ls(moved["name"]).returncode == 0
    assert nfs_ls(share["name"]).returncode != 0
    assert appliance.ok("GET", f"/api/share/{smb_share['id']}")["name"] == f"{PREFIX}rn2_s1"
    appliance.ok("PUT", f"/api/volume/{vol['id']}", json={"name": "v2"})
    renamed = appliance.ok("GET", f"/api/share/{share['id']}")["name"]
    assert renamed == f"/vsnap/{PREFIX}rn2/v2" and nfs_ls(renamed).returncode == 0
    assert nfs_ls(moved["name"]).returncode != 0
    delete_when_let_go(appliance, [f"/api/pool/{pool['id']}"])
    assert appliance.get(f"/api/share/{share['id']}").status_code == 404
    exports = kernel_exports_file() if stack.KERNEL else STATE / "nfs" / "exports.conf"
    assert f"/vsnap/{PREFIX}rn2/" not in exports.read_text()
