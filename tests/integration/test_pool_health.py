"""A pool's health beyond the spec (issue 21): scrub and scrub_stop, the `scan` the pool view
shows, a hot spare standing in for an offline disk, and replacing a disk through the API,
each checked with the real `zpool status`.

A scrub is stopped as soon as the API started it, and tried again (with more data) when it
ended first. zfs-fuse's `zpool scrub` returns only when a small pool's scrub is done, so there
the API has no running scrub to stop; and it reports a stopped scrub as "completed" (seen on
the lab: `zpool scrub -s` at 33% done, then "scrub completed after 0h0m"); OpenZFS says
"canceled". A disk is taken out with `zpool offline` (the one failure
zfs-fuse takes safely: deleting a pool's backing file hangs it, see LAB.md)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from . import stack
from .test_observability import metric
from .zfs_tools import PREFIX, layout, short, unused, zpool


def write_data(directory: Path, *, small_files: int, big_mib: int = 0, start: int = 0) -> None:
    """Blocks for the scrub to read: many small files (a scan's time grows with its blocks)
    and, first, one big file of random bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    if big_mib:
        with open(directory / "big.bin", "wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(1 << 20))
    for i in range(start, start + small_files):
        (directory / f"f{i}.bin").write_bytes(os.urandom(8192))
    os.sync()


def wait_for(check, what: str, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g}s for {what}")
        time.sleep(0.5)


def scan_line(pool: str) -> str:
    """The scan report of the real `zpool status` (OpenZFS: scan:, zfs-fuse: scrub:)."""
    text = zpool("status", pool)
    found = re.search(r"^\s*(?:scan|scrub): (.*(?:\n\t.*)*)", text, re.M)
    return found.group(1) if found else ""


@pytest.mark.guest
def test_scrub_shows_in_the_view_and_stops(appliance, pools):
    pool = pools(f"{PREFIX}scrub", "raid0", unused(appliance, 1))
    path = f"/api/pool/{pool['id']}"
    assert pool["scan"] is None or pool["scan"]["state"] != "scanning"
    appliance.ok("POST", "/api/volume", json={"name": "data", "volume_type": "filesystem", "pool_id": pool["id"]})
    where = Path(f"/vsnap/{pool['name']}/data")
    write_data(where, small_files=3000, big_mib=200)

    # A finished scrub: the view says so, as zpool status does.
    started = appliance.ok("POST", path, json={"action": "scrub"})
    assert started["scan"]["function"] == "scrub"
    done = wait_for(lambda: (v := appliance.ok("GET", path))["scan"]["state"] == "finished" and v,
                    "the scrub to finish")
    assert done["scan"]["percent"] == 100.0 and done["scan"]["errors"] == 0
    assert done["scan"]["time_ended"] is not None and done["scan"]["estimated_end"] is None
    assert "in progress" not in scan_line(pool["name"])
    assert re.search(r"scrub (repaired|completed)", scan_line(pool["name"])), scan_line(pool["name"])
    r = appliance.post(path, json={"action": "scrub_stop"})  # none running: refused, nothing done
    assert r.status_code == 409 and r.json()["error"]["type"] == "ConflictError", r.text

    # A scrub stopped while it runs (tried again, with more blocks, if it ended first). zfs-fuse's
    # `zpool scrub` returns only once a small pool's scrub is done (seen on the lab: 436 MiB in
    # 0.5 s, `zpool status` said "in progress" meanwhile), so there the API answers with the
    # finished scrub and has none to stop.
    stopped = None
    for attempt in range(5 if stack.KERNEL else 1):
        running = appliance.ok("POST", path, json={"action": "scrub"})
        assert running["scan"]["function"] == "scrub"
        if running["scan"]["state"] == "scanning":
            assert running["scan"]["percent"] is None or 0 <= running["scan"]["percent"] <= 100
            metrics = appliance.get("/api/metrics").text
            assert metric(metrics, "vsnap_pool_scan_percent", pool=pool["name"], function="scrub") is not None
            r = appliance.post(path, json={"action": "scrub_stop"})
            if r.status_code == 200:
                stopped = r.json()
                break
            assert r.status_code == 409, r.text  # it ended in between
        wait_for(lambda: appliance.ok("GET", path)["scan"]["state"] != "scanning", "the scrub to end")
        if stack.KERNEL:
            write_data(where, small_files=10000, start=10000 * (attempt + 1))
    if stack.KERNEL:
        assert stopped is not None, "every scrub ended before it could be stopped"
    if stopped is not None:
        view = appliance.ok("GET", path)
        assert view["scan"]["function"] == "scrub" and view["scan"]["state"] != "scanning"
        # (zfs-fuse says "completed" for a scrub it stopped)
        assert view["scan"]["state"] in (("canceled",) if stack.KERNEL else ("canceled", "finished"))
        line = scan_line(pool["name"])
        assert "in progress" not in line and ("canceled" in line or not stack.KERNEL), line

    events = appliance.ok("GET", "/api/audit", params={"limit": 50})["events"]
    actions = [e["detail"].get("action") for e in events
               if e["path"] == path and e["method"] == "POST" and isinstance(e["detail"], dict)]
    assert "scrub_stop" in actions and "scrub" in actions


def device_of(pool: dict, disk: dict) -> str:
    """The path the pool view shows for one of the lab's disks."""
    [path] = [p for group in pool["disks"].values() for p in group if short(p) == short(disk["name"])
              or os.path.realpath(p) == os.path.realpath(disk["name"])][:1]
    return path


@pytest.mark.guest
def test_a_spare_stands_in_and_a_replace_through_the_api_frees_it(appliance, pools):
    disks = unused(appliance, 5)
    data, spare, new = disks[:3], disks[3], disks[4]
    pool = pools(f"{PREFIX}repl", "raid5", data)
    path = f"/api/pool/{pool['id']}"
    pool = appliance.ok("POST", path, json={"action": "addspare", "disk_list": [spare["uuid"]]})
    write_data(Path(f"/vsnap/{pool['name']}/files"), small_files=200, big_mib=20)
    failing, spare_path = device_of(pool, data[0]), device_of(pool, spare)

    # Bad requests change nothing.
    bad = [("/dev/nope", [new["uuid"]], "InvalidCandidateError"),  # not a device of the pool
           (f"{failing}; reboot", [new["uuid"]], "InvalidCandidateError"),
           (spare_path, [new["uuid"]], "InvalidCandidateError"),  # spares are removed, not replaced
           (failing, [data[1]["uuid"]], "InvalidCandidateError"),  # that disk is in use
           (failing, [], "ValidationError"),
           (failing, [new["uuid"], disks[3]["uuid"]], "ValidationError"),
           (None, [new["uuid"]], "ValidationError")]
    for disk, disk_list, kind in bad:
        body = {"action": "replace", "disk_list": disk_list, **({"disk": disk} if disk is not None else {})}
        r = appliance.post(path, json=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == kind, (body, r.text)
    assert appliance.ok("GET", path)["disks"] == pool["disks"]

    # The disk goes offline and the hot spare takes its place (done here by hand, as ZFS's
    # event daemon or the appliance's worker would): the pool says it is degraded.
    zpool("offline", pool["name"], failing)
    zpool("replace", pool["name"], failing, spare_path)
    degraded = wait_for(lambda: (v := appliance.ok("GET", path))["scan"] and v["scan"]["state"] != "scanning" and v,
                        "the resilver onto the spare")
    assert degraded["status"] == "DEGRADED" and int(degraded["health"]) < 100
    states = {(d["path"], d["role"]): d for d in degraded["disk_states"]}
    assert states[(failing, "data")]["state"] == "OFFLINE" and states[(failing, "data")]["replacing"] == "old"
    assert states[(spare_path, "data")]["replacing"] == "spare"
    assert states[(spare_path, "spare")]["state"] == "INUSE"
    listed = {p["id"]: p for p in appliance.ok("GET", "/api/pool")["pools"]}[pool["id"]]
    assert listed["status"] == "DEGRADED" and int(listed["health"]) < 100
    assert metric(appliance.get("/api/metrics").text, "vsnap_pool_state", pool=pool["name"], state="DEGRADED") == 1.0

    # Replaced through the API by a new disk: once resilvered, the spare is a spare again.
    replaced = appliance.ok("POST", path, json={"action": "replace", "disk": failing, "disk_list": [new["uuid"]]})
    assert replaced["scan"] is not None and replaced["scan"]["function"] == "resilver"

    def healed():
        v = appliance.ok("GET", path)
        return v if v["status"] == "ONLINE" and v["scan"]["state"] != "scanning" else None
    healed_view = wait_for(healed, "the pool to be ONLINE again")
    assert healed_view["health"] == "100"
    groups = layout(pool["name"])
    assert sorted(groups["data:raidz1-0"]) == sorted(short(d["name"]) for d in (new, data[1], data[2]))
    assert "spares:" + short(spare["name"]) in groups
    status = zpool("status", pool["name"])
    assert re.search(rf"{re.escape(short(spare['name']))}\s+AVAIL", status), status
    assert not re.search(rf"\b{re.escape(short(data[0]['name']))}\b", status), status
    assert "replacing" not in status and "spare-" not in status
    assert all(d["state"] in ("ONLINE", "AVAIL") for d in healed_view["disk_states"])
    assert healed_view["disks"]["spare"] == [spare_path]
