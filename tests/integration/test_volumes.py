"""Volumes, snapshots and clones on real ZFS, checked with zfs get / zfs list and real files."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid

import pytest

from . import stack
from .stack import lun_device, read_at, size_of, write_at
from .zfs_tools import PREFIX, destroy_dataset, unused, zfs_get


def zfs(*args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=check, timeout=120)


def datasets(pool: str) -> set[str]:
    return set(zfs("list", "-H", "-o", "name", "-r", pool).stdout.split())


def snapshots(pool: str) -> set[str]:
    return set(zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).stdout.split())


@pytest.fixture(scope="module")
def pool(appliance):
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    disks = unused(appliance, 2)
    made = appliance.ok("POST", "/api/pool", json={"name": f"{PREFIX}vol", "pool_type": "raid0",
                                                   "disk_list": [d["uuid"] for d in disks]})
    yield made
    appliance.delete(f"/api/pool/{made['id']}")


@pytest.fixture
def vol(appliance, pool):
    """Makes volumes in the module's pool; removes them (clones first) afterwards."""
    made = []

    def create(name, volume_type="filesystem", **extra):
        body = {"name": name, "volume_type": volume_type, "pool_id": pool["id"], **extra}
        volume = appliance.ok("POST", "/api/volume", json=body)
        made.append(volume["id"])
        return volume

    yield create
    listed = appliance.ok("GET", "/api/volume", params={"pool_id": pool["id"]})["volumes"]
    for volume in sorted(listed, key=lambda v: (not v["is_clone"], v["volume_type"] != "filebackedlun")):
        appliance.delete(f"/api/volume/{volume['id']}")
    for name in sorted(datasets(pool["name"]) - {pool["name"]}, key=len, reverse=True):
        destroy_dataset(name, "-R")


def _error(r, status, kind):
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind
    return r.json()["error"]["message"]


@pytest.mark.guest
def test_filesystem_with_quota(appliance, pool, vol):
    v = vol("fs1", size_total="104857600")
    ds = f"{pool['name']}/fs1"
    assert zfs_get(ds, "quota") == "104857600"
    assert zfs_get(ds, "mountpoint") == f"/vsnap/{pool['name']}/fs1" and os.path.isdir(f"/vsnap/{pool['name']}/fs1")
    details = appliance.ok("GET", f"/api/volume/{v['id']}")
    assert details["size_total"] == "104857600"
    assert details["size_free"] == zfs_get(ds, "available")
    assert details["size_used"] == zfs_get(ds, "used")
    assert details["time_created"] == zfs_get(ds, "creation")
    assert (details["volume_type"], details["is_clone"], details["pool_name"]) == ("filesystem", False, pool["name"])
    assert (details["share_id"], details["host_ids"], details["snapshot_id"]) == (None, [], None)
    plain = vol("fs2")
    assert plain["size_total"] is None and zfs_get(f"{pool['name']}/fs2", "quota") == "0"
    listed = {x["id"]: x for x in appliance.ok("GET", "/api/volume")["volumes"]}
    assert set(listed[v["id"]]) == {"id", "volume_type", "is_clone", "name", "pool_id", "size_total",
                                    "size_free", "size_used", "time_created", "time_updated"}
    assert appliance.ok("GET", "/api/volume", params={"name": "fs1"})["id"] == v["id"]
    assert appliance.ok("GET", "/api/volume", params={"id": v["id"]})["name"] == "fs1"
    assert {x["id"] for x in appliance.ok("GET", "/api/volume", params={"type": "lun"})["volumes"]} \
        .isdisjoint({v["id"], plain["id"]})


@pytest.mark.guest
def test_lun_is_a_zvol_or_an_image_alone_in_its_dataset(appliance, pool, vol):
    v = vol("lun1", "lun", size_total="67108864", size_block="4096")
    ds = f"{pool['name']}/lun1"
    uuid.UUID(v["serial"])
    # The block size: a zvol's volblocksize on OpenZFS, the image's dataset's recordsize on
    # zfs-fuse (no zvols there).
    block = "volblocksize" if stack.KERNEL else "recordsize"
    if stack.KERNEL:
        assert zfs_get(ds, "type") == "volume" and zfs_get(ds, "volsize") == "67108864"
        assert size_of(lun_device(pool["name"], "lun1")) == 67108864
    else:
        image = lun_device(pool["name"], "lun1")
        assert os.stat(image).st_size == 67108864
        assert os.stat(image).st_blocks * 512 < 67108864  # sparse
        assert os.listdir(f"/vsnap/{pool['name']}/lun1") == ["vsnap-lun.img"]
    assert zfs_get(ds, block) == "4096"
    assert zfs_get(ds, "com.vsnap:type") == "lun"
    assert v["size_total"] == "67108864" and v["volume_type"] == "lun"
    assert appliance.ok("GET", f"/api/volume/{v['id']}")["serial"] == v["serial"]  # kept
    default = vol("lun2", "lun", size_total=8 << 20)
    assert zfs_get(f"{pool['name']}/lun2", block) == "65536"
    assert default["serial"] != v["serial"]
    for body in ({"size_block": 1000, "size_total": 8 << 20}, {"size_block": 256, "size_total": 8 << 20},
                 {"size_block": 262144, "size_total": 8 << 20}, {}, {"size_total": "lots"},
                 {"size_total": 100}, {"size_total": -5}, {"size_total": 1.5}):
        r = appliance.post("/api/volume", json={"name": "bad", "volume_type": "lun", "pool_id": pool["id"], **body})
        _error(r, 400, "ValidationError")
    assert f"{pool['name']}/bad" not in datasets(pool["name"])


def test_filebacked_lun_stays_inside_its_filesystem(appliance, pool, vol):
    fs = vol("files")
    root = f"/vsnap/{pool['name']}/files"
    os.makedirs(f"{root}/dir")
    with open(f"{root}/dir/disk.img", "wb") as f:
        f.truncate(4 << 20)
    os.symlink("/etc/passwd", f"{root}/escape")
    os.symlink("dir/disk.img", f"{root}/inside-link")
    fbl = appliance.ok("POST", "/api/volume", json={"name": "flun", "volume_type": "filebackedlun",
                                                    "parent_id": fs["id"], "parent_path": "dir/disk.img"})
    assert (fbl["parent_id"], fbl["parent_path"], fbl["volume_type"]) == (fs["id"], "dir/disk.img", "filebackedlun")
    assert (fbl["size_total"], fbl["size_free"], fbl["size_used"]) == (None, None, None)
    uuid.UUID(fbl["serial"])
    for path in ["../files/dir/disk.img", "/etc/passwd", "dir/../../x", "escape", "dir", "nothing.img",
                 "", "dir/disk.img\x00", f"{root}/dir/disk.img"]:
        r = appliance.post("/api/volume", json={"name": "flun2", "volume_type": "filebackedlun",
                                                "parent_id": fs["id"], "parent_path": path})
        _error(r, 400, "ValidationError")
    ok = appliance.ok("POST", "/api/volume", json={"name": "flun3", "volume_type": "filebackedlun",
                                                   "parent_id": fs["id"], "parent_path": "inside-link"})
    assert ok["parent_path"] == "dir/disk.img"  # stored resolved
    lun = vol("notfs", "lun", size_total=8 << 20)
    _error(appliance.post("/api/volume", json={"name": "flun4", "volume_type": "filebackedlun",
                                               "parent_id": lun["id"], "parent_path": "vsnap-lun.img"}),
           400, "ValidationError")
    assert "flun" in _error(appliance.delete(f"/api/volume/{fs['id']}"), 409, "ConflictError")
    assert appliance.ok("DELETE", f"/api/volume/{fbl['id']}") == {}
    assert appliance.ok("DELETE", f"/api/volume/{ok['id']}") == {}
    assert os.path.exists(f"{root}/dir/disk.img")  # the file is the user's: never removed


@pytest.mark.guest
def test_snapshot_and_clone_restore_data(appliance, pool, vol):
    fs = vol("data")
    path = f"/vsnap/{pool['name']}/data/backup.bin"
    payload = os.urandom(256 << 10)
    with open(path, "wb") as f:
        f.write(payload)
    snap = appliance.ok("POST", f"/api/volume/{fs['id']}/snapshot", json={"name": "ecx_1_1_data"})
    zname = f"{pool['name']}/data@ecx_1_1_data"
    assert zname in snapshots(pool["name"])
    assert snap["version_id"] == zfs_get(zname, "guid")
    assert snap["size_used"] == zfs_get(zname, "used")
    assert (snap["parent_id"], snap["parent_name"], snap["pool_id"], snap["pool_name"], snap["has_clones"]) == \
        (fs["id"], "data", pool["id"], pool["name"], False)
    with open(path, "wb") as f:
        f.write(b"overwritten after the snapshot")
    clone = appliance.ok("POST", "/api/volume", json={"name": "restore", "snapshot_id": snap["id"]})
    assert (clone["is_clone"], clone["snapshot_id"], clone["volume_type"]) == (True, snap["id"], "filesystem")
    assert zfs_get(f"{pool['name']}/restore", "origin") == zname
    with open(f"/vsnap/{pool['name']}/restore/backup.bin", "rb") as f:
        assert f.read() == payload
    with open(f"/vsnap/{pool['name']}/restore/new.txt", "w") as f:
        f.write("clones are writable at once")
    assert appliance.ok("GET", f"/api/snapshot/{snap['id']}")["has_clones"] is True
    assert "restore" in _error(appliance.delete(f"/api/snapshot/{snap['id']}"), 409, "ConflictError")
    assert "restore" in _error(appliance.delete(f"/api/volume/{fs['id']}"), 409, "ConflictError")
    assert zname in snapshots(pool["name"])
    appliance.ok("DELETE", f"/api/volume/{clone['id']}")
    assert f"{pool['name']}/restore" not in datasets(pool["name"])
    assert appliance.ok("GET", f"/api/snapshot/{snap['id']}")["has_clones"] is False
    appliance.ok("DELETE", f"/api/snapshot/{snap['id']}")
    assert zname not in snapshots(pool["name"])
    assert appliance.get(f"/api/snapshot/{snap['id']}").status_code == 404


@pytest.mark.guest
def test_lun_clone_is_a_lun_with_its_own_serial(appliance, pool, vol):
    lun = vol("srclun", "lun", size_total=16 << 20)
    write_at(lun_device(pool["name"], "srclun"), 1 << 20, b"block data at 1 MiB")
    snap = appliance.ok("POST", f"/api/volume/{lun['id']}/snapshot", json={})
    assert re.fullmatch(r"snap_\d{14}_[0-9a-f]{8}", snap["name"])
    clone = appliance.ok("POST", "/api/volume", json={"name": "lunclone", "snapshot_id": int(snap["id"])})
    assert clone["volume_type"] == "lun" and clone["serial"] != lun["serial"]
    assert read_at(lun_device(pool["name"], "lunclone"), 1 << 20, 19) == b"block data at 1 MiB"
    assert clone["size_total"] == str(16 << 20)


def test_names_are_checked_and_unique_per_pool(appliance, pool, vol):
    vol("taken")
    zfs("create", f"{pool['name']}/handmade")
    before = datasets(pool["name"])
    for name, status in [("taken", 409), ("handmade", 409), ("-rf", 400), ("a b", 400), ("a/b", 400),
                         ("a@b", 400), ("$(reboot)", 400), ("..", 400), ("x" * 201, 400), ("é", 400),
                         ("", 400)]:
        r = appliance.post("/api/volume", json={"name": name, "volume_type": "filesystem", "pool_id": pool["id"]})
        assert r.status_code == status, (name, r.text)
    for body in ({"name": "n1", "volume_type": "filesystem"},
                 {"name": "n2", "volume_type": "tape", "pool_id": pool["id"]},
                 {"name": "n3", "volume_type": "filesystem", "pool_id": "999999"},
                 {"name": "n4", "snapshot_id": "999999"}, {"name": "n5", "volume_type": "filesystem",
                                                           "pool_id": pool["id"], "size_block": 4096}):
        assert appliance.post("/api/volume", json=body).status_code in (400, 404), body
    assert datasets(pool["name"]) == before


@pytest.mark.guest
def test_rename_and_resize(appliance, pool, vol):
    fs = vol("before", size_total=64 << 20)
    with open(f"/vsnap/{pool['name']}/before/f", "wb") as f:
        f.write(os.urandom(2 << 20))
    r = appliance.ok("PUT", f"/api/volume/{fs['id']}", json={"name": "after"})
    assert r["name"] == "after" and f"{pool['name']}/after" in datasets(pool["name"])
    assert os.path.getsize(f"/vsnap/{pool['name']}/after/f") == 2 << 20
    r = appliance.ok("PUT", f"/api/volume/{fs['id']}", json={"size_total": 128 << 20})
    assert zfs_get(f"{pool['name']}/after", "quota") == str(128 << 20) and r["size_total"] == str(128 << 20)
    zfs("snapshot", f"{pool['name']}/after@x")  # settles the written data into 'used'
    msg = _error(appliance.put(f"/api/volume/{fs['id']}", json={"size_total": 1 << 20}), 400, "ValidationError")
    assert "below" in msg and zfs_get(f"{pool['name']}/after", "quota") == str(128 << 20)
    assert appliance.ok("PUT", f"/api/volume/{fs['id']}", json={"size_total": None})["size_total"] is None
    other = vol("other")
    _error(appliance.put(f"/api/volume/{other['id']}", json={"name": "after"}), 409, "ConflictError")
    lun = vol("growlun", "lun", size_total=8 << 20)
    r = appliance.ok("PUT", f"/api/volume/{lun['id']}", json={"size_total": 32 << 20})
    assert size_of(lun_device(pool["name"], "growlun")) == 32 << 20
    assert r["size_total"] == str(32 << 20)


@pytest.mark.guest
def test_update_blocked_by_a_clone_changes_nothing(appliance, pool, vol):
    """A rename ZFS would refuse (a snapshot has a clone) is refused before the quota moves,
    with the clone named; without the clone the same update applies whole."""
    fs = vol("cloned", size_total=64 << 20)
    dataset = f"{pool['name']}/cloned"
    snap = appliance.ok("POST", f"/api/volume/{fs['id']}/snapshot", json={"name": "s1"})
    clone = appliance.ok("POST", "/api/volume", json={"name": "cloned-restore", "snapshot_id": snap["id"]})
    msg = _error(appliance.put(f"/api/volume/{fs['id']}", json={"name": "renamed", "size_total": 128 << 20}),
                 409, "ConflictError")
    assert "cloned-restore" in msg, msg
    assert zfs_get(dataset, "quota") == str(64 << 20)
    assert f"{pool['name']}/renamed" not in datasets(pool["name"])
    details = appliance.ok("GET", f"/api/volume/{fs['id']}", headers=FRESH)
    assert (details["name"], details["size_total"]) == ("cloned", str(64 << 20))
    # A resize alone is not blocked by the clone.
    assert appliance.ok("PUT", f"/api/volume/{fs['id']}", json={"size_total": 96 << 20})["size_total"] == str(96 << 20)
    appliance.ok("DELETE", f"/api/volume/{clone['id']}")
    r = appliance.ok("PUT", f"/api/volume/{fs['id']}", json={"name": "renamed", "size_total": 128 << 20})
    assert (r["name"], r["size_total"]) == ("renamed", str(128 << 20))
    assert zfs_get(f"{pool['name']}/renamed", "quota") == str(128 << 20)


FRESH = {"Cache-Control": "no-cache"}


@pytest.mark.guest
def test_changes_made_outside_the_api_are_picked_up(appliance, pool, vol):
    zfs("create", f"{pool['name']}/outside")
    zfs("snapshot", f"{pool['name']}/outside@manual")
    listed = {v["name"]: v for v in appliance.ok("GET", "/api/volume", headers=FRESH)["volumes"]}
    assert "outside" in listed and listed["outside"]["volume_type"] == "filesystem"
    snaps = {s["name"]: s for s in appliance.ok("GET", "/api/snapshot", headers=FRESH)["snapshots"]}
    assert snaps["manual"]["parent_id"] == listed["outside"]["id"]
    assert zfs_get(f"{pool['name']}/outside", "com.vsnap:vol_id") == listed["outside"]["id"]
    destroy_dataset(f"{pool['name']}/outside", "-r")
    assert "outside" not in {v["name"] for v in appliance.ok("GET", "/api/volume", headers=FRESH)["volumes"]}
    assert "manual" not in {s["name"] for s in appliance.ok("GET", "/api/snapshot", headers=FRESH)["snapshots"]}
    assert appliance.get(f"/api/volume/{listed['outside']['id']}", headers=FRESH).status_code == 404


def test_outside_changes_show_without_asking_within_the_catalogs_max_age(appliance, pool, vol):
    """Reads are kept while nothing changes through the appliance; a change made outside it
    shows by itself once the kept read expires (VSNAP_CATALOG_MAX_AGE, 2 s), without
    Cache-Control. The snapshot's id is stamped in ZFS later, by the worker."""
    vol("keeper")
    appliance.ok("GET", "/api/volume")  # read and kept
    zfs("create", f"{pool['name']}/later")
    zfs("snapshot", f"{pool['name']}/later@outside")
    deadline = time.monotonic() + 30
    while True:
        names = {v["name"] for v in appliance.ok("GET", "/api/volume")["volumes"]}
        snaps = {s["name"]: s["id"] for s in appliance.ok("GET", "/api/snapshot")["snapshots"]}
        if "later" in names and "outside" in snaps:
            break
        assert time.monotonic() < deadline, "an outside change never showed"
        time.sleep(0.2)
    deadline = time.monotonic() + 120  # the worker stamps every VSNAP_TARGET_RESYNC_INTERVAL
    while zfs_get(f"{pool['name']}/later@outside", "com.vsnap:snap_id") != snaps["outside"]:
        assert time.monotonic() < deadline, "the worker never stamped the snapshot picked up"
        time.sleep(0.5)


def test_snapshot_listings(appliance, pool, vol):
    a, b = vol("lista"), vol("listb")
    sa = appliance.ok("POST", f"/api/volume/{a['id']}/snapshot", json={"name": "one"})
    sb = appliance.ok("POST", f"/api/volume/{b['id']}/snapshot", json={"name": "two"})
    per_volume = appliance.ok("GET", f"/api/volume/{a['id']}/snapshot")
    assert [s["id"] for s in per_volume["snapshots"]] == [sa["id"]] and per_volume["total"] == 1
    assert set(per_volume["snapshots"][0]) == {"id", "name", "parent_id", "time_created", "time_updated"}
    by_parent = appliance.ok("GET", "/api/snapshot", params={"parent_id": b["id"]})["snapshots"]
    assert [s["id"] for s in by_parent] == [sb["id"]]
    assert appliance.ok("GET", "/api/snapshot", params={"name": "two"})["id"] == sb["id"]
    assert appliance.ok("GET", "/api/snapshot", params={"id": sa["id"]})["name"] == "one"
    _error(appliance.post(f"/api/volume/{a['id']}/snapshot", json={"name": "one"}), 409, "ConflictError")
    _error(appliance.post(f"/api/volume/{a['id']}/snapshot", json={"name": "bad name"}), 400, "ValidationError")
    _error(appliance.get("/api/volume/999999/snapshot"), 404, "NotFoundError")
    _error(appliance.post("/api/volume/999999/snapshot", json={}), 404, "NotFoundError")


def test_concurrent_snapshots_and_same_name_races(appliance, pool, vol):
    v = vol("busy")
    results = []

    def snap(name=None):
        body = {"name": name} if name else {}
        r = appliance.post(f"/api/volume/{v['id']}/snapshot", json=body)
        results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=snap) for _ in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [code for code, _ in results] == [200] * 20, results
    assert len({body["id"] for _, body in results}) == 20
    assert len({body["name"] for _, body in results}) == 20
    assert len([s for s in snapshots(pool["name"]) if s.startswith(f"{pool['name']}/busy@")]) == 20

    results.clear()
    threads = [threading.Thread(target=snap, args=("same",)) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(code for code, _ in results) == [200, 409]
    same = next(body for code, body in results if code == 200)

    deletes = []
    threads = [threading.Thread(
                   target=lambda: deletes.append(appliance.delete(f"/api/snapshot/{same['id']}").status_code))
               for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(deletes) == [200, 404]


@pytest.mark.guest
def test_deleting_a_pool_removes_its_volumes_snapshots_and_clones(appliance):
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    disk = unused(appliance, 1)
    pool = appliance.ok("POST", "/api/pool", json={"name": f"{PREFIX}gone", "pool_type": "raid0",
                                                   "disk_list": [disk[0]["uuid"]]})
    fs = appliance.ok("POST", "/api/volume", json={"name": "fs", "volume_type": "filesystem", "pool_id": pool["id"]})
    snap = appliance.ok("POST", f"/api/volume/{fs['id']}/snapshot", json={"name": "s"})
    clone = appliance.ok("POST", "/api/volume", json={"name": "c", "snapshot_id": snap["id"]})
    assert appliance.ok("DELETE", f"/api/pool/{pool['id']}") == {}
    volume_ids = {v["id"] for v in appliance.ok("GET", "/api/volume")["volumes"]}
    assert not volume_ids & {fs["id"], clone["id"]}
    assert snap["id"] not in {s["id"] for s in appliance.ok("GET", "/api/snapshot")["snapshots"]}
    for path in (f"/api/volume/{fs['id']}", f"/api/volume/{clone['id']}", f"/api/snapshot/{snap['id']}"):
        assert appliance.get(path).status_code == 404
    # A new pool of the same name starts empty: nothing of the old one comes back.
    again = appliance.ok("POST", "/api/pool", json={"name": f"{PREFIX}gone", "pool_type": "raid0",
                                                    "disk_list": [disk[0]["uuid"]]})
    try:
        assert appliance.ok("GET", "/api/volume", params={"pool_id": again["id"]})["volumes"] == []
    finally:
        appliance.ok("DELETE", f"/api/pool/{again['id']}")
