"""Pools on real ZFS (zfs-fuse here; OpenZFS in the kernel lab's guest for the tests marked
`guest`), checked with zpool status / zpool get / zfs get."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from . import stack
from .zfs_tools import PREFIX, layout, pool_names, short, unused, zfs_get, zpool


@pytest.mark.guest
def test_raid6_groups_split_evenly_with_exact_sizes(appliance, pools):
    disks = unused(appliance, 7)
    # 7 disks in raidz2 groups of at most 4 would be 4+3: 3 is too few for raid6.
    r = appliance.post("/api/pool", json={"name": f"{PREFIX}r6", "pool_type": "raid6",
                                          "disk_list": [d["uuid"] for d in disks], "diskgroup_size": 4})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidCandidateError"
    assert f"{PREFIX}r6" not in pool_names()

    pool = pools(f"{PREFIX}r5", "raid5", disks, diskgroup_size=4)
    groups = layout(pool["name"])
    assert sorted(groups) == ["data:raidz1-0", "data:raidz1-1"]
    assert [len(groups["data:raidz1-0"]), len(groups["data:raidz1-1"])] == [4, 3]
    assert pool["disks"] == {
        "raid5_group1": [f"/dev/{n}" for n in groups["data:raidz1-0"]],
        "raid5_group2": [f"/dev/{n}" for n in groups["data:raidz1-1"]],
    }
    assert {short(d["name"]) for d in disks} == set(groups["data:raidz1-0"] + groups["data:raidz1-1"])
    used, avail = int(zfs_get(pool["name"], "used")), int(zfs_get(pool["name"], "available"))
    details = appliance.ok("GET", f"/api/pool/{pool['id']}")
    assert details["size_free"] == str(avail)
    assert int(details["size_used"]) >= used  # the pool may have written metadata since
    assert int(details["size_total"]) == int(details["size_used"]) + int(details["size_free"])
    assert details["time_created"] == zfs_get(pool["name"], "creation")
    assert details["status"] == "ONLINE" and details["health"] == "100"
    assert details["diskgroup_size"] == "4" and details["pool_type"] == "raid5"
    assert details["compression"] is True and details["deduplication"] is False
    assert details["syncwrite"] is True
    assert re.fullmatch(r"\d+\.\d\dx", details["compression_ratio"])
    assert re.fullmatch(r"\d+\.\d\dx", details["deduplication_ratio"])
    assert zfs_get(pool["name"], "compression") == "on" and zfs_get(pool["name"], "dedup") == "off"
    assert zfs_get(pool["name"], "mountpoint") == f"/vsnap/{pool['name']}"
    for d in appliance.ok("GET", "/api/disk")["disks"]:
        if d["name"] in {x["name"] for x in disks}:
            assert (d["used_as"], d["pool"]) == ("data", pool["name"])


@pytest.mark.guest
def test_syncwrite_false_turns_sync_off_where_zfs_has_it(appliance, pools):
    """The spec's own 7.1 example creates a pool with syncwrite false: OpenZFS sets
    sync=disabled, and the setting can be turned back; zfs-fuse refuses it (no sync there)."""
    disks = unused(appliance, 1)
    body = {"name": f"{PREFIX}sync", "pool_type": "raid0", "disk_list": [disks[0]["uuid"]], "syncwrite": False}
    if not stack.KERNEL:
        r = appliance.post("/api/pool", json=body)
        assert r.status_code == 400 and "sync" in r.json()["error"]["message"], r.text
        assert f"{PREFIX}sync" not in pool_names()
        return
    pool = pools(body.pop("name"), body.pop("pool_type"), disks, syncwrite=False)
    assert pool["syncwrite"] is False and zfs_get(pool["name"], "sync") == "disabled"
    assert appliance.ok("PUT", f"/api/pool/{pool['id']}", json={"syncwrite": True})["syncwrite"] is True
    assert zfs_get(pool["name"], "sync") == "standard"
    assert int(appliance.ok("GET", f"/api/pool/{pool['id']}")["size_before_compression"]) == \
        int(zfs_get(pool["name"], "logicalused"))


@pytest.mark.guest
def test_raid6_and_expand_add_a_group_of_the_same_type(appliance, pools):
    disks = unused(appliance, 8)
    pool = pools(f"{PREFIX}x6", "raid6", disks[:4], deduplication=True, compression=False)
    assert list(layout(pool["name"])) == ["data:raidz2-0"]
    assert zfs_get(pool["name"], "dedup") == "on" and zfs_get(pool["name"], "compression") == "off"
    expanded = appliance.ok("POST", f"/api/pool/{pool['id']}",
                            json={"action": "expand", "disk_list": [d["uuid"] for d in disks[4:8]]})
    groups = layout(pool["name"])
    assert list(groups) == ["data:raidz2-0", "data:raidz2-1"]
    assert len(groups["data:raidz2-1"]) == 4
    assert list(expanded["disks"]) == ["raid6_group1", "raid6_group2"]
    assert int(expanded["size_total"]) > int(pool["size_total"])


@pytest.mark.guest
def test_log_cache_spare_devices(appliance, pools):
    disks = unused(appliance, 7)
    pool = pools(f"{PREFIX}dev", "raid0", disks[:2])
    pid = pool["id"]
    # Plain stripes: each disk a top-level vdev of its own, no raidz or mirror groups.
    assert layout(pool["name"]) == {f"data:{short(d['name'])}": [] for d in disks[:2]}
    assert pool["disks"] == {"raid0_group1": [d["name"] for d in disks[:2]]}

    r = appliance.ok("POST", f"/api/pool/{pid}",
                     json={"action": "addlog", "disk_list": [d["uuid"] for d in disks[2:4]]})
    log_groups = {k: v for k, v in layout(pool["name"]).items() if k.startswith("logs:")}
    assert list(log_groups.values()) == [[short(d["name"]) for d in disks[2:4]]]
    assert list(log_groups)[0].startswith("logs:mirror-")
    assert r["disks"]["log"] == [d["name"] for d in disks[2:4]]

    r = appliance.ok("POST", f"/api/pool/{pid}", json={"action": "addcache", "disk": disks[4]["uuid"]})
    assert f"\tcache\n\t  {short(disks[4]['name'])}" in zpool("status", pool["name"])
    assert r["disks"]["cache"] == [disks[4]["name"]]

    r = appliance.ok("POST", f"/api/pool/{pid}",
                     json={"action": "addspare", "disk_list": [d["uuid"] for d in disks[5:7]]})
    status = zpool("status", pool["name"])
    assert all(re.search(rf"^\s+{short(d['name'])}\s+AVAIL", status, re.M) for d in disks[5:7])
    assert r["disks"]["spare"] == [d["name"] for d in disks[5:7]]
    used = {d["name"]: d["used_as"] for d in appliance.ok("GET", "/api/disk")["disks"]}
    assert [used[d["name"]] for d in disks] == ["data", "data", "log", "log", "cache", "spare", "spare"]

    r = appliance.ok("POST", f"/api/pool/{pid}", json={"action": "removespare", "disk_list": [disks[5]["uuid"]]})
    assert r["disks"]["spare"] == [disks[6]["name"]]
    r = appliance.ok("POST", f"/api/pool/{pid}", json={"action": "removelog"})
    assert "log" not in r["disks"] and "logs" not in zpool("status", pool["name"])
    r = appliance.ok("POST", f"/api/pool/{pid}", json={"action": "removecache"})
    assert "cache" not in r["disks"] and "\tcache" not in zpool("status", pool["name"])
    # What left the pool is plainly unused again, ready for another pool.
    used = {d["name"]: d["used_as"] for d in appliance.ok("GET", "/api/disk")["disks"]}
    assert [used[d["name"]] for d in disks[2:6]] == ["unused"] * 4

    for body in ({"action": "removelog"}, {"action": "removecache"},
                 {"action": "removespare", "disk_list": [disks[0]["uuid"]]},
                 {"action": "addcache"}, {"action": "addlog"}, {"action": "shrink"}):
        before = zpool("status", pool["name"])
        r = appliance.post(f"/api/pool/{pid}", json=body)
        assert r.status_code == 400, (body, r.text)
        assert zpool("status", pool["name"]) == before


@pytest.mark.guest
def test_bad_input_is_refused_and_changes_nothing(appliance, pools):
    disks = unused(appliance, 3)
    pool = pools(f"{PREFIX}bad", "raid0", disks[:1])
    before = zpool("list", "-H", "-o", "name")
    ok_disk = [disks[1]["uuid"]]
    cases = [
        ({"name": f"{PREFIX}bad", "pool_type": "raid0", "disk_list": ok_disk}, 409, "ConflictError"),
        ({"name": "x", "pool_type": "raid0", "disk_list": ["no-such-uuid"]}, 400, "InvalidCandidateError"),
        ({"name": "x", "pool_type": "raid0", "disk_list": [disks[0]["uuid"]]}, 400, "InvalidCandidateError"),
        ({"name": "x", "pool_type": "raid6", "disk_list": [d["uuid"] for d in disks[1:3]]}, 400,
         "InvalidCandidateError"),
        ({"name": "x", "pool_type": "raid0", "disk_list": ok_disk * 2}, 400, "ValidationError"),
        ({"name": "x", "pool_type": "raid10", "disk_list": ok_disk}, 400, "ValidationError"),
        ({"pool_type": "raid0", "disk_list": ok_disk}, 400, "ValidationError"),
        ({"name": "x", "disk_list": ok_disk}, 400, "ValidationError"),
        ({"name": "x", "pool_type": "raid0", "disk_list": "all"}, 400, "ValidationError"),
        ({"name": "x" * 256, "pool_type": "raid0", "disk_list": ok_disk}, 400, "ValidationError"),
    ]
    if not stack.KERNEL:  # zfs-fuse has no sync property to turn off
        cases.append(({"name": "x", "pool_type": "raid0", "disk_list": ok_disk, "syncwrite": False},
                      400, "ValidationError"))
    for name in ["1abc", "-f", "a b", "a/b", "a;reboot", "$(id)", "../etc", "mirror", "raidz2x",
                 "spare", "log", "c0t0d0", "pool\u00e9", "a\nb", "a\x00b", "--help"]:
        cases.append(({"name": name, "pool_type": "raid0", "disk_list": ok_disk}, 400, "ValidationError"))
    for body, status, kind in cases:
        r = appliance.post("/api/pool", json=body)
        assert (r.status_code, r.json()["error"]["type"]) == (status, kind), (body, r.text)
        if "no-such-uuid" in str(body) or body.get("disk_list") == [disks[0]["uuid"]]:
            assert body["disk_list"][0] in r.json()["error"]["message"]
    assert zpool("list", "-H", "-o", "name") == before
    for path, method, body, status in [
        ("/api/pool/999999", "GET", None, 404), ("/api/pool/999999", "DELETE", None, 404),
        ("/api/pool/999999", "PUT", {"compression": False}, 404),
        (f"/api/pool/{pool['id']}", "PUT", {"name": "bad name"}, 400),
        (f"/api/pool/{pool['id']}", "PUT", {"pool_type": "raid6"}, 400),  # read-only
        (f"/api/pool/{pool['id']}", "POST", {"action": "destroy"}, 400),
        ("/api/pool?id=abc", "GET", None, 400), ("/api/pool?name=nosuchpool", "GET", None, 404),
    ]:
        r = appliance.request(method, path, json=body)
        assert r.status_code == status, (path, method, body, r.text)
    assert zpool("list", "-H", "-o", "name") == before


def test_multipool_off_allows_one_pool(appliance, pools):
    disks = unused(appliance, 2)
    pools(f"{PREFIX}one", "raid0", disks[:1])
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": False})
    r = appliance.post("/api/pool", json={"name": f"{PREFIX}two", "pool_type": "raid0",
                                          "disk_list": [disks[1]["uuid"]]})
    assert r.status_code == 409 and "multipool" in r.json()["error"]["message"]
    assert f"{PREFIX}two" not in pool_names()
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    pools(f"{PREFIX}two", "raid0", disks[1:2])
    assert {f"{PREFIX}one", f"{PREFIX}two"} <= pool_names()


@pytest.mark.guest
def test_update_properties_and_rename(appliance, pools):
    disks = unused(appliance, 1)
    pool = pools(f"{PREFIX}old", "raid0", disks)
    with open(f"/vsnap/{PREFIX}old/backup.dat", "w") as f:
        f.write("kept across the rename")
    r = appliance.ok("PUT", f"/api/pool/{pool['id']}", json={"compression": False, "deduplication": True})
    assert (r["compression"], r["deduplication"]) == (False, True)
    assert zfs_get(pool["name"], "compression") == "off" and zfs_get(pool["name"], "dedup") == "on"

    r = appliance.ok("PUT", f"/api/pool/{pool['id']}", json={"name": f"{PREFIX}new"})
    assert r["name"] == f"{PREFIX}new" and r["id"] == pool["id"]
    assert f"{PREFIX}new" in pool_names() and f"{PREFIX}old" not in pool_names()
    assert zfs_get(f"{PREFIX}new", "mountpoint") == f"/vsnap/{PREFIX}new"
    assert not os.path.exists(f"/vsnap/{PREFIX}old")
    assert zfs_get(f"{PREFIX}new", "mounted") == "yes"
    with open(f"/vsnap/{PREFIX}new/backup.dat") as f:
        assert f.read() == "kept across the rename"
    assert zfs_get(f"{PREFIX}new", "compression") == "off"  # properties came along
    assert appliance.ok("GET", "/api/pool", params={"name": f"{PREFIX}new"})["id"] == pool["id"]
    assert appliance.get("/api/pool", params={"name": f"{PREFIX}old"}).status_code == 404

    subprocess.run(["zpool", "create", "-f", "-m", "none", f"{PREFIX}handmade",
                    appliance.ok("GET", "/api/disk", params={"used_as": "unused"})["disks"][0]["name"]],
                   check=True, capture_output=True)
    r = appliance.put(f"/api/pool/{pool['id']}", json={"name": f"{PREFIX}handmade"})
    assert r.status_code == 409
    assert f"{PREFIX}new" in pool_names()


@pytest.mark.guest
def test_update_whose_rename_is_refused_changes_nothing(appliance, pools):
    """A pool in use cannot be exported, so it cannot be renamed: the properties asked for in
    the same update stay as they were."""
    pool = pools(f"{PREFIX}busy", "raid0", unused(appliance, 1))
    holder = subprocess.Popen(["sleep", "120"], cwd=f"/vsnap/{PREFIX}busy")  # keeps the mount busy
    try:
        r = appliance.put(f"/api/pool/{pool['id']}", json={"name": f"{PREFIX}busy2", "compression": False,
                                                           "deduplication": True})
    finally:
        holder.kill()
        holder.wait()
    assert r.status_code == 409 and r.json()["error"]["type"] == "ConflictError", r.text
    assert (zfs_get(f"{PREFIX}busy", "compression"), zfs_get(f"{PREFIX}busy", "dedup")) == ("on", "off")
    assert f"{PREFIX}busy2" not in pool_names()
    details = appliance.ok("GET", f"/api/pool/{pool['id']}")
    assert (details["name"], details["compression"], details["deduplication"]) == (f"{PREFIX}busy", True, False)


def test_update_to_a_name_whose_mount_point_is_taken_changes_nothing(appliance, pools):
    pool = pools(f"{PREFIX}mp", "raid0", unused(appliance, 1))
    taken = f"/vsnap/{PREFIX}mp2"
    os.makedirs(taken)
    try:
        with open(f"{taken}/someone-elses", "w") as f:
            f.write("x")
        r = appliance.put(f"/api/pool/{pool['id']}", json={"name": f"{PREFIX}mp2", "compression": False})
        assert r.status_code == 409 and "mount point" in r.json()["error"]["message"], r.text
        assert zfs_get(f"{PREFIX}mp", "compression") == "on" and f"{PREFIX}mp2" not in pool_names()
        assert zfs_get(f"{PREFIX}mp", "mounted") == "yes"
        assert appliance.ok("GET", f"/api/pool/{pool['id']}")["name"] == f"{PREFIX}mp"
    finally:
        os.remove(f"{taken}/someone-elses")
        os.rmdir(taken)


@pytest.mark.guest
def test_delete_destroys_the_pool_and_frees_its_disks(appliance, pools):
    disks = unused(appliance, 3)
    pool = pools(f"{PREFIX}del", "raid5", disks)
    subprocess.run(["zfs", "create", f"{PREFIX}del/inside"], check=True)
    assert appliance.ok("DELETE", f"/api/pool/{pool['id']}") == {}
    assert f"{PREFIX}del" not in pool_names()
    assert not os.path.exists(f"/vsnap/{PREFIX}del")  # no empty mount point left behind
    assert appliance.get(f"/api/pool/{pool['id']}").status_code == 404
    used = {d["name"]: d["used_as"] for d in appliance.ok("GET", "/api/disk")["disks"]}
    assert [used[d["name"]] for d in disks] == ["unused"] * 3


@pytest.mark.guest
def test_pools_not_made_by_the_appliance_are_invisible_and_untouched(appliance, pools):
    disk = unused(appliance, 1)[0]
    subprocess.run(["zpool", "create", "-f", "-m", "none", f"{PREFIX}foreign", disk["name"]], check=True)
    appliance.restart()  # adoption runs at start
    assert f"{PREFIX}foreign" not in {p["name"] for p in appliance.ok("GET", "/api/pool")["pools"]}
    assert appliance.get("/api/pool", params={"name": f"{PREFIX}foreign"}).status_code == 404
    assert f"{PREFIX}foreign" in pool_names()
    listed = {d["name"]: d for d in appliance.ok("GET", "/api/disk")["disks"]}
    assert (listed[disk["name"]]["used_as"], listed[disk["name"]]["pool"]) == ("data", f"{PREFIX}foreign")


@pytest.mark.guest
def test_own_pools_are_adopted_when_the_database_is_lost(appliance, pools):
    from .conftest import STATE
    disks = unused(appliance, 2)
    first = pools(f"{PREFIX}ad1", "raid0", disks[:1])
    second = pools(f"{PREFIX}ad2", "raid0", disks[1:2])
    appliance.stop()
    for suffix in ("", "-wal", "-shm"):
        (STATE / f"vsnap.db{suffix}").unlink(missing_ok=True)
    subprocess.run([__import__("sys").executable, "-m", "vsnap.bootstrap", "--no-account"],
                   check=True, capture_output=True, env={**__import__("os").environ, "VSNAP_STATE": str(STATE)})
    appliance.start()
    appliance.ok("POST", "/api/system", json={"action": "init", "skip_pool": True, "multipool": True})
    listed = {p["name"]: p for p in appliance.ok("GET", "/api/pool")["pools"]}
    assert listed[f"{PREFIX}ad1"]["id"] == first["id"]
    assert listed[f"{PREFIX}ad2"]["id"] == second["id"]
    assert appliance.ok("GET", f"/api/pool/{first['id']}")["disks"] == first["disks"]


@pytest.mark.guest
def test_init_creates_the_default_pool_from_every_unused_disk(appliance, pools):
    existing = appliance.ok("GET", "/api/pool")["pools"]
    for pool in existing:
        appliance.ok("DELETE", f"/api/pool/{pool['id']}")
    free = appliance.ok("GET", "/api/disk", params={"used_as": "unused"})["disks"]
    info = appliance.ok("POST", "/api/system", json={"action": "init", "async": True, "multipool": True})
    deadline = time.monotonic() + 120
    while info["init_status"] == "Initializing" and time.monotonic() < deadline:
        time.sleep(0.5)
        info = appliance.ok("GET", "/api/system")
    assert info["init_status"] == "Ready", info
    [pool] = appliance.ok("GET", "/api/pool")["pools"]
    try:
        details = appliance.ok("GET", f"/api/pool/{pool['id']}")
        members = [p for group in details["disks"].values() for p in group]
        assert sorted(members) == sorted(d["name"] for d in free)
        expected = "raid6" if len(free) >= 6 else "raid5" if len(free) >= 3 else "raid0"
        assert details["pool_type"] == expected
        assert pool["name"] in pool_names()
        # Init again: the pool exists, so nothing more is made.
        appliance.ok("POST", "/api/system", json={"action": "init", "multipool": True})
        assert len(appliance.ok("GET", "/api/pool")["pools"]) == 1
    finally:
        appliance.ok("DELETE", f"/api/pool/{pool['id']}")
