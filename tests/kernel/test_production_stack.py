"""The production stack for real (issue 16, first part): this tree installed by `make install`
in a Debian guest, under systemd, behind nginx; pools on OpenZFS from virtio disks, LUNs as
zvols served by LIO through rtslib-fb, NFS by the kernel server. Each path is checked with the
system's own tools in the guest (zpool, zfs, configfs) and with the host's real clients through
the forwarded ports (iscsi-inq, iscsi-readcapacity16, nfs-ls)."""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from .conftest import GATEWAY, ISCSI_PORT, NFS_PORT, SMB_PORT

POOL = "kpool"
INITIATOR = "iqn.2026-12.test.vsnap:kernel-host"
STRANGER = "iqn.2026-12.test.vsnap:stranger"
MIB = 1 << 20


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def pool(guest):
    """The spec's own 7.1 example on OpenZFS: raid6 (raidz2) of the four virtio disks, with
    syncwrite false."""
    guest.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    for p in guest.ok("GET", "/api/pool")["pools"]:  # an earlier, interrupted run's
        if p["name"] == POOL:
            guest.request("DELETE", f"/api/pool/{p['id']}")
    disks = [d for d in guest.ok("GET", "/api/disk", params={"used_as": "unused"})["disks"]
             if d["uuid"].startswith("vsnapdisk")]
    assert len(disks) == 4, disks
    made = guest.ok("POST", "/api/pool", json={"name": POOL, "pool_type": "raid6", "syncwrite": False,
                                              "compression": True, "disk_list": [d["uuid"] for d in disks]})
    yield made
    guest.request("DELETE", f"/api/pool/{made['id']}")


def test_the_install_runs_under_systemd_behind_nginx(guest):
    assert guest.sh("systemctl is-active vsnap-api nginx").stdout.split() == ["active", "active"]
    # nginx (www-data) reaches gunicorn's socket, and nobody else does.
    assert guest.sh("stat -c '%a %U %G' /run/vsnap/api.sock").stdout.strip() == "660 root www-data"
    system = guest.ok("GET", "/api/system")
    assert system["zfs_version"].startswith(("2.", "zfs-2.")), system
    assert guest.request("GET", "/api/system", auth=None).status_code == 401


def test_a_raid6_pool_on_openzfs(guest, pool):
    status = guest.sh(f"zpool status -P {POOL}").stdout
    # The disks by their stable names (a /dev/vdX name may move at the next boot).
    assert "raidz2-0" in status and all(f"/dev/disk/by-id/virtio-vsnapdisk{i}" in status for i in range(1, 5)), status
    assert guest.sh(f"zfs get -H -o value sync {POOL}").stdout.strip() == "disabled"
    details = guest.ok("GET", f"/api/pool/{pool['id']}")
    # What monitoring runs over SSH (`sudo vsnap --json pool show`): root, no environment; the
    # install wrote the command's login (/etc/vsnap/cli.conf) and put it on the PATH.
    shown = json.loads(guest.sh("env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
                                "vsnap --json pool show").stdout)
    [full] = [p for p in shown["pools"] if p["name"] == POOL]
    assert full["encryption"] == {"enabled": False} and full["pool_type"] == "raid6", full
    sppmon_reads = ("compression", "compression_ratio", "deduplication", "deduplication_ratio", "diskgroup_size",
                    "health", "id", "name", "pool_type", "size_before_compression", "size_before_deduplication",
                    "size_free", "size_total", "size_used", "status")
    assert all(full.get(key) is not None for key in sppmon_reads), full
    assert full["compression_ratio"].endswith("x") and full["id"] == details["id"]
    assert guest.sh("stat -c '%a %U' /etc/vsnap/cli.conf").stdout.split() == ["600", "root"]
    size = int(guest.sh(f"zfs get -Hp -o value available {POOL}").stdout)
    assert abs(int(details["size_free"]) - size) < 64 * MIB, (details, size)  # exact bytes, read a moment apart
    assert details["pool_type"] == "raid6" and details["status"] == "ONLINE"


def test_a_zvol_lun_served_by_lio_to_its_host_only(guest, pool):
    lun = guest.ok("POST", "/api/volume", json={"name": "klun", "volume_type": "lun", "pool_id": pool["id"],
                                                 "size_total": str(64 * MIB), "size_block": "8192"})
    host = guest.ok("POST", "/api/host", json={"name": "kernel-host", "iqns": [INITIATOR]})
    try:
        assert guest.sh(f"zfs get -Hp -o value type,volsize,volblocksize {POOL}/klun").stdout.split() == \
            ["volume", str(64 * MIB), "8192"]
        mapped = guest.ok("POST", f"/api/volume/{lun['id']}/map", json={"host_id": host["id"]})
        assert mapped["lun"] == "0"
        [target] = guest.ok("GET", "/api/target")["targets"]
        url = f"iscsi://127.0.0.1:{ISCSI_PORT}/{target['wwn']}/0"
        cap = run("iscsi-readcapacity16", "-i", INITIATOR, url)
        assert cap.returncode == 0 and int(re.search(r"Total size:(\d+)", cap.stdout).group(1)) == 64 * MIB, cap
        inq = run("iscsi-inq", "-i", INITIATOR, "-e", "1", "-c", "128", url)
        assert inq.returncode == 0 and lun["serial"].replace("-", "")[:16] in inq.stdout.replace("-", ""), inq
        # Another initiator name logs in to nothing: the ACL is per initiator.
        refused = run("iscsi-inq", "-i", STRANGER, url)
        assert refused.returncode != 0, refused
        # A resize is seen by the initiator.
        guest.ok("PUT", f"/api/volume/{lun['id']}", json={"size_total": str(96 * MIB)})
        cap = run("iscsi-readcapacity16", "-i", INITIATOR, url)
        assert int(re.search(r"Total size:(\d+)", cap.stdout).group(1)) == 96 * MIB, cap
        # After a restart of the service the target is regenerated from the database.
        guest.sh("systemctl restart vsnap-api")
        guest.wait_answering()
        assert run("iscsi-readcapacity16", "-i", INITIATOR, url).returncode == 0
    finally:
        guest.request("DELETE", f"/api/host/{host['id']}")
        guest.request("DELETE", f"/api/volume/{lun['id']}")


def test_an_nfs_share_by_the_kernel_server(guest, pool):
    vol = guest.ok("POST", "/api/volume", json={"name": "kfs", "volume_type": "filesystem", "pool_id": pool["id"]})
    try:
        guest.sh(f"head -c 100000 /dev/urandom > /vsnap/{POOL}/kfs/backup.dat")
        share = guest.ok("POST", f"/api/volume/{vol['id']}/share",
                         json={"share_type": "nfs", "share_options": {"allowed_hosts": [GATEWAY]}})
        exports = guest.sh("cat /etc/exports.d/*.exports; exportfs -v").stdout
        assert f"/vsnap/{POOL}/kfs" in exports, exports
        listing = run("nfs-ls", f"nfs://127.0.0.1/vsnap/{POOL}/kfs?version=4&nfsport={NFS_PORT}")
        assert listing.returncode == 0 and "backup.dat" in listing.stdout, listing
        guest.ok("DELETE", f"/api/volume/{vol['id']}/share")
        assert f"/vsnap/{POOL}/kfs" not in guest.sh("exportfs -v").stdout
        assert share["name"] == f"/vsnap/{POOL}/kfs"
    finally:
        guest.request("DELETE", f"/api/volume/{vol['id']}")


def test_snapshot_clone_of_a_zvol_and_real_arc_statistics(guest, pool):
    lun = guest.ok("POST", "/api/volume", json={"name": "klun2", "volume_type": "lun", "pool_id": pool["id"],
                                                 "size_total": str(32 * MIB)})
    try:
        snap = guest.ok("POST", f"/api/volume/{lun['id']}/snapshot", json={"name": "s1"})
        clone = guest.ok("POST", "/api/volume", json={"name": "klun2_restore", "snapshot_id": snap["id"]})
        assert guest.sh(f"zfs get -H -o value origin {POOL}/klun2_restore").stdout.strip() == f"{POOL}/klun2@s1"
        assert guest.sh(f"test -b /dev/zvol/{POOL}/klun2_restore && echo yes").stdout.strip() == "yes"
        guest.ok("DELETE", f"/api/volume/{clone['id']}")
        stats = guest.ok("GET", "/api/system/stats")  # /proc/spl/kstat/zfs/arcstats: the kernel's ARC
        assert int(stats["size_arc_max"]) > 0 and int(stats["size_arc_used"]) > 0, stats
    finally:
        guest.request("DELETE", f"/api/volume/{lun['id']}")


def test_an_smb_share_by_the_systems_samba(guest, pool, tmp_path):
    """Set up as the README's production steps say (VSNAP_SMB_CONF, the include in smb.conf),
    read and written with smbclient from the host as the admin account."""
    vol = guest.ok("POST", "/api/volume", json={"name": "ksmb", "volume_type": "filesystem", "pool_id": pool["id"]})
    try:
        share = guest.ok("POST", f"/api/volume/{vol['id']}/share", json={"share_type": "smb"})
        local = tmp_path / "backup.txt"
        local.write_text("over smb, to the kernel lab")
        user, password = guest.auth

        def smb(auth: str, command: str) -> subprocess.CompletedProcess:
            return run("smbclient", f"//127.0.0.1/{share['name']}", "-p", str(SMB_PORT), "-U", auth,
                       "-m", "SMB3", "-c", command)

        put = smb(f"{user}%{password}", f"put {local} backup.txt; ls")
        assert put.returncode == 0 and "backup.txt" in put.stdout, put
        assert guest.sh(f"cat /vsnap/{POOL}/ksmb/backup.txt").stdout == "over smb, to the kernel lab"
        assert smb(f"{user}%wrong-{password}", "ls").returncode != 0
        guest.ok("DELETE", f"/api/volume/{vol['id']}/share")
        assert smb(f"{user}%{password}", "ls").returncode != 0  # gone from Samba too
    finally:
        guest.request("DELETE", f"/api/volume/{vol['id']}")


def test_a_reboot_brings_back_pools_targets_exports_and_shares(guest, pool):
    """Last: the guest reboots (the same disks and root). Everything the API made comes back,
    served again, and the API agrees with the system."""
    fs = guest.ok("POST", "/api/volume", json={"name": "kboot", "volume_type": "filesystem", "pool_id": pool["id"]})
    lun = guest.ok("POST", "/api/volume", json={"name": "kbootlun", "volume_type": "lun", "pool_id": pool["id"],
                                                 "size_total": str(16 * MIB)})
    host = guest.ok("POST", "/api/host", json={"name": "boot-host", "iqns": [INITIATOR]})
    try:
        guest.sh(f"head -c 200000 /dev/urandom > /vsnap/{POOL}/kboot/data.bin")
        digest = guest.sh(f"sha256sum /vsnap/{POOL}/kboot/data.bin").stdout.split()[0]
        guest.ok("POST", f"/api/volume/{fs['id']}/share",
                 json={"share_type": "nfs", "share_options": {"allowed_hosts": [GATEWAY]}})
        guest.ok("POST", f"/api/volume/{lun['id']}/map", json={"host_id": host["id"]})
        before = {k: guest.ok("GET", f"/api/{k}") for k in ("pool", "volume", "share", "host", "target")}

        guest.sh("systemctl reboot", check=False, timeout=60)
        time.sleep(10)
        deadline = time.monotonic() + 600
        while guest.sh("true", check=False, timeout=60).returncode != 0:
            assert time.monotonic() < deadline, "the guest did not come back from its reboot"
            time.sleep(3)
        guest.wait_answering(600)

        assert "ONLINE" in guest.sh(f"zpool list -H -o name,health {POOL}").stdout
        assert guest.sh(f"sha256sum /vsnap/{POOL}/kboot/data.bin").stdout.split()[0] == digest
        for kind, listed in before.items():
            now = guest.ok("GET", f"/api/{kind}")
            key, ident = f"{kind}s", "wwn" if kind == "target" else "id"
            assert sorted(x[ident] for x in now[key]) == sorted(x[ident] for x in listed[key]), (kind, now, listed)
        listing = run("nfs-ls", f"nfs://127.0.0.1/vsnap/{POOL}/kboot?version=4&nfsport={NFS_PORT}")
        assert listing.returncode == 0 and "data.bin" in listing.stdout, listing
        [target] = guest.ok("GET", "/api/target")["targets"]
        cap = run("iscsi-readcapacity16", "-i", INITIATOR, f"iscsi://127.0.0.1:{ISCSI_PORT}/{target['wwn']}/0")
        assert cap.returncode == 0 and int(re.search(r"Total size:(\d+)", cap.stdout).group(1)) == 16 * MIB, cap
    finally:
        guest.request("DELETE", f"/api/host/{host['id']}")
        guest.request("DELETE", f"/api/volume/{lun['id']}")
        guest.request("DELETE", f"/api/volume/{fs['id']}")
