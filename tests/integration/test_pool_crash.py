"""kill -9 of the server in the middle of pool changes: after the next start the API and ZFS
agree, the pool is whole or absent, and disks of an absent pool are unused again.

The kill lands at several delays; whichever step it hits, the invariants must hold."""
from __future__ import annotations

import pytest

from .zfs_tools import PREFIX, pool_names, unused, zfs_get

DELAYS = [0.0, 0.05, 0.15, 0.3, 0.6, 1.2]


def _api_pools(appliance) -> dict[str, dict]:
    return {p["name"]: p for p in appliance.ok("GET", "/api/pool")["pools"]}


def _disk_use(appliance) -> dict[str, str]:
    return {d["name"]: d["used_as"] for d in appliance.ok("GET", "/api/disk")["disks"]}


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_during_create(appliance, pools, delay):
    disks = unused(appliance, 3)
    name = f"{PREFIX}kc"
    appliance.kill_during("POST", "/api/pool",
                 {"name": name, "pool_type": "raid5", "disk_list": [d["uuid"] for d in disks]}, delay)
    listed, exists = name in _api_pools(appliance), name in pool_names()
    assert listed == exists, f"API lists it: {listed}, ZFS has it: {exists}"
    use = _disk_use(appliance)
    if exists:
        assert [use[d["name"]] for d in disks] == ["data"] * 3
        assert zfs_get(name, "mounted") == "yes"
    else:
        assert [use[d["name"]] for d in disks] == ["unused"] * 3


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_during_expand(appliance, pools, delay):
    disks = unused(appliance, 6)
    pool = pools(f"{PREFIX}ke", "raid5", disks[:3])
    appliance.kill_during("POST", f"/api/pool/{pool['id']}",
                 {"action": "expand", "disk_list": [d["uuid"] for d in disks[3:]]}, delay)
    details = appliance.ok("GET", f"/api/pool/{pool['id']}")
    members = sorted(p for group in details["disks"].values() for p in group)
    use = _disk_use(appliance)
    if len(details["disks"]) == 2:  # the new group made it, whole
        assert members == sorted(d["name"] for d in disks)
        assert [use[d["name"]] for d in disks[3:]] == ["data"] * 3
    else:
        assert members == sorted(d["name"] for d in disks[:3])
        assert [use[d["name"]] for d in disks[3:]] == ["unused"] * 3


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_during_rename(appliance, pools, delay):
    disks = unused(appliance, 1)
    pool = pools(f"{PREFIX}kr1", "raid0", disks)
    with open(f"/vsnap/{PREFIX}kr1/data", "w") as f:
        f.write("precious")
    appliance.kill_during("PUT", f"/api/pool/{pool['id']}", {"name": f"{PREFIX}kr2"}, delay)
    details = appliance.ok("GET", f"/api/pool/{pool['id']}")
    assert details["name"] in (f"{PREFIX}kr1", f"{PREFIX}kr2")
    assert details["name"] in pool_names()
    assert zfs_get(details["name"], "mountpoint") == f"/vsnap/{details['name']}"
    with open(f"/vsnap/{details['name']}/data") as f:
        assert f.read() == "precious"


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_during_delete(appliance, pools, delay):
    disks = unused(appliance, 2)
    pool = pools(f"{PREFIX}kd", "raid0", disks)
    appliance.kill_during("DELETE", f"/api/pool/{pool['id']}", None, delay)
    listed, exists = pool["name"] in _api_pools(appliance), pool["name"] in pool_names()
    assert listed == exists
    if not exists:
        use = _disk_use(appliance)
        assert [use[d["name"]] for d in disks] == ["unused"] * 2


@pytest.fixture
def crash_pool(appliance, pools):
    return pools(f"{PREFIX}kv", "raid0", unused(appliance, 1))


def _datasets(pool: str) -> set[str]:
    import subprocess
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", pool],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return set(out.split())


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_during_volume_create(appliance, crash_pool, delay):
    body = {"name": "kvol", "volume_type": "lun", "pool_id": crash_pool["id"], "size_total": 8 << 20}
    appliance.kill_during("POST", "/api/volume", body, delay)
    listed = {v["name"]: v for v in appliance.ok("GET", "/api/volume")["volumes"]}
    exists = f"{crash_pool['name']}/kvol" in _datasets(crash_pool["name"])
    assert ("kvol" in listed) == exists
    if exists:  # whole: the LUN's image is there at its size
        assert listed["kvol"]["size_total"] == str(8 << 20)
        import os
        assert os.path.getsize(f"/vsnap/{crash_pool['name']}/kvol/vsnap-lun.img") == 8 << 20


@pytest.mark.parametrize("delay", DELAYS)
def test_kill_during_snapshot_and_clone(appliance, crash_pool, delay):
    fs = appliance.ok("POST", "/api/volume", json={"name": "kfs", "volume_type": "filesystem",
                                                   "pool_id": crash_pool["id"]})
    appliance.kill_during("POST", f"/api/volume/{fs['id']}/snapshot", {"name": "ks"}, delay)
    zname = f"{crash_pool['name']}/kfs@ks"
    listed = {s["name"]: s for s in appliance.ok("GET", f"/api/volume/{fs['id']}/snapshot")["snapshots"]}
    assert ("ks" in listed) == (zname in _datasets(crash_pool["name"]))
    if "ks" not in listed:
        appliance.ok("POST", f"/api/volume/{fs['id']}/snapshot", json={"name": "ks"})
        listed = {s["name"]: s for s in appliance.ok("GET", f"/api/volume/{fs['id']}/snapshot")["snapshots"]}
    appliance.kill_during("POST", "/api/volume", {"name": "kclone", "snapshot_id": listed["ks"]["id"]}, delay)
    names = {v["name"] for v in appliance.ok("GET", "/api/volume")["volumes"]}
    assert ("kclone" in names) == (f"{crash_pool['name']}/kclone" in _datasets(crash_pool["name"]))
    snap = appliance.ok("GET", f"/api/snapshot/{listed['ks']['id']}")
    assert snap["has_clones"] == ("kclone" in names)
