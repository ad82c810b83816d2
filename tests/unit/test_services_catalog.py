"""Catalog: _split, and reconciling rows with a canned ZFS tree (real Store on a temp SQLite
file, real StorageLock, fake dataset ops and pools)."""
from __future__ import annotations

import copy
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event

from vsnap.drivers.runner import CommandError
from vsnap.services.catalog import (
    PROP_SERIAL,
    PROP_SNAP_ID,
    PROP_TYPE,
    PROP_VOL_ID,
    USER_PROPS,
    Catalog,
    CatalogView,
    SnapshotView,
    VolumeView,
    _split,
)
from vsnap.services.locking import StorageLock
from vsnap.store.models import Pool, Snapshot, Volume

from support import FakePools, SpyLock, empty_tables

DEAD_OWNER = f"{2 ** 22 + 12345}:12345"


# =============================================================================================
# _split
# =============================================================================================

def test_split_realistic_tree():
    tree = {
        "tank": {"type": "filesystem"},
        "tank@rootsnap": {"type": "snapshot"},
        "tank/fs1": {"type": "filesystem", "guid": "1"},
        "tank/fs1@s1": {"type": "snapshot", "guid": "2"},
        "tank/fs1@s2": {"type": "snapshot", "guid": "3"},
        "tank/fs1/child": {"type": "filesystem"},
        "tank/fs1/child@deep": {"type": "snapshot"},
        "tank/fs1/child/grandchild": {"type": "filesystem"},
        "tank/lun1": {"type": "volume", "guid": "4"},
        "tank/lun1@s1": {"type": "snapshot", "guid": "5"},
        "tank/fs1#vsnap-repl-1-2": {"type": "bookmark", "guid": "2"},  # `zfs get -r` lists bookmarks too
        "tankother/x": {"type": "filesystem"},  # another pool whose name starts alike
        "other/x@s": {"type": "snapshot"},
    }
    datasets, snapshots = _split(tree, "tank")
    assert datasets == {"tank/fs1": {"type": "filesystem", "guid": "1"},
                        "tank/lun1": {"type": "volume", "guid": "4"}}
    assert list(snapshots) == ["tank/fs1@s1", "tank/fs1@s2", "tank/lun1@s1"]
    assert snapshots["tank/fs1@s2"] == {"type": "snapshot", "guid": "3"}


def test_split_empty_pool():
    assert _split({"tank": {"type": "filesystem"}}, "tank") == ({}, {})


# =============================================================================================
# fakes
# =============================================================================================

class CannedDs:
    """ZfsDatasetOps answering `tree` from canned data; `set` updates it (so a stamp shows on
    the next read) and is recorded with whether the storage lock was held."""

    def __init__(self):
        self.trees: dict[str, dict[str, dict[str, str]]] = {}
        self.sets: list[tuple[str, str, str]] = []
        self.set_under_lock: list[bool] = []
        self.stamps: list[tuple[str, str, str]] = []
        self.stamp_under_lock: list[bool] = []
        self.tree_calls: list[str] = []
        self.fail_set: Exception | None = None
        self.lock: StorageLock | None = None

    def tree(self, root, user_props, snapshot_props=None):
        assert user_props == USER_PROPS
        self.tree_calls.append(root)
        tree = copy.deepcopy(self.trees.get(root, {}))
        for props in tree.values():
            for prop in user_props:
                props.setdefault(prop, "-")
        return tree

    def set(self, name, prop, value):
        self.sets.append((name, prop, value))
        self.set_under_lock.append(bool(self.lock and self.lock._depth))
        if self.fail_set:
            raise self.fail_set
        pool = name.split("/", 1)[0].split("@", 1)[0]
        self.trees[pool][name][prop] = value

    def stamp(self, name, prop, value):
        """The quiet set of bookkeeping properties (stamp_missing): recorded apart from sets."""
        self.stamps.append((name, prop, value))
        self.stamp_under_lock.append(bool(self.lock and self.lock._depth))
        if self.fail_set:
            raise self.fail_set
        pool = name.split("/", 1)[0].split("@", 1)[0]
        self.trees[pool][name][prop] = value


@pytest.fixture
def env(workdir, store):
    empty_tables(store)
    tmp_path = Path(tempfile.mkdtemp(dir=workdir))  # cheaper than a tmp_path per test
    ds = CannedDs()
    pools = FakePools(store)
    lock = SpyLock(tmp_path / "storage.lock")
    ds.lock = lock
    pool_id = pools.add("tank", "900")
    ds.trees["tank"] = {"tank": fs(guid="900", mountpoint="/vsnap/tank")}
    catalog = Catalog(store, ds, pools, lock)
    yield SimpleNamespace(store=store, ds=ds, pools=pools, lock=lock, catalog=catalog, pool_id=pool_id)
    empty_tables(store)


def fs(guid, **props):
    return {"type": "filesystem", "guid": guid, "origin": "-", "used": "1024", "referenced": "1024",
            "available": "1000000", "quota": "0", "creation": "1700000000",
            "mountpoint": "/vsnap/x", **props}


def zvol(guid, **props):
    return {"type": "volume", "guid": guid, "origin": "-", "used": "1024", "referenced": "1024",
            "volsize": "1048576", "volblocksize": "8192", "creation": "1700000000",
            "mountpoint": "-", **props}


def snap(guid, **props):
    return {"type": "snapshot", "guid": guid, "used": "0", "creation": "1700000100", **props}


def add_volume(store, pool_id, name, **fields) -> int:
    values = {"volume_type": "filesystem", "state": "ready"}
    values.update(fields)
    with store.session() as s:
        row = Volume(pool_id=pool_id, name=name, **values)
        s.add(row)
        s.flush()
        return row.id


def add_snapshot(store, volume_id, name, **fields) -> int:
    values = {"state": "ready"}
    values.update(fields)
    with store.session() as s:
        row = Snapshot(volume_id=volume_id, name=name, **values)
        s.add(row)
        s.flush()
        return row.id


def volumes(store) -> list[Volume]:
    with store.session() as s:
        return s.query(Volume).order_by(Volume.id).all()


def snapshots(store) -> list[Snapshot]:
    with store.session() as s:
        return s.query(Snapshot).order_by(Snapshot.id).all()


@contextmanager
def writes(store):
    """Records every INSERT/UPDATE/DELETE sent to the database inside the block."""
    seen: list[str] = []

    def spy(conn, cursor, statement, *args):
        if statement.lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", spy)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", spy)


# =============================================================================================
# adopting datasets made outside the API
# =============================================================================================

def test_adopts_unstamped_filesystem_with_a_new_id_and_stamps_it(env):
    env.ds.trees["tank"]["tank/made_by_hand"] = fs("111", creation="1690000000")
    view = env.catalog.load()
    [row] = volumes(env.store)
    assert (row.id, row.name, row.volume_type, row.guid, row.is_clone, row.state, row.serial,
            row.time_created) == (1, "made_by_hand", "filesystem", "111", False, "ready", None, 1690000000)
    assert env.ds.sets == [("tank/made_by_hand", PROP_VOL_ID, "1")]
    assert env.ds.set_under_lock == [True]
    assert env.lock.taken == 1
    assert list(view.volumes) == [1]
    assert view.volumes[1].dataset == "tank/made_by_hand"
    assert view.volumes[1].props["guid"] == "111"


def test_adoption_reuses_a_free_stamped_id(env):
    env.ds.trees["tank"]["tank/received"] = fs("111", **{PROP_VOL_ID: "7"})
    env.catalog.load()
    [row] = volumes(env.store)
    assert row.id == 7 and row.name == "received"
    assert env.ds.sets == []  # already carries its id


def test_adoption_with_a_stamped_id_taken_gets_a_new_id(env):
    env.ds.trees["tank"]["tank/mine"] = fs("111", **{PROP_VOL_ID: "1"})
    mine = add_volume(env.store, env.pool_id, "mine", guid="111")
    env.ds.trees["tank"]["tank/copy"] = fs("222", **{PROP_VOL_ID: str(mine)})  # e.g. received
    env.catalog.load()
    rows = volumes(env.store)
    assert [(r.id, r.name, r.guid) for r in rows] == [(1, "mine", "111"), (2, "copy", "222")]
    assert env.ds.sets == [("tank/copy", PROP_VOL_ID, "2")]


@pytest.mark.parametrize("props, kind", [
    ({"type": "volume", PROP_TYPE: "-"}, "lun"),
    ({"type": "filesystem", PROP_TYPE: "lun"}, "lun"),  # a LUN image dataset on zfs-fuse
    ({"type": "filesystem", PROP_TYPE: "-"}, "filesystem"),
    ({"type": "filesystem", PROP_TYPE: "bogus"}, "filesystem"),
    ({"type": "volume", PROP_TYPE: "bogus"}, "lun"),
    ({"type": "filesystem", PROP_TYPE: "filesystem"}, "filesystem"),
])
def test_adopted_type(env, props, kind):
    make = zvol if props["type"] == "volume" else fs
    env.ds.trees["tank"]["tank/v"] = make("111", **props)
    env.catalog.load()
    [row] = volumes(env.store)
    assert row.volume_type == kind
    if kind == "lun":  # a LUN needs a serial: made up and stamped
        assert row.serial and len(row.serial) == 36
        assert (("tank/v", PROP_SERIAL, row.serial)) in env.ds.sets
    else:
        assert row.serial is None
        assert [s for s in env.ds.sets if s[1] == PROP_SERIAL] == []


def test_adopted_lun_keeps_its_stamped_serial(env):
    env.ds.trees["tank"]["tank/lun"] = zvol("111", **{PROP_VOL_ID: "4", PROP_SERIAL: "serial-1"})
    env.catalog.load()
    [row] = volumes(env.store)
    assert (row.id, row.serial, row.volume_type) == (4, "serial-1", "lun")
    assert env.ds.sets == []


def test_adopted_clone_from_origin(env):
    env.ds.trees["tank"].update({
        "tank/src": fs("111", **{PROP_VOL_ID: "1"}),
        "tank/src@s1": snap("112", **{PROP_SNAP_ID: "1"}),
        "tank/cl": fs("113", origin="tank/src@s1"),
    })
    view = env.catalog.load()
    by_name = {r.name: r for r in volumes(env.store)}
    assert by_name["src"].is_clone is False
    assert by_name["cl"].is_clone is True
    assert view.origin_snapshot_id(view.volumes[by_name["cl"].id]) == 1
    assert view.origin_snapshot_id(view.volumes[by_name["src"].id]) is None
    assert view.snapshots[1].clones == ["tank/cl"]


def test_stamp_failure_still_adopts(env):
    env.ds.trees["tank"]["tank/ro"] = fs("111")
    env.ds.fail_set = CommandError(["zfs", "set"], 1, "", "permission denied")
    env.catalog.load()
    assert [(r.name, r.guid) for r in volumes(env.store)] == [("ro", "111")]


def test_deeper_datasets_are_not_volumes(env):
    env.ds.trees["tank"].update({
        "tank/a": fs("111", **{PROP_VOL_ID: "1"}),
        "tank/a/child": fs("222"),
        "tank/a/child@s": snap("333"),
        "tank@poolsnap": snap("444"),
    })
    add_volume(env.store, env.pool_id, "a", guid="111")
    view = env.catalog.load()
    assert [r.name for r in volumes(env.store)] == ["a"]
    assert snapshots(env.store) == []
    assert list(view.volumes) == [1] and view.snapshots == {}
    assert env.ds.sets == [] and env.lock.taken == 0


# =============================================================================================
# rows whose dataset changed outside the API
# =============================================================================================

def test_ready_row_whose_dataset_is_gone_is_deleted_with_its_snapshots(env):
    gone = add_volume(env.store, env.pool_id, "gone", guid="111")
    add_snapshot(env.store, gone, "s1", guid="112")
    add_snapshot(env.store, gone, "s2", guid="113")
    kept = add_volume(env.store, env.pool_id, "kept", guid="222")
    kept_snap = add_snapshot(env.store, kept, "s1", guid="223")
    env.ds.trees["tank"].update({"tank/kept": fs("222", **{PROP_VOL_ID: str(kept)}),
                                 "tank/kept@s1": snap("223", **{PROP_SNAP_ID: str(kept_snap)})})
    view = env.catalog.load()
    assert [r.name for r in volumes(env.store)] == ["kept"]
    assert [(s.id, s.volume_id) for s in snapshots(env.store)] == [(kept_snap, kept)]
    assert list(view.volumes) == [kept] and list(view.snapshots) == [kept_snap]
    assert env.lock.taken == 1
    assert env.ds.sets == []


def test_renamed_outside_keeps_id_and_takes_new_name(env):
    vol = add_volume(env.store, env.pool_id, "old", guid="111")
    sid = add_snapshot(env.store, vol, "before", guid="112")
    env.ds.trees["tank"].update({"tank/new": fs("111", **{PROP_VOL_ID: str(vol)}),
                                 "tank/new@after": snap("112", **{PROP_SNAP_ID: str(sid)})})
    view = env.catalog.load()
    [row] = volumes(env.store)
    assert (row.id, row.name) == (vol, "new")
    [srow] = snapshots(env.store)
    assert (srow.id, srow.name) == (sid, "after")
    assert view.snapshots[sid].zfs_name == "tank/new@after"
    assert env.ds.sets == []


def test_creating_rows_are_never_touched_and_their_datasets_not_adopted(env):
    in_flight = add_volume(env.store, env.pool_id, "newvol", state="creating", owner=DEAD_OWNER)
    add_volume(env.store, env.pool_id, "notyet", state="creating", owner=DEAD_OWNER)  # no dataset yet
    dying = add_volume(env.store, env.pool_id, "dying", state="deleting", owner=DEAD_OWNER, guid="333")
    env.ds.trees["tank"].update({
        "tank/newvol": fs("111", **{PROP_VOL_ID: str(in_flight)}),
        "tank/newvol@s": snap("112"),  # a snapshot of an in-flight volume waits for it
        "tank/dying": fs("333", **{PROP_VOL_ID: str(dying)}),
    })
    before = [(r.id, r.name, r.state, r.guid, r.owner) for r in volumes(env.store)]
    with writes(env.store) as written:
        view = env.catalog.load()
        env.catalog.load()
    assert [(r.id, r.name, r.state, r.guid, r.owner) for r in volumes(env.store)] == before
    assert snapshots(env.store) == []
    assert written == [] and env.ds.sets == [] and env.lock.taken == 0
    assert view.volumes == {}  # only ready rows are shown


def test_stamped_dataset_of_a_creating_row_not_adopted_while_other_changes_apply(env):
    in_flight = add_volume(env.store, env.pool_id, "newvol", state="creating", owner=DEAD_OWNER)
    env.ds.trees["tank"].update({"tank/newvol": fs("111", **{PROP_VOL_ID: str(in_flight)}),
                                 "tank/other": fs("222")})
    env.catalog.load()
    rows = volumes(env.store)
    assert [(r.id, r.name, r.state, r.guid) for r in rows] == [
        (in_flight, "newvol", "creating", None), (in_flight + 1, "other", "ready", "222")]
    assert env.ds.sets == [("tank/other", PROP_VOL_ID, str(in_flight + 1))]


# =============================================================================================
# snapshots
# =============================================================================================

def test_snapshots_adopted_with_stamped_or_new_ids(env):
    vol = add_volume(env.store, env.pool_id, "v", guid="111")
    env.ds.trees["tank"].update({
        "tank/v": fs("111", **{PROP_VOL_ID: str(vol)}),
        "tank/v@stamped": snap("113", **{PROP_SNAP_ID: "40"}),
        "tank/v@hand": snap("112", creation="1700000500"),
    })
    view = env.catalog.load()
    rows = {r.name: r for r in snapshots(env.store)}
    assert rows["stamped"].id == 40
    assert rows["hand"].id == 41  # after the highest id used
    assert (rows["hand"].guid, rows["hand"].volume_id, rows["hand"].state, rows["hand"].time_created) == \
        ("112", vol, "ready", 1700000500)
    assert env.ds.sets == [] and env.ds.stamps == []  # a read does not stamp: one zfs set each is slow
    assert view.unstamped() == [("tank/v@hand", 41)]
    assert env.catalog.stamp_missing() == 1
    assert env.ds.stamps == [("tank/v@hand", PROP_SNAP_ID, "41")]
    assert env.ds.stamp_under_lock == [True]
    assert env.catalog.load().unstamped() == [] and env.catalog.stamp_missing() == 0
    assert sorted(view.snapshots) == [40, 41]
    assert view.snapshots[41].volume is view.volumes[vol]
    assert view.snapshots[41].zfs_name == "tank/v@hand"


def test_snapshot_stamped_id_taken_gets_a_new_id(env):
    vol = add_volume(env.store, env.pool_id, "v", guid="111")
    mine = add_snapshot(env.store, vol, "mine", guid="112")
    env.ds.trees["tank"].update({
        "tank/v": fs("111", **{PROP_VOL_ID: str(vol)}),
        "tank/v@mine": snap("112", **{PROP_SNAP_ID: str(mine)}),
        "tank/v@copy": snap("113", **{PROP_SNAP_ID: str(mine)}),
    })
    env.catalog.load()
    assert [(r.id, r.name) for r in snapshots(env.store)] == [(mine, "mine"), (mine + 1, "copy")]
    env.catalog.stamp_missing()
    assert env.ds.stamps == [("tank/v@copy", PROP_SNAP_ID, str(mine + 1))]


def test_snapshots_of_a_newly_adopted_volume_adopted_in_the_same_load(env):
    env.ds.trees["tank"].update({"tank/v": fs("111"), "tank/v@s1": snap("112")})
    view = env.catalog.load()
    assert [r.name for r in volumes(env.store)] == ["v"]
    assert [(r.name, r.volume_id) for r in snapshots(env.store)] == [("s1", 1)]
    assert list(view.snapshots) == [1]
    assert env.lock.taken == 1


def test_snapshot_gone_from_zfs_is_deleted(env):
    vol = add_volume(env.store, env.pool_id, "v", guid="111")
    gone = add_snapshot(env.store, vol, "gone", guid="112")
    kept = add_snapshot(env.store, vol, "kept", guid="113")
    env.ds.trees["tank"].update({"tank/v": fs("111", **{PROP_VOL_ID: str(vol)}),
                                 "tank/v@kept": snap("113", **{PROP_SNAP_ID: str(kept)})})
    view = env.catalog.load()
    assert [r.id for r in snapshots(env.store)] == [kept]
    assert gone not in view.snapshots
    assert [r.id for r in volumes(env.store)] == [vol]


def test_in_flight_snapshot_rows_untouched(env):
    vol = add_volume(env.store, env.pool_id, "v", guid="111")
    creating = add_snapshot(env.store, vol, "new", state="creating", owner=DEAD_OWNER)
    deleting = add_snapshot(env.store, vol, "old", state="deleting", owner=DEAD_OWNER, guid="114")
    env.ds.trees["tank"].update({
        "tank/v": fs("111", **{PROP_VOL_ID: str(vol)}),
        "tank/v@new": snap("113", **{PROP_SNAP_ID: str(creating)}),
        # the deleting row's snapshot is already gone: still left for recovery
    })
    with writes(env.store) as written:
        view = env.catalog.load()
    assert [(r.id, r.state, r.guid) for r in snapshots(env.store)] == [
        (creating, "creating", None), (deleting, "deleting", "114")]
    assert written == [] and env.ds.sets == [] and env.lock.taken == 0
    assert view.snapshots == {}


# =============================================================================================
# file-backed LUNs
# =============================================================================================

def test_filebacked_lun_whose_parent_row_is_gone_is_deleted(env):
    parent = add_volume(env.store, env.pool_id, "fs", guid="111")
    env.ds.trees["tank"]["tank/fs"] = fs("111", **{PROP_VOL_ID: str(parent)})
    kept = add_volume(env.store, env.pool_id, "flun", volume_type="filebackedlun", parent_id=parent,
                      parent_path="img", serial="s1")
    orphan = add_volume(env.store, env.pool_id, "orphan", volume_type="filebackedlun", parent_id=999,
                        parent_path="img", serial="s2")
    no_parent = add_volume(env.store, env.pool_id, "noparent", volume_type="filebackedlun",
                           parent_path="img", serial="s3")
    view = env.catalog.load()
    assert [r.id for r in volumes(env.store)] == [parent, kept]
    assert orphan not in view.volumes and no_parent not in view.volumes
    assert view.volumes[kept].props is None
    assert env.lock.taken == 1


def test_filebacked_lun_goes_with_a_parent_destroyed_outside(env):
    parent = add_volume(env.store, env.pool_id, "fs", guid="111")  # dataset destroyed by hand
    flun = add_volume(env.store, env.pool_id, "flun", volume_type="filebackedlun", parent_id=parent,
                      parent_path="img", serial="s1")
    view = env.catalog.load()
    assert flun not in view.volumes
    assert volumes(env.store) == []


# =============================================================================================
# nothing changed: nothing written, no lock
# =============================================================================================

def test_load_without_changes_takes_no_lock_and_writes_nothing(env):
    vol = add_volume(env.store, env.pool_id, "v", guid="111")
    lun = add_volume(env.store, env.pool_id, "l", guid="222", volume_type="lun", serial="x")
    sid = add_snapshot(env.store, vol, "s1", guid="112")
    flun = add_volume(env.store, env.pool_id, "f", volume_type="filebackedlun", parent_id=vol,
                      parent_path="img", serial="y")
    env.ds.trees["tank"].update({
        "tank/v": fs("111", **{PROP_VOL_ID: str(vol)}),
        "tank/v@s1": snap("112", **{PROP_SNAP_ID: str(sid)}),
        "tank/l": zvol("222", **{PROP_VOL_ID: str(lun), PROP_SERIAL: "x"}),
    })
    with writes(env.store) as written:
        view = env.catalog.load()
    assert written == []
    assert env.lock.taken == 0
    assert env.ds.sets == []
    assert sorted(view.volumes) == sorted([vol, lun, flun])
    assert list(view.snapshots) == [sid]


def test_second_load_after_adoption_changes_nothing(env):
    env.ds.trees["tank"].update({"tank/v": fs("111"), "tank/v@s": snap("112"), "tank/l": zvol("113")})
    first = env.catalog.load()
    sets, taken = len(env.ds.sets), env.lock.taken
    assert sets == 3 and taken == 1  # vol ids of v and l, the serial of l (the snap id of s: stamp_missing)
    with writes(env.store) as written:
        second = env.catalog.load()
    assert written == [] and len(env.ds.sets) == sets and env.lock.taken == taken
    assert sorted(first.volumes) == sorted(second.volumes) == [1, 2]
    assert list(second.snapshots) == [1]


# =============================================================================================
# several pools, views
# =============================================================================================

def test_load_one_pool_gives_only_that_pool(env):
    other = env.pools.add("data", "901")
    env.ds.trees["data"] = {"data": fs("901"), "data/x": fs("300")}
    env.ds.trees["tank"]["tank/y"] = fs("400")
    view = env.catalog.load(pool_id=other)
    assert [(v.row.name, v.row.pool_id, v.pool_name) for v in view.volumes.values()] == [("x", other, "data")]
    view = env.catalog.load()
    assert sorted(v.dataset for v in view.volumes.values()) == ["data/x", "tank/y"]


def test_same_name_in_two_pools(env):
    other = env.pools.add("data", "901")
    env.ds.trees["data"] = {"data": fs("901"), "data/v": fs("300")}
    env.ds.trees["tank"]["tank/v"] = fs("400")
    view = env.catalog.load()
    assert sorted((v.row.pool_id, v.dataset) for v in view.volumes.values()) == [
        (env.pool_id, "tank/v"), (other, "data/v")]


def test_origin_snapshot_id_and_clones():
    pool = Pool(id=1, name="tank", pool_type="raid0")
    src = VolumeView(Volume(id=1, name="src", pool_id=1), pool, "tank", {"origin": "-"})
    other = VolumeView(Volume(id=2, name="other", pool_id=1), pool, "tank", {"origin": "-"})
    c1 = VolumeView(Volume(id=3, name="c1", pool_id=1), pool, "tank", {"origin": "tank/src@s1"})
    c2 = VolumeView(Volume(id=4, name="c2", pool_id=1), pool, "tank", {"origin": "tank/src@s2"})
    flun = VolumeView(Volume(id=5, name="f", pool_id=1), pool, "tank", None)
    s1 = SnapshotView(Snapshot(id=10, name="s1", volume_id=1), src, {}, ["tank/c1"])
    s2 = SnapshotView(Snapshot(id=11, name="s2", volume_id=1), src, {})
    s3 = SnapshotView(Snapshot(id=12, name="s1", volume_id=2), other, {})  # same name, other volume
    view = CatalogView({1: src, 2: other, 3: c1, 4: c2, 5: flun}, {10: s1, 11: s2, 12: s3})
    assert view.origin_snapshot_id(c1) == 10
    assert view.origin_snapshot_id(c2) == 11
    assert view.origin_snapshot_id(src) is None
    assert view.origin_snapshot_id(flun) is None
    assert s3.zfs_name == "tank/other@s1" and s1.zfs_name == "tank/src@s1"
    assert s1.clones == ["tank/c1"] and s2.clones == []
    assert SnapshotView(Snapshot(id=13), src, {}).clones is not s2.clones  # no shared default


def test_build_clones_per_snapshot(env):
    env.ds.trees["tank"].update({
        "tank/src": fs("111"),
        "tank/src@a": snap("112"),
        "tank/src@b": snap("113"),
        "tank/c1": fs("114", origin="tank/src@a"),
        "tank/c2": fs("115", origin="tank/src@a"),
        "tank/c1/deep": fs("116", origin="tank/src@b"),  # not a volume
    })
    view = env.catalog.load()
    by_name = {s.row.name: s for s in view.snapshots.values()}
    assert sorted(by_name["a"].clones) == ["tank/c1", "tank/c2"]
    assert by_name["b"].clones == []


@pytest.mark.parametrize("value, expected", [
    ("12", 12), (12, 12), ("0", 0), ("999999999999999999", 999999999999999999),
    ("²", None), ("١٢", None), ("1234567890123456789", None), ("-1", None), ("1.0", None), ("", None),
    (None, None), ("12 ", None),
])
def test_parse_id(value, expected):
    from vsnap.services.catalog import parse_id
    assert parse_id(value) == expected
