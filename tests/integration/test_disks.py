"""Disks as the appliance sees them, checked against what a hand-made zpool does to them."""
from __future__ import annotations

import subprocess

import pytest

from .system_state import settings
from .zfs_tools import destroy_pool

POOL = "vsnaptest_disks"


def _lab_disks() -> list[str]:
    """The disks the lab gave this appliance (VSNAP_DISKS of its lab.env)."""
    return settings().disks


def _by_name(appliance) -> dict[str, dict]:
    return {d["name"]: d for d in appliance.ok("GET", "/api/disk")["disks"]}


def test_only_the_appliances_own_disks_are_visible(appliance):
    disks = _by_name(appliance)
    assert set(disks) == set(_lab_disks())
    for disk in disks.values():
        assert disk["type"] == "LOOP"
        size = int(subprocess.run(["blockdev", "--getsize64", disk["name"]], capture_output=True,
                                  text=True, check=True).stdout)
        assert disk["size"] == str(size)
        assert len(disk["uuid"]) == 32


def test_uuids_are_stable_across_restart(appliance):
    before = {d["name"]: d["uuid"] for d in _by_name(appliance).values()}
    assert len(set(before.values())) == len(before)
    appliance.restart()
    assert {d["name"]: d["uuid"] for d in _by_name(appliance).values()} == before


def test_used_as_follows_a_hand_made_pool(appliance):
    unused = appliance.ok("GET", "/api/disk", params={"used_as": "unused"})
    assert unused["total"] == len(unused["disks"])
    assert all(d["used_as"] == "unused" for d in unused["disks"])
    if len(unused["disks"]) < 3:
        pytest.fail("the lab needs at least 3 unused disks for this test")
    data, spare = unused["disks"][0]["name"], unused["disks"][1]["name"]
    try:
        subprocess.run(["zpool", "create", "-f", "-m", "none", POOL, data], check=True, timeout=120)
        subprocess.run(["zpool", "add", "-f", POOL, "spare", spare], check=True, timeout=120)
        disks = _by_name(appliance)
        assert (disks[data]["used_as"], disks[data]["pool"]) == ("data", POOL)
        assert (disks[spare]["used_as"], disks[spare]["pool"]) == ("spare", POOL)
        names = {d["name"] for d in appliance.ok("GET", "/api/disk", params={"used_as": "unused"})["disks"]}
        assert data not in names and spare not in names
        in_pool = appliance.ok("GET", "/api/disk", params={"used_as": "data"})["disks"]
        assert [d["name"] for d in in_pool] == [data]
    finally:
        destroy_pool(POOL)
    disks = _by_name(appliance)
    assert disks[data]["used_as"] == "unused" and disks[data]["pool"] is None
    assert disks[spare]["used_as"] == "unused"


def test_rescan_answers_empty_object(appliance):
    assert appliance.ok("POST", "/api/disk", json={"action": "rescan"}) == {}
    r = appliance.post("/api/disk", json={"action": "format"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "ValidationError"
