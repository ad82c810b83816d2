"""Hosts and LUN mapping against the real target (tgt in the lab; LIO in the kernel lab's guest
for the tests marked `guest`), checked from the client side with libiscsi's initiator: what
each initiator name sees, sizes, serials and data.

The two targets differ in shape, as the spec allows: tgt gets a target per host and LUN
numbers from 1 (its controller holds LUN 0); LIO has one target, an ACL per initiator and
LUN numbers from 0. FIRST_LUN and target_of() hide that."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from . import iscsi_client as ic
from . import stack
from .conftest import SSH_PORT, STATE
from .stack import FIRST_LUN as L
from .zfs_tools import PREFIX, raid0_pool, unused

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
IQN_A = "iqn.2026-11.test.vsnap:host-a"
IQN_A2 = "iqn.2026-11.test.vsnap:host-a2"
IQN_B = "iqn.2026-11.test.vsnap:host-b"
STRANGER = "iqn.2026-11.test.vsnap:stranger"
ALL_TEST_IQNS = (IQN_A, IQN_A2, IQN_B, STRANGER)


@pytest.fixture(scope="module")
def pool(appliance):
    with raid0_pool(appliance, f"{PREFIX}iscsi", 2) as made:
        yield made


@pytest.fixture
def lun(appliance, pool):
    made = []

    def create(name, size=64 * MIB, **extra):
        body = {"name": name, "volume_type": "lun", "pool_id": pool["id"], "size_total": size, **extra}
        volume = appliance.ok("POST", "/api/volume", json=body)
        made.append(volume["id"])
        return volume

    yield create
    listed = appliance.ok("GET", "/api/volume", params={"pool_id": pool["id"]})["volumes"]
    for volume in sorted(listed, key=lambda v: (not v["is_clone"], v["volume_type"] != "filebackedlun")):
        appliance.delete(f"/api/volume/{volume['id']}")


@pytest.fixture
def host(appliance):
    """Makes hosts through the API. The test appliance's hosts are all deleted before (an
    interrupted run may have left some) and after."""

    def delete_all():
        for h in appliance.ok("GET", "/api/host")["hosts"]:
            appliance.delete(f"/api/host/{h['id']}")

    def create(name, iqns=()):
        return appliance.ok("POST", "/api/host", json={"name": name, "iqns": list(iqns)})

    delete_all()
    yield create
    delete_all()


def base_iqn() -> str:
    return "iqn.2026-11.local.vsnap:" + (STATE / "system-id").read_text().strip()


def seen(iqn: str) -> dict[int, tuple[str, int]]:
    """{lun: (serial, size)} this initiator sees of this appliance's targets."""
    return ic.luns_of(iqn, base_iqn())


def target_of(appliance, host_id: str) -> str:
    """The target a host's initiators log in to: its own under tgt, the one target under LIO."""
    wanted = None if stack.KERNEL else host_id
    [wwn] = [t["wwn"] for t in appliance.ok("GET", "/api/target")["targets"] if t["host_id"] == wanted]
    return wwn


def expected(appliance, iqn: str) -> dict[int, tuple[str, int]]:
    """What the API says this initiator should see."""
    for h in appliance.ok("GET", "/api/host")["hosts"]:
        if iqn in h["iqns"]:
            details = appliance.ok("GET", f"/api/host/{h['id']}")
            result = {}
            for m in details["mapped_luns"]:
                v = appliance.ok("GET", f"/api/volume/{m['vol_id']}")
                result[int(m["lun"])] = (v["serial"], int(v["size_total"]))
            return result
    return {}


def assert_views_match_api(appliance, timeout: float = 0):
    """Every test initiator sees exactly what the API says (waiting up to `timeout` for the
    watchdog to rebuild the target)."""
    def matches():
        return all(seen(iqn) == expected(appliance, iqn) for iqn in ALL_TEST_IQNS)
    if timeout:
        ic.wait_until(matches, timeout)
    for iqn in ALL_TEST_IQNS:
        assert seen(iqn) == expected(appliance, iqn), iqn


def error_of(response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind
    return response.json()["error"]["message"]


def lun_image(pool: dict, name: str) -> str:
    return stack.lun_device(pool["name"], name)


# -- hosts ------------------------------------------------------------------------------------
def test_host_create_list_get_update_delete(appliance, host):
    h = host("sid-oracle-47", ["IQN.1988-12.com.Oracle:devoracle47", "eui.02004567a425678d"])
    assert h["iqns"] == ["iqn.1988-12.com.oracle:devoracle47", "eui.02004567A425678D"]
    assert h["mapped_luns"] == [] and h["name"] == "sid-oracle-47"
    assert h["time_created"].isdigit() and h["time_updated"].isdigit()
    listed = appliance.ok("GET", "/api/host")
    assert listed["total"] == 1 and isinstance(listed["total"], int)
    assert set(listed["hosts"][0]) == {"id", "name", "iqns", "time_created", "time_updated"}
    assert appliance.ok("GET", "/api/host", params={"id": h["id"]}) == h
    assert appliance.ok("GET", "/api/host", params={"name": "sid-oracle-47"}) == h
    assert appliance.ok("GET", f"/api/host/{h['id']}") == h

    renamed = appliance.ok("PUT", f"/api/host/{h['id']}", json={"name": "new-host-name"})
    assert renamed["name"] == "new-host-name" and renamed["iqns"] == h["iqns"]
    replaced = appliance.ok("PUT", f"/api/host/{h['id']}", json={"iqns": ["naa.5000c5003011a2b1", IQN_A, IQN_A]})
    assert replaced["iqns"] == ["naa.5000C5003011A2B1", IQN_A]
    assert appliance.ok("PUT", f"/api/host/{h['id']}", json={"iqns": []})["iqns"] == []

    assert appliance.ok("DELETE", f"/api/host/{h['id']}") == {}
    error_of(appliance.get(f"/api/host/{h['id']}"), 404, "NotFoundError")
    error_of(appliance.get("/api/host", params={"name": "new-host-name"}), 404, "NotFoundError")
    error_of(appliance.delete(f"/api/host/{h['id']}"), 404, "NotFoundError")


def test_host_conflicts(appliance, host):
    a = host("a", [IQN_A])
    error_of(appliance.post("/api/host", json={"name": "a", "iqns": []}), 409, "ConflictError")
    message = error_of(appliance.post("/api/host", json={"name": "b", "iqns": [IQN_A]}), 409, "ConflictError")
    assert IQN_A in message
    b = host("b", [IQN_B])
    error_of(appliance.put(f"/api/host/{b['id']}", json={"iqns": [IQN_A]}), 409, "ConflictError")
    error_of(appliance.put(f"/api/host/{b['id']}", json={"name": "a"}), 409, "ConflictError")
    assert appliance.ok("GET", f"/api/host/{b['id']}")["iqns"] == [IQN_B]
    assert [h["name"] for h in appliance.ok("GET", "/api/host")["hosts"]] == ["a", "b"]
    assert appliance.ok("GET", f"/api/host/{a['id']}")["iqns"] == [IQN_A]


@pytest.mark.parametrize("body", [
    {"name": "x", "iqns": ["iqn.2026-13.com.example:bad-month"]},
    {"name": "x", "iqns": ["iqn.com.example:no-date"]},
    {"name": "x", "iqns": ["iqn.2026-11.com.example:has space"]},
    {"name": "x", "iqns": ["iqn.2026-11.com.example:semi;colon"]},
    {"name": "x", "iqns": ["iqn.2026-11.com.example:$(reboot)"]},
    {"name": "x", "iqns": ["-Q"]},
    {"name": "x", "iqns": ["eui.12345"]},
    {"name": "x", "iqns": ["naa.123456789012345G"]},
    {"name": "x", "iqns": ["iqn.2026-11.com.example:" + "a" * 300]},
    {"name": "x", "iqns": [""]},
    {"name": "x", "iqns": [7]},
    {"name": "x", "iqns": "iqn.2026-11.com.example:not-a-list"},
    {"name": "", "iqns": []},
    {"name": " padded ", "iqns": []},
    {"name": "tab\there", "iqns": []},
    {"name": "x" * 256, "iqns": []},
    {"iqns": [IQN_A]},
    {"name": "a/b", "iqns": []},
    {"name": "-x", "iqns": []},
    {"name": "$(id)", "iqns": []},
])
def test_host_bad_input_is_400_and_changes_nothing(appliance, host, body):
    before = appliance.ok("GET", "/api/host")
    message = error_of(appliance.post("/api/host", json=body), 400, "ValidationError")
    assert message
    assert appliance.ok("GET", "/api/host") == before
    assert seen(STRANGER) == {}


# -- mapping ----------------------------------------------------------------------------------
@pytest.mark.guest
def test_mapped_lun_is_seen_with_its_size_serial_and_data(appliance, pool, lun, host):
    vol = lun("l1", size=64 * MIB)
    h = host("host-a", [IQN_A])
    # Data written to the volume's image is what the initiator reads.
    data = os.urandom(256 * 1024)
    stack.write_at(lun_image(pool, "l1"), 5 * MIB, data)
    mapped = appliance.ok("POST", f"/api/host/{h['id']}", json={"action": "map", "vol_id": vol["id"]})
    assert mapped == {"vol_id": vol["id"], "lun": str(L)}
    assert appliance.ok("GET", f"/api/host/{h['id']}")["mapped_luns"] == [{"lun": str(L), "vol_id": vol["id"]}]
    assert appliance.ok("GET", f"/api/volume/{vol['id']}")["host_ids"] == [h["id"]]

    assert seen(IQN_A) == {L: (vol["serial"], 64 * MIB)}
    target = target_of(appliance, h["id"])
    assert ic.read(IQN_A, target, L, 5 * MIB, len(data)) == data
    # ...and what the initiator writes lands in the volume.
    written = os.urandom(64 * 1024)
    ic.write(IQN_A, target, L, 9 * MIB, written)
    assert stack.read_at(lun_image(pool, "l1"), 9 * MIB, len(written)) == written
    # Initiators of no host see nothing of it, and cannot log in to the host's target.
    assert seen(STRANGER) == {}
    with pytest.raises(PermissionError):
        ic.read(STRANGER, target, L, 0, 512)


def test_each_host_sees_only_its_own_luns(appliance, lun, host):
    v1, v2, v3 = lun("m1", size=32 * MIB), lun("m2", size=48 * MIB), lun("m3", size=16 * MIB)
    a = host("host-a", [IQN_A, IQN_A2])
    b = host("host-b", [IQN_B])
    appliance.ok("POST", f"/api/volume/{v1['id']}/map", json={"host_id": a["id"]})
    assert appliance.ok("POST", f"/api/volume/{v2['id']}/map", json={"host_id": int(b["id"])})["lun"] == "1"
    assert appliance.ok("POST", f"/api/host/{b['id']}", json={"action": "map", "vol_id": v1["id"]})["lun"] == "2"
    assert appliance.ok("POST", f"/api/host/{a['id']}", json={"action": "map", "vol_id": v3["id"]})["lun"] == "2"
    assert seen(IQN_A) == seen(IQN_A2) == {1: (v1["serial"], 32 * MIB), 2: (v3["serial"], 16 * MIB)}
    assert seen(IQN_B) == {1: (v2["serial"], 48 * MIB), 2: (v1["serial"], 32 * MIB)}
    assert seen(STRANGER) == {}
    assert appliance.ok("GET", f"/api/volume/{v1['id']}")["host_ids"] == sorted([a["id"], b["id"]], key=int)
    targets = appliance.ok("GET", "/api/target")
    assert targets["total"] == 2
    assert {t["host_id"] for t in targets["targets"]} == {a["id"], b["id"]}
    assert all(t["type"] == "iqn" and t["wwn"].startswith(base_iqn() + ":") for t in targets["targets"])
    # A host's initiator cannot log in to another host's target.
    with pytest.raises(PermissionError):
        ic.read(IQN_A, target_of(appliance, b["id"]), 1, 0, 512)
    assert_views_match_api(appliance)


def test_unmap_iqn_change_and_host_delete_follow_at_once(appliance, lun, host):
    v1, v2, v3 = lun("u1"), lun("u2"), lun("u3")
    a = host("host-a", [IQN_A])
    for v in (v1, v2, v3):
        appliance.ok("POST", f"/api/host/{a['id']}", json={"action": "map", "vol_id": v["id"]})
    assert sorted(seen(IQN_A)) == [1, 2, 3]
    assert appliance.ok("POST", f"/api/host/{a['id']}", json={"action": "unmap", "vol_id": v2["id"]}) == {}
    assert seen(IQN_A) == {1: (v1["serial"], 64 * MIB), 3: (v3["serial"], 64 * MIB)}
    # LUN numbers stay while mapped; the freed number is the next one given.
    assert appliance.ok("POST", f"/api/host/{a['id']}", json={"action": "map", "vol_id": v2["id"]})["lun"] == "2"
    assert_views_match_api(appliance)

    # An IQN change takes effect at once, even for a session that is logged in.
    target = target_of(appliance, a["id"])
    session = ic.Session(IQN_A, target, 1)
    try:
        session.read(0, 512)
        appliance.ok("PUT", f"/api/host/{a['id']}", json={"iqns": [IQN_A2]})
        with pytest.raises(OSError):
            session.read(0, 512)
    finally:
        session.close()
    assert seen(IQN_A) == {}
    assert sorted(seen(IQN_A2)) == [1, 2, 3]
    assert_views_match_api(appliance)

    assert appliance.ok("DELETE", f"/api/host/{a['id']}") == {}
    assert seen(IQN_A2) == {}
    assert appliance.ok("GET", f"/api/volume/{v1['id']}")["host_ids"] == []
    assert target not in [t["wwn"] for t in appliance.ok("GET", "/api/target")["targets"]]
    out = subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"],
                         capture_output=True, text=True, check=True).stdout
    assert target not in out


def test_map_errors(appliance, pool, lun, host):
    v = lun("e1")
    fs = appliance.ok("POST", "/api/volume", json={"name": "efs", "volume_type": "filesystem", "pool_id": pool["id"]})
    h = host("host-a", [IQN_A])
    assert "filesystem" in error_of(appliance.post(f"/api/volume/{fs['id']}/map", json={"host_id": h["id"]}),
                                    400, "ValidationError")
    error_of(appliance.post(f"/api/volume/{v['id']}/map", json={"host_id": "999999"}), 404, "NotFoundError")
    error_of(appliance.post("/api/volume/999999/map", json={"host_id": h["id"]}), 404, "NotFoundError")
    error_of(appliance.post(f"/api/volume/{v['id']}/map", json={}), 400, "ValidationError")
    error_of(appliance.post(f"/api/volume/{v['id']}/map", json={"host_id": "1; reboot"}), 400, "ValidationError")
    error_of(appliance.post(f"/api/host/{h['id']}", json={"action": "remap", "vol_id": v["id"]}),
             400, "ValidationError")
    error_of(appliance.post(f"/api/host/{h['id']}", json={"action": "unmap", "vol_id": v["id"]}),
             404, "NotFoundError")
    appliance.ok("POST", f"/api/host/{h['id']}", json={"action": "map", "vol_id": v["id"]})
    error_of(appliance.post(f"/api/host/{h['id']}", json={"action": "map", "vol_id": v["id"]}), 409, "ConflictError")
    error_of(appliance.post(f"/api/volume/{v['id']}/map", json={"host_id": h["id"]}), 409, "ConflictError")
    assert appliance.ok("GET", f"/api/host/{h['id']}")["mapped_luns"] == [{"lun": "1", "vol_id": v["id"]}]
    appliance.delete(f"/api/volume/{fs['id']}")
    assert_views_match_api(appliance)


def test_filebacked_lun_maps_the_file(appliance, pool, host):
    fs = appliance.ok("POST", "/api/volume", json={"name": "ffs", "volume_type": "filesystem", "pool_id": pool["id"]})
    try:
        image = Path(f"/vsnap/{pool['name']}/ffs/disks/vm.img")
        image.parent.mkdir()
        data = os.urandom(8 * MIB)
        image.write_bytes(data)
        flun = appliance.ok("POST", "/api/volume", json={"name": "fflun", "volume_type": "filebackedlun",
                                                         "parent_id": fs["id"], "parent_path": "disks/vm.img"})
        h = host("host-b", [IQN_B])
        assert appliance.ok("POST", f"/api/volume/{flun['id']}/map", json={"host_id": h["id"]})["lun"] == "1"
        assert seen(IQN_B) == {1: (flun["serial"], 8 * MIB)}
        assert ic.read(IQN_B, target_of(appliance, h["id"]), 1, 3 * MIB, MIB) == data[3 * MIB:4 * MIB]
        appliance.ok("DELETE", f"/api/volume/{flun['id']}")
        assert seen(IQN_B) == {} and appliance.ok("GET", f"/api/host/{h['id']}")["mapped_luns"] == []
    finally:
        for v in appliance.ok("GET", "/api/volume", params={"pool_id": pool["id"]})["volumes"]:
            if v["volume_type"] == "filebackedlun":
                appliance.delete(f"/api/volume/{v['id']}")
        appliance.delete(f"/api/volume/{fs['id']}")


@pytest.mark.guest
def test_restore_by_mapping_a_clone_of_a_snapshot(appliance, lun, host):
    """The backup restore path: data written by one host, snapshotted, cloned, and the clone
    mapped to another host, which reads that data under a new serial."""
    vol = lun("prod", size=32 * MIB)
    a, b = host("host-a", [IQN_A]), host("host-b", [IQN_B])
    appliance.ok("POST", f"/api/volume/{vol['id']}/map", json={"host_id": a["id"]})
    backup = os.urandom(MIB)
    ic.write(IQN_A, target_of(appliance, a["id"]), L, 2 * MIB, backup)
    snap = appliance.ok("POST", f"/api/volume/{vol['id']}/snapshot", json={"name": "nightly"})
    ic.write(IQN_A, target_of(appliance, a["id"]), L, 2 * MIB, os.urandom(MIB))  # changed after the backup
    clone = appliance.ok("POST", "/api/volume", json={"name": "restore", "snapshot_id": snap["id"]})
    assert clone["serial"] != vol["serial"]
    assert appliance.ok("POST", f"/api/volume/{clone['id']}/map", json={"host_id": b["id"]})["lun"] == str(L)
    assert seen(IQN_B) == {L: (clone["serial"], 32 * MIB)}
    assert ic.read(IQN_B, target_of(appliance, b["id"]), L, 2 * MIB, MIB) == backup
    appliance.ok("DELETE", f"/api/volume/{clone['id']}")
    assert seen(IQN_B) == {}
    assert_views_match_api(appliance)


@pytest.mark.guest
def test_rename_and_resize_of_a_mapped_lun(appliance, pool, lun, host):
    vol = lun("rs1", size=32 * MIB)
    h = host("host-a", [IQN_A])
    appliance.ok("POST", f"/api/volume/{vol['id']}/map", json={"host_id": h["id"]})
    data = os.urandom(MIB)
    ic.write(IQN_A, target_of(appliance, h["id"]), L, 0, data)
    appliance.ok("PUT", f"/api/volume/{vol['id']}", json={"name": "rs1-renamed"})
    assert seen(IQN_A) == {L: (vol["serial"], 32 * MIB)}
    assert ic.read(IQN_A, target_of(appliance, h["id"]), L, 0, MIB) == data
    appliance.ok("PUT", f"/api/volume/{vol['id']}", json={"size_total": 80 * MIB})
    assert seen(IQN_A) == {L: (vol["serial"], 80 * MIB)}
    assert ic.read(IQN_A, target_of(appliance, h["id"]), L, 0, MIB) == data
    # The target serves the renamed volume's blocks, under their new path.
    served = ic.backing_paths()
    assert lun_image(pool, "rs1-renamed") in served and lun_image(pool, "rs1") not in served


@pytest.mark.guest
def test_pool_delete_unmaps_its_luns(appliance, host):
    disks = unused(appliance, 1)
    p = appliance.ok("POST", "/api/pool", json={"name": f"{PREFIX}iscsi2", "pool_type": "raid0",
                                                "disk_list": [d["uuid"] for d in disks]})
    try:
        v = appliance.ok("POST", "/api/volume", json={"name": "pl", "volume_type": "lun", "pool_id": p["id"],
                                                      "size_total": 16 * MIB})
        h = host("host-b", [IQN_B])
        appliance.ok("POST", f"/api/volume/{v['id']}/map", json={"host_id": h["id"]})
        assert seen(IQN_B) == {L: (v["serial"], 16 * MIB)}
    finally:
        appliance.ok("DELETE", f"/api/pool/{p['id']}")
    assert seen(IQN_B) == {}
    assert appliance.ok("GET", f"/api/host/{h['id']}")["mapped_luns"] == []


# -- rebuilding the target ----------------------------------------------------------------------
def _tgtd_pid() -> int | None:
    """tgtd's pid if this suite's lab started it (only then may a test restart it)."""
    try:
        pid = int((STATE / "lab" / "run" / "tgtd.pid").read_text().split()[0])
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split()[2] == "Z":
                return None
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "tgtd" else None
    except (OSError, ValueError, IndexError):
        return None


def _lab_up() -> None:
    env = {**os.environ, "VSNAP_STATE": str(STATE), "VSNAP_SSH_PORT": str(SSH_PORT)}
    subprocess.run([str(ROOT / "lab" / "lab.sh"), "up"], env=env, check=True, capture_output=True, timeout=300)


def test_target_is_rebuilt_after_tgtd_restarts(appliance, lun, host):
    pid = _tgtd_pid()
    if pid is None:
        pytest.skip(f"tgtd was not started by this suite's lab ({STATE}): restarting it would "
                    "disturb whoever started it")
    v1, v2 = lun("t1"), lun("t2", size=32 * MIB)
    a, b = host("host-a", [IQN_A]), host("host-b", [IQN_B])
    appliance.ok("POST", f"/api/volume/{v1['id']}/map", json={"host_id": a["id"]})
    appliance.ok("POST", f"/api/volume/{v2['id']}/map", json={"host_id": b["id"]})
    data = os.urandom(MIB)
    ic.write(IQN_B, target_of(appliance, b["id"]), 1, 0, data)
    os.kill(pid, signal.SIGKILL)  # tgtd dies and forgets every target
    ic.wait_until(lambda: _tgtd_pid() is None, 30)
    _lab_up()
    assert _tgtd_pid() not in (None, pid)
    assert_views_match_api(appliance, timeout=60)
    assert ic.read(IQN_B, target_of(appliance, b["id"]), 1, 0, MIB) == data


def test_target_is_rebuilt_when_the_server_starts(appliance, lun, host):
    v1, v2 = lun("s1"), lun("s2")
    a, b = host("host-a", [IQN_A]), host("host-b", [IQN_B])
    appliance.ok("POST", f"/api/volume/{v1['id']}/map", json={"host_id": a["id"]})
    appliance.ok("POST", f"/api/volume/{v2['id']}/map", json={"host_id": b["id"]})
    ta, tb = target_of(appliance, a["id"]), target_of(appliance, b["id"])
    appliance.stop(signal.SIGKILL)
    try:
        # While the server is down the target drifts: an ACL and a LUN are lost, a stranger is
        # let in, and a target of a host that no longer exists appears.
        tgt = ["tgtadm", "--lld", "iscsi"]
        show = subprocess.run(tgt + ["--op", "show", "--mode", "target"], capture_output=True, text=True,
                              check=True).stdout
        tids = {line.split(": ", 1)[1]: line.split()[1].rstrip(":") for line in show.splitlines()
                if line.startswith("Target ")}
        subprocess.run(tgt + ["--op", "unbind", "--mode", "target", "--tid", tids[ta], "-Q", IQN_A], check=True)
        subprocess.run(tgt + ["--op", "delete", "--mode", "logicalunit", "--tid", tids[tb], "--lun", "1"], check=True)
        subprocess.run(tgt + ["--op", "bind", "--mode", "target", "--tid", tids[tb], "-Q", STRANGER], check=True)
        stray_tid = str(max(int(t) for t in tids.values()) + 50)
        subprocess.run(tgt + ["--op", "new", "--mode", "target", "--tid", stray_tid, "-T",
                              f"{base_iqn()}:host999999"], check=True)
        subprocess.run(tgt + ["--op", "bind", "--mode", "target", "--tid", stray_tid, "-Q", STRANGER], check=True)
        assert seen(IQN_A) == {}
        assert set(ic.visible(STRANGER, base_iqn())) == {tb, f"{base_iqn()}:host999999"}
    finally:
        appliance.start()
    assert_views_match_api(appliance)
    assert ic.visible(STRANGER, base_iqn()) == {}
    assert sorted(t["host_id"] for t in appliance.ok("GET", "/api/target")["targets"]) == sorted([a["id"], b["id"]])


# -- the same on LIO (the kernel lab's guest), where a target's configuration lives in configfs ----
def _targetcli(*args: str) -> None:
    out = subprocess.run(["targetcli", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _tpg() -> str:
    return f"/iscsi/{base_iqn().lower()}/tpg1"


@pytest.mark.kernel_stack
def test_lio_target_is_rebuilt_after_it_is_lost(appliance, lun, host):
    """LIO keeps nothing of ours across a reboot or a `targetcli clearconfig`: the appliance's
    target vanishing (deleted here with targetcli, ours only) is rebuilt by the worker from the
    database, and the data is still served."""
    v1, v2 = lun("t1"), lun("t2", size=32 * MIB)
    a, b = host("host-a", [IQN_A]), host("host-b", [IQN_B])
    appliance.ok("POST", f"/api/volume/{v1['id']}/map", json={"host_id": a["id"]})
    appliance.ok("POST", f"/api/volume/{v2['id']}/map", json={"host_id": b["id"]})
    data = os.urandom(MIB)
    ic.write(IQN_B, target_of(appliance, b["id"]), L, 0, data)
    _targetcli("/iscsi", "delete", base_iqn().lower())
    assert_views_match_api(appliance, timeout=60)
    assert ic.read(IQN_B, target_of(appliance, b["id"]), L, 0, MIB) == data


@pytest.mark.kernel_stack
def test_lio_target_is_rebuilt_when_the_server_starts(appliance, lun, host):
    v1, v2 = lun("s1"), lun("s2")
    a, b = host("host-a", [IQN_A]), host("host-b", [IQN_B])
    appliance.ok("POST", f"/api/volume/{v1['id']}/map", json={"host_id": a["id"]})
    appliance.ok("POST", f"/api/volume/{v2['id']}/map", json={"host_id": b["id"]})
    appliance.stop(signal.SIGKILL)
    try:
        # While the server is down the target drifts: an ACL and a mapped LUN are lost, and a
        # stranger is let in to host-b's LUN.
        _targetcli(f"{_tpg()}/acls", "delete", IQN_A)
        _targetcli(f"{_tpg()}/acls/{IQN_B}", "delete", str(L))
        _targetcli(f"{_tpg()}/acls", "create", STRANGER, "add_mapped_luns=false")
        _targetcli(f"{_tpg()}/acls/{STRANGER}", "create", str(L), str(L))
        assert seen(IQN_A) == {} and seen(IQN_B) == {}
        assert seen(STRANGER) != {}
    finally:
        appliance.start()
    assert_views_match_api(appliance)
    assert seen(STRANGER) == {}
    assert [t["host_id"] for t in appliance.ok("GET", "/api/target")["targets"]] == [None]
