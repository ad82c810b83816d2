"""SnapshotService over an in-memory ZFS (fake dataset ops), fake pools, a real Store on a temp
SQLite file, a real StorageLock, a real Catalog and a real VolumeService."""
from __future__ import annotations

import calendar
import os
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import vsnap.services.owner as owner_mod
import vsnap.services.snapshots as snapshots_mod
from vsnap.drivers.runner import CommandError
from vsnap.errors import ConflictError, NotFoundError, ValidationError
from vsnap.services.catalog import PROP_SNAP_ID, PROP_VOL_ID, Catalog
from vsnap.services.locking import StorageLock
from vsnap.services.snapshots import SnapshotService, generated_name
from vsnap.services.volumes import VolumeService
from vsnap.store.models import Snapshot, Volume

import support
from support import SpyLock, empty_tables

DEAD_OWNER = f"{2 ** 22 + 12345}:12345"  # above any Linux pid_max: never a live process
NAME_RE = re.compile(r"snap_(\d{14})_([0-9a-f]{8})")

LIST_FIELDS = ["id", "name", "parent_id", "time_created", "time_updated"]
DETAIL_FIELDS = ["id", "name", "parent_id", "parent_name", "pool_id", "pool_name", "has_clones",
                 "size_used", "version_id", "time_created", "time_updated"]


# =============================================================================================
# generated names
# =============================================================================================

def test_generated_name_format():
    before = int(time.time())
    names = {generated_name() for _ in range(50)}
    after = int(time.time())
    assert len(names) == 50
    for name in names:
        found = NAME_RE.fullmatch(name)
        assert found, name
        stamp = calendar.timegm(time.strptime(found.group(1), "%Y%m%d%H%M%S"))  # UTC
        assert before <= stamp <= after


# =============================================================================================
# fakes (the same in-memory ZFS as test_services_volumes.py, trimmed to what snapshots use)
# =============================================================================================

class FakeDatasets:
    MUTATING = ("snapshot", "set", "destroy", "inherit")

    def __init__(self, mount_root: Path):
        self.mount_root = mount_root
        self.has_zvols = True
        self.data: dict[str, dict[str, str]] = {}
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}
        self.lock: StorageLock | None = None
        self.unlocked: list[str] = []
        self._guid = 7000
        self.held: dict[str, list[str]] = {}  # snapshot -> its user holds' tags

    def holds(self, name):
        return self.held.get(name, [])

    def guid(self) -> str:
        self._guid += 1
        return str(self._guid)

    def add(self, name, kind="filesystem", **props) -> dict:
        base = {"type": kind, "guid": self.guid(), "origin": "-", "used": "65536",
                "referenced": "65536", "creation": "1700000000", "available": "1000000000",
                "quota": "0", "mountpoint": str(self.mount_root / name)}
        if kind == "snapshot":
            base.update(used="4096", mountpoint="-", creation="1700000300")
        self.data[name] = {**base, **props}
        return self.data[name]

    def _do(self, method, *args):
        self.calls.append((method, *args))
        if self.lock is not None and not self.lock._depth:
            self.unlocked.append(method)
        if method in self.fail:
            raise self.fail[method]

    def mutations(self, *methods):
        return [c for c in self.calls if not methods or c[0] in methods]

    def tree(self, root, user_props, snapshot_props=None):
        return {name: {**{p: "-" for p in user_props}, **props} for name, props in self.data.items()
                if name == root or name.startswith(root + "/") or name.startswith(root + "@")}

    def get(self, name, props):
        if name not in self.data:
            raise CommandError(["zfs", "get"], 1, "", f"cannot open '{name}': dataset does not exist\n")
        return {p: self.data[name].get(p, "-") for p in props}

    def snapshot(self, name, props=None):
        self._do("snapshot", name)
        if name in self.data:
            raise CommandError(["zfs", "snapshot"], 1, "", f"cannot create snapshot '{name}': dataset already exists\n")
        dataset = name.split("@", 1)[0]
        if dataset not in self.data:
            raise CommandError(["zfs", "snapshot"], 1, "", f"cannot open '{dataset}': dataset does not exist\n")
        inherited = {k: v for k, v in self.data[dataset].items() if k.startswith("com.vsnap:")}  # as ZFS does
        self.add(name, "snapshot", **{**inherited, **(props or {})})

    def set(self, name, prop, value):
        self._do("set", name, prop, value)
        self.data[name][prop] = value

    def inherit(self, name, prop):
        self._do("inherit", name, prop)

    def destroy(self, name, *, recursive=False):
        self._do("destroy", name, recursive)
        self.data.pop(name, None)


class FakePools(support.FakePools):
    """The pool service, with each pool's root dataset in the fake ZFS."""

    def __init__(self, store, ds):
        super().__init__(store)
        self.ds = ds

    def add(self, name) -> int:
        guid = self.ds.guid()
        self.ds.add(name, guid=guid)
        return super().add(name, guid)


class NoLunFiles:
    def __getattr__(self, name):
        raise AssertionError(f"LUN image driver used by a snapshot operation: {name}")


@pytest.fixture
def env(workdir, store):
    empty_tables(store)
    tmp_path = Path(tempfile.mkdtemp(dir=workdir))  # cheaper than a tmp_path per test
    ds = FakeDatasets(tmp_path / "mnt")
    lock = SpyLock(tmp_path / "storage.lock")
    ds.lock = lock
    pools = FakePools(store, ds)
    pool_id = pools.add("tank")
    catalog = Catalog(store, ds, pools, lock)
    volumes = VolumeService(store, ds, NoLunFiles(), catalog, pools, lock)
    svc = SnapshotService(store, ds, catalog, volumes, lock)
    yield SimpleNamespace(svc=svc, ds=ds, lock=lock, pools=pools, pool_id=pool_id, store=store,
                          catalog=catalog, volumes=volumes)
    assert ds.unlocked == [], "ZFS changed without the storage lock"
    empty_tables(store)


def add_volume(env, name, *, kind="filesystem", **fields) -> int:
    """A ready volume row and its dataset."""
    with env.store.session() as s:
        r = Volume(pool_id=env.pool_id, name=name, volume_type=kind, state="ready", **fields)
        s.add(r)
        s.flush()
        vol_id = r.id
    if kind != "filebackedlun":
        props = env.ds.add(f"tank/{name}", "volume" if kind == "lun" else "filesystem",
                           **{PROP_VOL_ID: str(vol_id)})
        with env.store.session() as s:
            s.get(Volume, vol_id).guid = props["guid"]
    return vol_id


def add_snap_row(env, vol_id, name, **fields) -> int:
    with env.store.session() as s:
        r = Snapshot(volume_id=vol_id, name=name, **fields)
        s.add(r)
        s.flush()
        return r.id


def snaps(store) -> list[Snapshot]:
    with store.session() as s:
        return s.query(Snapshot).order_by(Snapshot.id).all()


# =============================================================================================
# create
# =============================================================================================

def test_create_named(env):
    vol = add_volume(env, "v")
    body = env.svc.create(str(vol), "daily")
    [r] = snaps(env.store)
    assert env.ds.mutations() == [("snapshot", "tank/v@daily")]  # stamped by the same command
    assert env.ds.data["tank/v@daily"][PROP_SNAP_ID] == str(r.id)
    assert (r.name, r.volume_id, r.state, r.owner, r.guid) == \
        ("daily", vol, "ready", None, env.ds.data["tank/v@daily"]["guid"])
    assert list(body) == DETAIL_FIELDS
    assert body["id"] == str(r.id) and body["name"] == "daily" and body["parent_id"] == str(vol)
    assert body["version_id"] == r.guid and body["has_clones"] is False
    assert env.lock.taken >= 1


def test_create_answers_from_zfs_after_the_snapshot(env):
    vol = add_volume(env, "v")
    env.ds.data["tank/v"][PROP_VOL_ID] = str(vol)
    body = env.svc.create(str(vol), "s")
    made = env.ds.data["tank/v@s"]
    assert (body["version_id"], body["size_used"], body["time_created"]) == \
        (made["guid"], made["used"], made["creation"])
    assert (body["pool_name"], body["pool_id"], body["parent_name"]) == ("tank", str(env.pool_id), "v")


def test_create_refuses_a_dataset_that_took_the_volumes_name_outside_the_api(env):
    vol = add_volume(env, "v")
    env.ds.data["tank/v"][PROP_VOL_ID] = str(vol + 100)  # another volume's dataset now
    with pytest.raises(NotFoundError):
        env.svc.create(str(vol), "s")
    assert "tank/v@s" not in env.ds.data and snaps(env.store) == []
    assert env.ds.mutations("destroy") == [("destroy", "tank/v@s", False)]


def test_create_on_a_volume_destroyed_outside_the_api_is_not_found(env):
    vol = add_volume(env, "v")
    del env.ds.data["tank/v"]
    with pytest.raises(NotFoundError):
        env.svc.create(str(vol), "s")
    assert snaps(env.store) == []


def test_create_of_a_name_only_zfs_has_conflicts(env):
    vol = add_volume(env, "v")
    env.ds.add("tank/v@s", "snapshot", **{PROP_SNAP_ID: "-"})
    env.svc.catalog = None  # no catalog read needed to find this out
    with pytest.raises(ConflictError, match="already has a snapshot named s"):
        env.svc.create(str(vol), "s")
    assert [r.name for r in snaps(env.store)] == []


def test_create_on_unknown_volume_is_not_found(env):
    with pytest.raises(NotFoundError):
        env.svc.create("999", "s")
    with pytest.raises(NotFoundError):
        env.svc.create("abc", "s")
    assert env.ds.mutations() == []


def test_create_generated_name(env):
    vol = add_volume(env, "v")
    body = env.svc.create(vol)
    assert NAME_RE.fullmatch(body["name"])
    assert f"tank/v@{body['name']}" in env.ds.data


def test_generated_name_never_collides(env, monkeypatch):
    fixed = time.gmtime(1700000000)
    hexes = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb", "aaaaaaaa", "bbbbbbbb", "cccccccc"])
    monkeypatch.setattr(snapshots_mod, "time", SimpleNamespace(strftime=time.strftime, gmtime=lambda: fixed))
    monkeypatch.setattr(snapshots_mod, "secrets", SimpleNamespace(token_hex=lambda n: next(hexes)))
    stamp = time.strftime("%Y%m%d%H%M%S", fixed)
    vol = add_volume(env, "v")
    add_volume(env, "w")
    env.ds.add(f"tank/w@snap_{stamp}_bbbbbbbb", "snapshot")  # another volume's: no collision
    first = env.svc.create(vol)["name"]
    second = env.svc.create(vol)["name"]
    third = env.svc.create(vol)["name"]
    assert (first, second, third) == (f"snap_{stamp}_aaaaaaaa", f"snap_{stamp}_bbbbbbbb",
                                      f"snap_{stamp}_cccccccc")


def test_create_on_filebacked_lun_refused(env):
    fs = add_volume(env, "fs")
    flun = add_volume(env, "flun", kind="filebackedlun", parent_id=fs, parent_path="a.img")
    with pytest.raises(ValidationError, match="parent filesystem"):
        env.svc.create(str(flun), "s")
    assert snaps(env.store) == [] and env.ds.mutations() == []


@pytest.mark.parametrize("name", ["", "a b", "a@b", "-x", "a/b", "x" * 201])
def test_create_bad_name(env, name):
    vol = add_volume(env, "v")
    with pytest.raises(ValidationError):
        env.svc.create(str(vol), name)
    assert snaps(env.store) == [] and env.ds.mutations() == []


def test_create_duplicate_conflicts(env):
    vol = add_volume(env, "v")
    env.svc.create(str(vol), "s1")
    calls = len(env.ds.calls)
    with pytest.raises(ConflictError):
        env.svc.create(str(vol), "s1")
    assert len(env.ds.calls) == calls
    assert [r.name for r in snaps(env.store)] == ["s1"]


def test_create_duplicate_of_a_zfs_snapshot_not_in_the_catalog(env):
    vol = add_volume(env, "v")
    pending = add_snap_row(env, vol, "s1", state="deleting", owner=owner_mod.current_owner(), guid="1")
    env.ds.add("tank/v@s1", "snapshot", **{PROP_SNAP_ID: str(pending)})  # in flight: not in the view
    with pytest.raises(ConflictError):
        env.svc.create(str(vol), "s1")
    assert env.ds.mutations() == []
    assert [r.id for r in snaps(env.store)] == [pending]


def test_same_name_on_another_volume_is_fine(env):
    v = add_volume(env, "v")
    w = add_volume(env, "w")
    env.svc.create(str(v), "s1")
    env.svc.create(str(w), "s1")
    assert sorted((r.volume_id, r.name) for r in snaps(env.store)) == [(v, "s1"), (w, "s1")]
    with pytest.raises(ConflictError):
        env.svc.get(name="s1")


def test_create_zfs_failure_removes_the_row(env):
    vol = add_volume(env, "v")
    env.ds.fail["snapshot"] = CommandError(["zfs", "snapshot"], 1, "", "out of space\n")
    with pytest.raises(ConflictError, match="out of space"):
        env.svc.create(str(vol), "s1")
    assert snaps(env.store) == []
    assert env.ds.mutations("set") == []


def test_create_of_unknown_volume(env):
    with pytest.raises(NotFoundError):
        env.svc.create("42", "s")
    with pytest.raises(NotFoundError):
        env.svc.create("x", "s")


# =============================================================================================
# delete
# =============================================================================================

def test_delete(env):
    vol = add_volume(env, "v")
    sid = int(env.svc.create(str(vol), "s1")["id"])
    env.svc.delete(str(sid))
    assert env.ds.mutations("destroy") == [("destroy", "tank/v@s1", False)]
    assert snaps(env.store) == [] and "tank/v@s1" not in env.ds.data


def test_delete_with_clones_names_them(env):
    vol = add_volume(env, "v")
    sid = int(env.svc.create(str(vol), "s1")["id"])
    for name in ("zclone", "aclone"):
        with env.lock.held():  # made outside the API: the catalog adopts them
            env.ds.add(f"tank/{name}", origin="tank/v@s1")
    with pytest.raises(ConflictError, match="aclone, zclone"):
        env.svc.delete(str(sid))
    assert env.ds.mutations("destroy") == []
    [r] = snaps(env.store)
    assert (r.state, r.owner) == ("ready", None)
    assert env.svc.get(str(sid))["has_clones"] is True


def test_delete_zfs_failure_keeps_the_row_ready(env):
    vol = add_volume(env, "v")
    sid = int(env.svc.create(str(vol), "s1")["id"])
    env.ds.fail["destroy"] = CommandError(["zfs", "destroy"], 1, "", "dataset is busy\n")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.delete(str(sid))
    [r] = snaps(env.store)
    assert (r.id, r.state, r.owner) == (sid, "ready", None)


def test_delete_of_a_held_snapshot_says_who_holds_it(env):
    vol = add_volume(env, "v")
    sid = int(env.svc.create(str(vol), "s1")["id"])
    env.ds.fail["destroy"] = CommandError(["zfs", "destroy"], 1, "", "cannot destroy snapshot: dataset is busy\n")
    env.ds.held["tank/v@s1"] = ["vsnap-repl-" + "1" * 32]
    with pytest.raises(ConflictError, match="is held .vsnap-repl-1+: in use by a replication session.; try again"):
        env.svc.delete(str(sid))
    [r] = snaps(env.store)
    assert (r.id, r.state) == (sid, "ready")


def test_delete_unknown(env):
    with pytest.raises(NotFoundError):
        env.svc.delete("9")


# =============================================================================================
# recover
# =============================================================================================

def live_other_owner() -> str:
    for pid in (os.getppid(), 1):
        stat = owner_mod._stat(pid) if pid > 0 and pid != os.getpid() else None
        if stat is not None:
            return f"{pid}:{stat[1]}"
    pytest.skip("no other live process visible in /proc")


def test_recover_creating_that_exists_is_stamped_and_ready(env):
    vol = add_volume(env, "v")
    sid = add_snap_row(env, vol, "s1", state="creating", owner=DEAD_OWNER)
    env.ds.add("tank/v@s1", "snapshot")
    env.svc.recover()
    [r] = snaps(env.store)
    assert (r.id, r.state, r.owner, r.guid) == (sid, "ready", None, env.ds.data["tank/v@s1"]["guid"])
    assert env.ds.mutations() == [("set", "tank/v@s1", PROP_SNAP_ID, str(sid))]


def test_recover_creating_missing_is_dropped(env):
    vol = add_volume(env, "v")
    add_snap_row(env, vol, "s1", state="creating", owner=DEAD_OWNER)
    env.svc.recover()
    assert snaps(env.store) == [] and env.ds.mutations() == []


def test_recover_deleting_that_exists_is_destroyed(env):
    vol = add_volume(env, "v")
    guid = env.ds.add("tank/v@s1", "snapshot")["guid"]
    add_snap_row(env, vol, "s1", state="deleting", owner=DEAD_OWNER, guid=guid)
    env.svc.recover()
    assert snaps(env.store) == []
    assert env.ds.mutations() == [("destroy", "tank/v@s1", False)]
    assert "tank/v@s1" not in env.ds.data


def test_recover_deleting_never_destroys_another_snapshot_of_that_name(env):
    vol = add_volume(env, "v")
    add_snap_row(env, vol, "s1", state="deleting", owner=DEAD_OWNER, guid="1")
    env.ds.add("tank/v@s1", "snapshot")  # a later snapshot under the same name: another guid
    env.svc.recover()
    assert snaps(env.store) == []
    assert env.ds.mutations() == [] and "tank/v@s1" in env.ds.data


def test_recover_deleting_already_gone(env):
    vol = add_volume(env, "v")
    add_snap_row(env, vol, "s1", state="deleting", owner=DEAD_OWNER, guid="1")
    env.svc.recover()
    assert snaps(env.store) == [] and env.ds.mutations() == []


def test_recover_leaves_a_live_other_process_alone(env):
    vol = add_volume(env, "v")
    theirs = add_snap_row(env, vol, "s1", state="creating", owner=live_other_owner())
    ready = add_snap_row(env, vol, "s2", state="ready", guid="5")
    env.svc.recover()
    assert [(r.id, r.state) for r in snaps(env.store)] == [(theirs, "creating"), (ready, "ready")]
    assert env.ds.mutations() == []


def test_crashed_create_seen_by_a_load_before_recover(env):
    vol = add_volume(env, "v")
    sid = add_snap_row(env, vol, "s1", state="creating", owner=DEAD_OWNER)
    env.ds.add("tank/v@s1", "snapshot")  # taken; the process died before stamping it
    env.catalog.load()  # e.g. another server worker serving a request
    env.svc.recover()
    rows = snaps(env.store)
    assert [(r.name, r.state) for r in rows] == [("s1", "ready")]
    assert (rows[0].id, rows[0].guid) == (sid, env.ds.data["tank/v@s1"]["guid"])


def test_recover_does_not_claim_a_later_snapshot_of_the_same_name(env):
    vol = add_volume(env, "v")
    add_snap_row(env, vol, "s1", state="creating", owner=DEAD_OWNER)  # died before `zfs snapshot`
    try:
        new_id = int(env.svc.create(str(vol), "s1")["id"])
    except ConflictError:  # refusing the name while the old row is pending is fine too
        new_id = None
    env.svc.recover()
    rows = snaps(env.store)
    if new_id is None:
        assert rows == []
    else:
        assert [(r.id, r.state) for r in rows] == [(new_id, "ready")]
        assert env.ds.data["tank/v@s1"][PROP_SNAP_ID] == str(new_id)


# =============================================================================================
# reading and rendering
# =============================================================================================

def test_render_list_and_detail_fields_in_order(env):
    vol = add_volume(env, "v")
    sid = int(env.svc.create(str(vol), "s1")["id"])
    [listed] = env.svc.list()
    assert list(listed) == LIST_FIELDS
    detail = env.svc.get(str(sid))
    assert list(detail) == DETAIL_FIELDS
    zfs = env.ds.data["tank/v@s1"]
    assert detail == {
        "id": str(sid), "name": "s1", "parent_id": str(vol), "parent_name": "v",
        "pool_id": str(env.pool_id), "pool_name": "tank", "has_clones": False,
        "size_used": "4096", "version_id": zfs["guid"], "time_created": "1700000300",
        "time_updated": detail["time_updated"],
    }
    assert detail["time_updated"].isdigit()
    assert listed == {k: detail[k] for k in LIST_FIELDS}


def test_list_filters_by_parent(env):
    v = add_volume(env, "v")
    w = add_volume(env, "w")
    env.svc.create(str(v), "a")
    env.svc.create(str(w), "b")
    env.svc.create(str(v), "c")
    assert [s["name"] for s in env.svc.list()] == ["a", "b", "c"]
    assert [s["name"] for s in env.svc.list(parent_id=str(v))] == ["a", "c"]
    assert [s["name"] for s in env.svc.list(parent_id=w)] == ["b"]
    with pytest.raises(NotFoundError):
        env.svc.list(parent_id="99")


def test_get_by_id_or_name(env):
    v = add_volume(env, "v")
    sid = env.svc.create(str(v), "only")["id"]
    assert env.svc.get(name="only")["id"] == sid
    for missing in ({"snap_id": "77"}, {"snap_id": "x"}, {"name": "nope"}):
        with pytest.raises(NotFoundError):
            env.svc.get(**missing)
