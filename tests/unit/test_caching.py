"""What the caching commit keeps, and what makes it let go: the storage generation token, the
command runner's and the store's notices of change, the Catalog kept between reads, the
listings memoised per view and their JSON per body, and the API's `Cache-Control: no-cache`.

Auth's single-flight check and stored-failure cache are in test_services_auth.py, the Samba
password memo in test_services_shares.py.

Real Store (SQLite), real Generation files, real StorageLock; ZFS is canned, and the runner
runs fake `zfs`/`zpool` scripts by absolute path (never the real ones). Threads are
made deterministic with Events: a read blocks until the test lets it go, and every wait is
bounded so a regression fails instead of hanging.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import marshmallow as ma
import pytest
from flask import Flask
from flask_smorest import Api as SmorestApi
from sqlalchemy import delete, insert, update

import vsnap.drivers.runner as runner_mod
from vsnap.api.common import Blueprint, DumpMemo, list_or_detail
from vsnap.drivers.runner import CommandError, CommandNotFound, CommandTimeout, Runner, changes_storage
from vsnap.drivers.zfs import ZfsDatasetOps, ZfsDriver
from vsnap.errors import AuthenticationError
from vsnap.services.catalog import (
    PROP_SNAP_ID,
    PROP_VOL_ID,
    USER_PROPS,
    Catalog,
    CatalogView,
    SnapshotView,
    VolumeView,
    fresh_reads,
)
from vsnap.services.snapshots import SnapshotService
from vsnap.services.volumes import VolumeService
from vsnap.store import generation as generation_mod
from vsnap.store.db import Store
from vsnap.store.generation import Generation
from vsnap.store.models import AuditEvent, AuthFailure, Base, Pool, Setting, Snapshot, Volume

from support import FakePools, SpyLock, empty_tables

WAIT = 10.0  # seconds any wait for another thread may take before the test fails


def wait_until(predicate, timeout: float = WAIT, what: str = "condition") -> None:
    """Polls `predicate` (bounded): threads are waited for, never slept on blindly."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


# =============================================================================================
# 1. Generation: the token every process reads through a shared memory map
# =============================================================================================

def test_generation_read_is_stable_until_a_bump(tmp_path):
    gen = Generation(tmp_path / "catalog.generation")
    first = gen.read()
    assert len(first) == generation_mod.SIZE
    assert gen.read() == first == gen.read()
    gen.bump()
    assert gen.read() != first


def test_generation_two_bumps_give_two_new_tokens(tmp_path):
    gen = Generation(tmp_path / "g")
    seen = [gen.read()]
    for _ in range(2):
        gen.bump()
        seen.append(gen.read())
    assert len(set(seen)) == 3


def test_generation_bump_is_seen_through_another_objects_existing_map(tmp_path):
    """Another object on the same file stands for another process: its map was made before
    the bump, and still shows it (the file is rewritten in place, never replaced)."""
    mine, theirs = Generation(tmp_path / "g"), Generation(tmp_path / "g")
    assert mine.read() == theirs.read()  # both mapped now
    theirs.bump()
    assert mine.read() == theirs.read()
    before = mine.read()
    mine.bump()
    assert theirs.read() == mine.read() != before


def test_generation_bump_from_another_process_is_seen(tmp_path):
    path = tmp_path / "g"
    gen = Generation(path)
    before = gen.read()
    code = "import sys; from vsnap.store.generation import Generation; Generation(sys.argv[1]).bump()"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    assert gen.read() != before


def test_generation_missing_file_and_directory_are_created(tmp_path):
    path = tmp_path / "state" / "deeper" / "catalog.generation"
    token = Generation(path).read()
    assert path.is_file() and path.stat().st_size == generation_mod.SIZE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == token
    int(token, 16)  # hex text, so a torn read is still a token


def test_generation_bump_creates_a_missing_file(tmp_path):
    path = tmp_path / "new" / "g"
    Generation(path).bump()
    assert path.stat().st_size == generation_mod.SIZE
    assert Generation(path).read() == path.read_bytes()


def test_generation_short_file_is_filled_before_it_is_mapped(tmp_path):
    path = tmp_path / "g"
    path.write_bytes(b"")  # e.g. created by another process that has not written yet
    token = Generation(path).read()
    assert len(token) == generation_mod.SIZE and token == path.read_bytes()


# =============================================================================================
# 2. changes_storage and the runner's notice of change
# =============================================================================================

@pytest.mark.parametrize("argv", [
    ["zfs", "get", "-Hp", "-r", "-o", "name,property,value", "all", "tank"],
    ["zfs", "list", "-H"],
    ["zfs", "send", "-i", "tank/v@a", "tank/v@b"],
    ["zpool", "list", "-H", "-o", "name"],
    ["zpool", "status", "-P"],
    ["zpool", "get", "size", "tank"],
    ["/sbin/zfs", "get", "guid", "tank/v"],
    ["/usr/sbin/zpool", "status"],
    ["zfs", "version"],
])
def test_reads_do_not_change_storage(argv):
    assert changes_storage(argv) is False


@pytest.mark.parametrize("argv", [
    ["zfs", "snapshot", "-o", f"{PROP_SNAP_ID}=4", "tank/v@s"],
    ["zfs", "set", "quota=1G", "tank/v"],
    ["zfs", "destroy", "-r", "tank/v"],
    ["zfs", "receive", "-F", "tank/v@s"],
    ["zfs", "rename", "tank/a", "tank/b"],
    ["zfs", "create", "tank/v"],
    ["zfs", "clone", "tank/v@s", "tank/c"],
    ["zfs", "inherit", "mountpoint", "tank/v"],
    ["zpool", "create", "tank", "/dev/sdb"],
    ["zpool", "destroy", "tank"],
    ["zpool", "import", "123", "tank"],
    ["zpool", "export", "tank"],
    ["/sbin/zfs", "destroy", "tank/v"],
    ["/usr/local/sbin/zpool", "export", "tank"],
])
def test_changes_change_storage(argv):
    assert changes_storage(argv) is True


@pytest.mark.parametrize("argv", [
    ["tgtadm", "--lld", "iscsi", "--op", "delete"],
    ["ssh", "partner", "zfs", "destroy", "tank/v"],  # the partner's storage, not ours
    ["true"], ["zdb", "-l", "/dev/sdb"], ["/usr/bin/zfsx", "destroy"], ["smbpasswd", "-a"], [],
])
def test_other_commands_are_not_storage_changes(argv):
    assert changes_storage(argv) is False


@pytest.fixture
def fake_bin(tmp_path):
    """Executables named zfs and zpool in a temporary directory, always run by absolute path
    (never the real ones): exit 1 when the last argument is FAIL, hang when it is HANG."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = ('#!/bin/sh\nfor a; do last="$a"; done\n'
              'case "$last" in FAIL) echo "refused" >&2; exit 1;; HANG) exec sleep 30;; esac\nexit 0\n')
    for name in ("zfs", "zpool"):
        path = bindir / name
        path.write_text(script)
        path.chmod(0o755)
    return SimpleNamespace(zfs=str(bindir / "zfs"), zpool=str(bindir / "zpool"))


@pytest.fixture
def noticed():
    """A runner whose notices of change are counted."""
    calls = []
    return SimpleNamespace(calls=calls, runner=Runner(timeout=20, on_storage_change=lambda: calls.append(1)))


def test_runner_tells_of_a_zfs_command_that_changes_storage(fake_bin, noticed):
    noticed.runner.run([fake_bin.zfs, "destroy", "tank/v"])
    assert noticed.calls == [1]
    noticed.runner.run([fake_bin.zpool, "export", "tank"])
    assert noticed.calls == [1, 1]


def test_runner_does_not_tell_of_reads(fake_bin, noticed):
    noticed.runner.run([fake_bin.zfs, "get", "guid", "tank/v"])
    noticed.runner.run([fake_bin.zpool, "status"])
    assert noticed.calls == []


def test_runner_changes_false_is_not_told(fake_bin, noticed):
    noticed.runner.run([fake_bin.zfs, "set", f"{PROP_SNAP_ID}=4", "tank/v@s"], changes=False)
    assert noticed.calls == []


def test_runner_tells_of_a_failed_change(fake_bin, noticed):
    """A failed command may still have changed something (a recursive destroy half done)."""
    with pytest.raises(CommandError):
        noticed.runner.run([fake_bin.zfs, "destroy", "FAIL"])
    assert noticed.calls == [1]
    result = noticed.runner.run([fake_bin.zfs, "destroy", "FAIL"], check=False)
    assert result.returncode == 1 and noticed.calls == [1, 1]


def test_runner_tells_of_a_timed_out_change_but_not_of_a_timed_out_quiet_one(fake_bin, noticed):
    with pytest.raises(CommandTimeout):
        noticed.runner.run([fake_bin.zfs, "destroy", "HANG"], timeout=0.3)
    assert noticed.calls == [1]
    with pytest.raises(CommandTimeout):
        noticed.runner.run([fake_bin.zfs, "set", "x=y", "HANG"], timeout=0.3, changes=False)
    assert noticed.calls == [1]


def test_runner_does_not_tell_of_other_commands_or_missing_ones(tmp_path, noticed):
    noticed.runner.run(["true"])
    with pytest.raises(CommandNotFound):
        noticed.runner.run([str(tmp_path / "nowhere" / "zfs"), "destroy", "tank/v"])  # never ran
    assert noticed.calls == []


def test_runner_without_a_listener(fake_bin):
    Runner(timeout=20).run([fake_bin.zfs, "destroy", "tank/v"])  # nothing to call: no error


class FakeSubprocess:
    """Stands in for the subprocess module inside the runner module: records argv, runs nothing
    (the real zfs is never reached from these tests)."""

    TimeoutExpired = subprocess.TimeoutExpired

    def __init__(self, returncode: int = 0, stdout: str = ""):
        self.returncode = returncode
        self.stdout = stdout
        self.argvs: list[list[str]] = []

    def run(self, argv, **kwargs):
        self.argvs.append(list(argv))
        self.kwargs = kwargs
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, "refused\n" if self.returncode else "")


@pytest.fixture
def quiet_zfs(monkeypatch, noticed):
    fake = FakeSubprocess()
    monkeypatch.setattr(runner_mod, "subprocess", fake)
    return SimpleNamespace(sub=fake, calls=noticed.calls, runner=noticed.runner,
                           ds=ZfsDatasetOps(noticed.runner, ZfsDriver(noticed.runner)))


def test_zfs_stamp_is_not_told_but_set_is(quiet_zfs):
    quiet_zfs.ds.stamp("tank/v@s", PROP_SNAP_ID, "4")
    assert quiet_zfs.sub.argvs == [["zfs", "set", f"{PROP_SNAP_ID}=4", "tank/v@s"]]
    assert quiet_zfs.calls == []
    quiet_zfs.ds.set("tank/v", "quota", "1024")
    assert quiet_zfs.calls == [1]


def test_zfs_snapshot_with_props_is_one_command_and_told(quiet_zfs):
    quiet_zfs.ds.snapshot("tank/v@s", {PROP_SNAP_ID: "7"})
    assert quiet_zfs.sub.argvs == [["zfs", "snapshot", "-o", f"{PROP_SNAP_ID}=7", "tank/v@s"]]
    quiet_zfs.ds.snapshot("tank/v@t")
    assert quiet_zfs.sub.argvs[-1] == ["zfs", "snapshot", "tank/v@t"]
    assert quiet_zfs.calls == [1, 1]


def test_zfs_receive_is_told_even_when_it_fails(quiet_zfs):
    """A receive runs through the runner with no timeout and the stream on stdin: it tells too."""
    quiet_zfs.ds.receive("tank/v@s", full=True, stdin=0)
    assert quiet_zfs.sub.argvs == [["zfs", "receive", "-F", "tank/v@s"]]
    assert quiet_zfs.sub.kwargs["stdin"] == 0 and quiet_zfs.sub.kwargs["timeout"] is None
    assert quiet_zfs.calls == [1]
    quiet_zfs.sub.returncode = 1
    with pytest.raises(CommandError):
        quiet_zfs.ds.receive("tank/v@t", full=False, stdin=0)
    assert quiet_zfs.calls == [1, 1]


def test_asking_the_zfs_version_changes_nothing(quiet_zfs):
    quiet_zfs.sub.stdout = "zfs-2.1.5-1\nzfs-kmod-2.1.5-1\n"
    assert ZfsDriver(quiet_zfs.runner).version() == "2.1.5-1"
    assert quiet_zfs.calls == []


# =============================================================================================
# 3. Store(on_catalog_change=): told after commits that change pool, volume or snapshot rows
# =============================================================================================

@pytest.fixture(scope="module")
def watched_store(tmp_path_factory):
    """A Store of its own (the shared one has no listener), on tmpfs when there is one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        where = Path(tempfile.mkdtemp(prefix="vsnap-unit-", dir=shm))
    else:
        where = tmp_path_factory.mktemp("watched")
    calls: list[int] = []
    store = Store(f"sqlite:///{where / 'vsnap.db'}", on_catalog_change=lambda: calls.append(1))
    Base.metadata.create_all(store.engine)
    try:
        yield SimpleNamespace(store=store, calls=calls)
    finally:
        store.engine.dispose()
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def watched(watched_store):
    empty_tables(watched_store.store)  # through the engine, not a session: not a notice
    watched_store.calls.clear()
    return watched_store


def _pool(s, name="tank") -> Pool:
    row = Pool(name=name, guid=f"g-{name}", pool_type="raid0", state="ready")
    s.add(row)
    s.flush()
    return row


def _seed(watched) -> tuple[int, int, int]:
    """A pool, a volume and a snapshot; the notices their inserts made are forgotten."""
    with watched.store.session() as s:
        pool = _pool(s)
        vol = Volume(pool_id=pool.id, name="v", volume_type="filesystem", state="ready")
        s.add(vol)
        s.flush()
        snap = Snapshot(volume_id=vol.id, name="s", state="ready")
        s.add(snap)
        s.flush()
        ids = pool.id, vol.id, snap.id
    watched.calls.clear()
    return ids


def test_store_tells_after_the_commit_of_an_insert_not_before(watched):
    with watched.store.session() as s:
        _pool(s)
        assert watched.calls == []  # flushed, not committed: readers must not read yet
    assert watched.calls == [1]


@pytest.mark.parametrize("change", ["pool", "volume", "snapshot"])
def test_store_tells_once_after_an_update(watched, change):
    pool_id, vol_id, snap_id = _seed(watched)
    with watched.store.session() as s:
        row = {"pool": lambda: s.get(Pool, pool_id), "volume": lambda: s.get(Volume, vol_id),
               "snapshot": lambda: s.get(Snapshot, snap_id)}[change]()
        row.name = "renamed"
    assert watched.calls == [1]


def test_store_tells_once_after_a_delete(watched):
    _, _, snap_id = _seed(watched)
    with watched.store.session() as s:
        s.delete(s.get(Snapshot, snap_id))
    assert watched.calls == [1]


def test_store_tells_once_per_commit_however_many_rows(watched):
    pool_id, vol_id, _ = _seed(watched)
    with watched.store.session() as s:
        s.get(Pool, pool_id).state = "renaming"
        s.get(Volume, vol_id).name = "w"
        s.add(Snapshot(volume_id=vol_id, name="t", state="ready"))
        s.flush()
        s.add(Snapshot(volume_id=vol_id, name="u", state="ready"))
    assert watched.calls == [1]


@pytest.mark.parametrize("bulk", ["query_update", "query_delete", "update_stmt", "delete_stmt"])
def test_store_tells_after_bulk_statements_that_bypass_the_flush(watched, bulk):
    _, vol_id, _ = _seed(watched)
    with watched.store.session() as s:
        if bulk == "query_update":
            s.query(Volume).filter(Volume.id == vol_id).update({"name": "w"})
        elif bulk == "query_delete":
            s.query(Snapshot).filter(Snapshot.volume_id == vol_id).delete()
        elif bulk == "update_stmt":
            s.execute(update(Pool).values(state="ready"))
        else:
            s.execute(delete(Snapshot).where(Snapshot.volume_id == vol_id))
    assert watched.calls == [1]


def test_store_tells_after_an_insert_statement(watched):
    with watched.store.session() as s:
        s.execute(insert(Pool).values(name="bulk", pool_type="raid0", state="ready"))
    assert watched.calls == [1]


def test_store_does_not_tell_of_other_tables(watched):
    with watched.store.session() as s:
        s.add(AuthFailure(address="192.0.2.1", at=1.0))
        s.add(AuditEvent(time=1.0, method="POST", path="/api/x", status=200))
        s.merge(Setting(key="init_status", value="Ready"))
    with watched.store.session() as s:
        s.query(AuthFailure).filter(AuthFailure.at <= 5).delete()
        s.get(Setting, "init_status").value = "Busy"
    assert watched.calls == []


def test_store_does_not_tell_of_reads(watched):
    _seed(watched)
    with watched.store.session() as s:
        assert s.query(Volume).count() == 1 and s.get(Pool, 1) is not None
    assert watched.calls == []


def test_store_does_not_tell_after_a_rollback(watched):
    with pytest.raises(RuntimeError):
        with watched.store.session() as s:
            _pool(s)  # flushed: marked as a change
            raise RuntimeError("the unit of work failed")
    assert watched.calls == []
    with watched.store.session() as s:
        assert s.query(Pool).count() == 0
        s.add(AuthFailure(address="192.0.2.1", at=1.0))
    assert watched.calls == []


def test_store_forgets_a_rolled_back_change_within_one_session(watched):
    """The same session, rolled back and then used again for another table: the mark of the
    rolled-back flush must not make that commit a notice."""
    s = watched.store._factory()
    try:
        _pool(s)
        s.rollback()
        s.add(AuthFailure(address="192.0.2.1", at=1.0))
        s.commit()
    finally:
        s.close()
    assert watched.calls == []


def test_store_with_a_generation_changes_the_token_on_catalog_commits(tmp_path):
    gen = Generation(tmp_path / "g")
    store = Store(f"sqlite:///{tmp_path / 'vsnap.db'}", on_catalog_change=gen.bump)
    try:
        Base.metadata.create_all(store.engine)
        before = gen.read()
        with store.session() as s:
            s.add(AuthFailure(address="192.0.2.1", at=1.0))
        assert gen.read() == before
        with store.session() as s:
            _pool(s)
        assert gen.read() != before
    finally:
        store.engine.dispose()


# =============================================================================================
# 4. Catalog kept between reads
# =============================================================================================

def test_settings_for_the_kept_catalog(tmp_path):
    from vsnap.config import Settings

    default = Settings.from_env({"VSNAP_STATE": str(tmp_path)})
    assert default.catalog_max_age == 2.0
    assert default.catalog_generation_file == tmp_path / "catalog.generation"
    assert Settings.from_env({"VSNAP_STATE": str(tmp_path), "VSNAP_CATALOG_MAX_AGE": "0"}).catalog_max_age == 0


def fs(guid, **props):
    return {"type": "filesystem", "guid": guid, "origin": "-", "used": "1024", "referenced": "1024",
            "available": "1000000", "quota": "0", "creation": "1700000000", "mountpoint": "/vsnap/x",
            **props}


def snap(guid, **props):
    return {"type": "snapshot", "guid": guid, "used": "0", "creation": "1700000100", **props}


class CountingDs:
    """Dataset ops over canned trees, counting full reads (tree calls). A read can be made to
    wait on `gate`, to raise `fail`, to take `cost` seconds of the fake clock, or to run
    `during_read` (another process changing storage meanwhile)."""

    def __init__(self, clock):
        self.clock = clock
        self.trees: dict[str, dict[str, dict[str, str]]] = {}
        self.reads = 0
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.fail: Exception | None = None
        self.cost = 0.0
        self.during_read = None
        self.sets: list[tuple] = []
        self.stamps: list[tuple] = []
        self.stamp_under_lock: list[bool] = []
        self.stamp_fails: dict[str, Exception] = {}
        self.lock = None
        self._count = threading.Lock()

    def tree(self, root, user_props, snapshot_props=None):
        assert user_props == USER_PROPS
        with self._count:
            self.reads += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never let the read go"
        if self.during_read is not None:
            self.during_read()
        if self.fail is not None:
            raise self.fail
        self.clock.advance(self.cost)
        tree = copy.deepcopy(self.trees.get(root, {}))
        for props in tree.values():
            for prop in user_props:
                props.setdefault(prop, "-")
        return tree

    def set(self, name, prop, value):
        self.sets.append((name, prop, value))
        self.trees[name.split("/")[0]][name][prop] = value

    def stamp(self, name, prop, value):
        self.stamps.append((name, prop, value))
        self.stamp_under_lock.append(bool(self.lock and self.lock._depth))
        if name in self.stamp_fails:
            raise self.stamp_fails[name]
        self.trees[name.split("/")[0]][name][prop] = value


class CountingGeneration(Generation):
    """A real token file, with its bumps counted (and how many stamps were done at each)."""

    def __init__(self, path, ds=None):
        super().__init__(path)
        self.ds = ds
        self.bumps: list[int] = []

    def bump(self):
        self.bumps.append(len(self.ds.stamps) if self.ds else 0)
        super().bump()


def _add_row(store, model, **fields) -> int:
    with store.session() as s:
        row = model(**fields)
        s.add(row)
        s.flush()
        return row.id


def refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vsnap-catalog"]


def join_refreshes() -> None:
    for thread in refresh_threads():
        thread.join(WAIT)
        assert not thread.is_alive(), "the background read never ended"


@pytest.fixture
def cat(workdir, store, clock):
    """A Catalog over one pool holding one stamped volume and snapshot (so a read reconciles
    nothing and takes exactly one tree call), kept by a generation in a temp file."""
    empty_tables(store)
    tmp = Path(tempfile.mkdtemp(dir=workdir))
    ds = CountingDs(clock)
    pools = FakePools(store)
    lock = SpyLock(tmp / "storage.lock")
    ds.lock = lock
    pool_id = pools.add("tank", "900")
    vol = _add_row(store, Volume, pool_id=pool_id, name="v", volume_type="filesystem", state="ready", guid="111")
    sid = _add_row(store, Snapshot, volume_id=vol, name="s1", state="ready", guid="112")
    ds.trees["tank"] = {"tank": fs("900"), "tank/v": fs("111", **{PROP_VOL_ID: str(vol)}),
                        "tank/v@s1": snap("112", **{PROP_SNAP_ID: str(sid)})}
    gen = CountingGeneration(tmp / "catalog.generation", ds)
    catalog = Catalog(store, ds, pools, lock, generation=gen, max_age=2.0, clock=clock)
    env = SimpleNamespace(store=store, ds=ds, pools=pools, lock=lock, pool_id=pool_id, vol=vol, sid=sid,
                          gen=gen, catalog=catalog, clock=clock, tmp=tmp)
    yield env
    if ds.gate is not None:
        ds.gate.set()
    join_refreshes()
    empty_tables(store)


def test_second_load_with_nothing_changed_reads_nothing(cat):
    first = cat.catalog.load()
    assert cat.ds.reads == 1 and list(first.volumes) == [cat.vol] and list(first.snapshots) == [cat.sid]
    cat.clock.advance(1.0)
    assert cat.catalog.load() is first
    assert cat.ds.reads == 1


def test_a_bump_makes_the_next_load_read_again(cat):
    first = cat.catalog.load()
    cat.ds.trees["tank"]["tank/v"]["used"] = "4096"  # changed through the appliance...
    cat.gen.bump()  # ...which says so
    second = cat.catalog.load()
    assert cat.ds.reads == 2 and second is not first
    assert second.volumes[cat.vol].props["used"] == "4096"
    assert cat.catalog.load() is second and cat.ds.reads == 2


def test_a_bump_by_another_process_makes_the_next_load_read_again(cat):
    cat.catalog.load()
    Generation(cat.gen.path).bump()  # another process's object on the same file
    cat.catalog.load()
    assert cat.ds.reads == 2


def test_a_change_during_a_read_is_not_kept_as_current(cat):
    """The token is taken before reading: a change that lands while ZFS is read makes the
    view stale at once, and the next load reads again."""
    cat.ds.during_read = lambda: (setattr(cat.ds, "during_read", None), Generation(cat.gen.path).bump())
    cat.catalog.load()
    cat.catalog.load()
    assert cat.ds.reads == 2


def test_load_of_one_pool_comes_from_the_kept_view(cat):
    full = cat.catalog.load()
    mine = cat.catalog.load(pool_id=cat.pool_id)
    assert cat.ds.reads == 1
    assert list(mine.volumes) == [cat.vol] and mine.volumes[cat.vol] is full.volumes[cat.vol]
    assert cat.catalog.load(pool_id=cat.pool_id + 1).volumes == {}


# The fake clock moves between two loads, as a real one always does: a fresh load accepts a
# read that started no earlier than it asked.

def test_fresh_load_reads_again_and_is_then_kept(cat):
    first = cat.catalog.load()
    cat.clock.advance(0.01)
    fresh = cat.catalog.load(fresh=True)
    assert cat.ds.reads == 2 and fresh is not first
    assert cat.catalog.load() is fresh and cat.ds.reads == 2


def test_fresh_reads_contextvar_forces_a_read(cat):
    cat.catalog.load()
    cat.clock.advance(0.01)
    token = fresh_reads.set(True)
    try:
        cat.catalog.load()
        cat.clock.advance(0.01)
        cat.catalog.load()
    finally:
        fresh_reads.reset(token)
    assert cat.ds.reads == 3
    cat.catalog.load()
    assert cat.ds.reads == 3


def test_an_expired_view_is_served_at_once_and_replaced_in_the_background(cat):
    old = cat.catalog.load()
    cat.clock.advance(1.9)
    assert cat.catalog.load() is old and refresh_threads() == []  # not expired yet
    cat.clock.advance(0.2)  # 2.1 s: past max_age
    cat.ds.entered.clear()
    cat.ds.gate = threading.Event()  # the background read waits here...
    assert cat.catalog.load() is old  # ...so this load cannot have waited for it
    assert cat.ds.entered.wait(WAIT)
    for _ in range(3):  # while it runs, loads are still served, and no second read starts
        assert cat.catalog.load() is old
    assert cat.ds.reads == 2
    cat.ds.gate.set()
    join_refreshes()
    new = cat.catalog.load()
    assert new is not old and cat.ds.reads == 2
    assert cat.catalog.load() is new


def test_expired_view_is_refreshed_with_a_bounded_poll(cat):
    """The same, seen only from outside: loads keep answering until the new view shows up."""
    old = cat.catalog.load()
    cat.ds.trees["tank"]["tank/v"]["used"] = "8192"  # changed outside the appliance: no bump
    cat.clock.advance(2.5)
    wait_until(lambda: cat.catalog.load().volumes[cat.vol].props["used"] == "8192", what="the new view")
    assert cat.ds.reads == 2 and cat.catalog.load() is not old


@pytest.mark.parametrize("max_age", [0, -1])
def test_max_age_zero_or_less_reads_every_time(cat, max_age):
    cat.catalog.max_age = max_age
    views = [cat.catalog.load() for _ in range(3)]
    assert cat.ds.reads == 3 and len({id(v) for v in views}) == 3


def test_without_a_generation_every_load_reads(cat):
    catalog = Catalog(cat.store, cat.ds, cat.pools, cat.lock, clock=cat.clock)
    for _ in range(3):
        catalog.load()
    assert cat.ds.reads == 3


def test_lifetime_stretches_to_ten_times_the_last_reads_cost(cat):
    cat.ds.cost = 0.5  # each read takes 0.5 s of the fake clock: kept 5 s, not max_age's 2
    old = cat.catalog.load()
    cat.clock.advance(4.0)  # 4.5 s since the read began
    assert cat.catalog.load() is old
    join_refreshes()
    assert cat.ds.reads == 1  # no background read started
    cat.clock.advance(1.0)  # 5.5 s
    assert cat.catalog.load() is old
    join_refreshes()
    assert cat.ds.reads == 2 and cat.catalog.load() is not old


def test_a_failed_background_read_is_logged_and_later_loads_still_work(cat, caplog):
    old = cat.catalog.load()
    cat.clock.advance(2.5)
    cat.ds.fail = CommandError(["zfs", "get"], 1, "", "pool I/O is currently suspended")
    with caplog.at_level(logging.ERROR, logger="vsnap.services.catalog"):
        assert cat.catalog.load() is old
        join_refreshes()
    [record] = [r for r in caplog.records if "background read failed" in r.getMessage()]
    assert record.exc_info and isinstance(record.exc_info[1], CommandError)
    assert cat.ds.reads == 2
    cat.ds.fail = None
    assert cat.catalog.load() is old  # still expired: another background read starts
    join_refreshes()
    assert cat.ds.reads == 3
    new = cat.catalog.load()
    assert new is not old and cat.ds.reads == 3


class WatchedLock:
    """Wraps a lock, counting the threads waiting to take it (so a test knows every thread
    has queued before it lets the first one's read finish)."""

    def __init__(self, lock):
        self._lock = lock
        self.waiting = 0
        self._count = threading.Lock()

    def __enter__(self):
        with self._count:
            self.waiting += 1
        self._lock.acquire()
        with self._count:
            self.waiting -= 1
        return self

    def __exit__(self, *exc):
        self._lock.release()


def test_concurrent_loads_after_a_bump_do_one_read(cat):
    before = cat.catalog.load()
    cat.gen.bump()
    cat.ds.gate = threading.Event()
    cat.ds.entered.clear()
    watched = cat.catalog._reading = WatchedLock(cat.catalog._reading)
    n = 8
    results, errors = [], []

    def load():
        try:
            results.append(cat.catalog.load())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(n)]
    for t in threads:
        t.start()
    assert cat.ds.entered.wait(WAIT)
    # Every other thread queues behind the one reading (a second read would show at once).
    wait_until(lambda: watched.waiting == n - 1 or cat.ds.reads > 2, what="the other loads to queue")
    assert cat.ds.reads == 2
    cat.ds.gate.set()
    for t in threads:
        t.join(WAIT)
    assert errors == [] and len(results) == n
    assert cat.ds.reads == 2
    assert len({id(v) for v in results}) == 1 and results[0] is not before


def test_a_refresh_that_could_not_start_does_not_stop_later_ones(cat, monkeypatch):
    old = cat.catalog.load()
    cat.clock.advance(2.5)
    real_start = threading.Thread.start

    def refuse(self):
        if self.name == "vsnap-catalog":
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    try:
        cat.catalog.load()
    except RuntimeError:
        pass
    monkeypatch.setattr(threading.Thread, "start", real_start)
    cat.ds.trees["tank"]["tank/v"]["used"] = "8192"
    wait_until(lambda: cat.catalog.load() is not old, timeout=1.0, what="a background read")


# =============================================================================================
# 5. CatalogView.memo, and the listings it keeps
# =============================================================================================

def _view() -> CatalogView:
    p1, p2 = Pool(id=1, name="tank", pool_type="raid0"), Pool(id=2, name="data", pool_type="raid0")
    v1 = VolumeView(Volume(id=1, name="a", pool_id=1), p1, "tank", {"origin": "-"})
    v2 = VolumeView(Volume(id=2, name="b", pool_id=2), p2, "data", {"origin": "-"})
    s1 = SnapshotView(Snapshot(id=10, name="s", volume_id=1), v1, {PROP_SNAP_ID: "10"})
    s2 = SnapshotView(Snapshot(id=11, name="t", volume_id=2), v2, {PROP_SNAP_ID: "-"})
    s3 = SnapshotView(Snapshot(id=12, name="u", volume_id=2), v2, {PROP_SNAP_ID: "99"})
    return CatalogView({1: v1, 2: v2}, {10: s1, 11: s2, 12: s3})


def test_memo_builds_once_per_key_and_hands_out_the_same_object():
    view = _view()
    built = []

    def build(tag):
        built.append(tag)
        return [tag]

    first = view.memo(("volumes", None), lambda: build("all"))
    assert view.memo(("volumes", None), lambda: build("again")) is first
    other = view.memo(("volumes", "lun"), lambda: build("lun"))
    assert other == ["lun"] and other is not first
    assert built == ["all", "lun"]


def test_memo_keeps_at_most_memo_size_entries():
    view = _view()
    built = []
    for i in range(CatalogView.MEMO_SIZE + 1):
        view.memo(i, lambda i=i: built.append(i) or i)
    assert len(view._memo) == CatalogView.MEMO_SIZE
    assert view.memo(CatalogView.MEMO_SIZE, lambda: built.append("again")) == CatalogView.MEMO_SIZE
    view.memo(0, lambda: built.append("rebuilt") or 0)  # the oldest went first
    assert built == list(range(CatalogView.MEMO_SIZE + 1)) + ["rebuilt"]


def test_memo_keeps_nothing_when_the_build_fails():
    view = _view()
    with pytest.raises(ZeroDivisionError):
        view.memo("k", lambda: 1 / 0)
    assert view.memo("k", lambda: "ok") == "ok"


def test_views_of_pools_have_their_own_memo():
    view = _view()
    view.memo("k", lambda: "whole")
    pool_view = view.of_pool(2)
    assert list(pool_view.volumes) == [2] and sorted(pool_view.snapshots) == [11, 12]
    assert pool_view.memo("k", lambda: "pool 2") == "pool 2"


def test_unstamped_lists_snapshots_without_their_own_id():
    assert sorted(_view().unstamped()) == [("data/b@t", 11), ("data/b@u", 12)]


@pytest.fixture
def listing(cat):
    """Volume and snapshot services over the kept catalog."""
    vol2 = _add_row(cat.store, Volume, pool_id=cat.pool_id, name="w", volume_type="filesystem", state="ready",
                    guid="211")
    cat.ds.trees["tank"]["tank/w"] = fs("211", **{PROP_VOL_ID: str(vol2)})
    volumes = VolumeService(cat.store, cat.ds, None, cat.catalog, cat.pools, cat.lock)
    snapshots = SnapshotService(cat.store, cat.ds, cat.catalog, volumes, cat.lock)
    return SimpleNamespace(cat=cat, volumes=volumes, snapshots=snapshots, vol2=vol2)


def test_volume_list_is_the_same_object_while_the_view_is_kept(listing):
    first = listing.volumes.list()
    assert [v["id"] for v in first] == [str(listing.cat.vol), str(listing.vol2)]
    assert listing.volumes.list() is first
    assert listing.volumes.list(pool_id=str(listing.cat.pool_id)) == first  # another key: built apart
    assert listing.volumes.list(volume_type="lun") == []
    assert listing.cat.ds.reads == 1
    listing.cat.gen.bump()
    again = listing.volumes.list()
    assert again == first and again is not first


def test_snapshot_list_is_the_same_object_while_the_view_is_kept(listing):
    first = listing.snapshots.list()
    assert [s["id"] for s in first] == [str(listing.cat.sid)]
    assert listing.snapshots.list() is first
    mine = listing.snapshots.list(parent_id=str(listing.cat.vol))
    assert mine == first and listing.snapshots.list(parent_id=str(listing.cat.vol)) is mine
    assert listing.snapshots.list(parent_id=str(listing.vol2)) == []
    listing.cat.gen.bump()
    assert listing.snapshots.list() is not first


def test_listings_without_a_kept_catalog_are_built_each_time(listing):
    listing.cat.catalog.generation = None
    assert listing.volumes.list() is not listing.volumes.list()


def test_snapshot_list_of_a_volume_id_with_a_leading_zero(listing):
    assert listing.snapshots.list(parent_id="0" + str(listing.cat.vol)) == listing.snapshots.list()


# =============================================================================================
# 6. stamp_missing: snapshots picked up from outside get their ids, quietly
# =============================================================================================

@pytest.fixture
def unstamped(cat):
    """Five snapshots with rows but no id stamped in ZFS (as after an outside `zfs snapshot`)."""
    names = []
    for i in range(5):
        name = f"hand{i}"
        _add_row(cat.store, Snapshot, volume_id=cat.vol, name=name, state="ready", guid=f"3{i}")
        cat.ds.trees["tank"][f"tank/v@{name}"] = snap(f"3{i}")
        names.append(f"tank/v@{name}")
    cat.order = [name for name, _ in cat.catalog.load().unstamped()]  # the order they are stamped in
    cat.ids = dict(cat.catalog.load().unstamped())
    assert sorted(cat.ids) == names
    cat.lock.taken = 0
    return cat


def test_stamp_missing_stamps_each_once_without_telling_readers(unstamped):
    cat = unstamped
    kept = cat.catalog.load()
    assert cat.catalog.stamp_missing() == 5
    assert sorted(cat.ds.stamps) == sorted((n, PROP_SNAP_ID, str(i)) for n, i in cat.ids.items())
    assert cat.ds.sets == []  # the quiet set
    assert cat.gen.bumps == []  # kept reads stay good: a stamp changes nothing a client sees
    assert cat.catalog.load() is kept
    assert cat.ds.stamp_under_lock == [True] * 5 and cat.lock.taken == 5  # the lock per stamp
    assert cat.catalog.stamp_missing() == 0 and len(cat.ds.stamps) == 5  # the kept view is stale: remembered
    cat.gen.bump()  # any later change: the next read shows the stamps, and the memory lets go
    assert cat.catalog.load().unstamped() == []
    assert cat.catalog.stamp_missing() == 0 and cat.catalog._stamped == set()


def test_stamp_missing_goes_on_past_a_snapshot_it_cannot_stamp(unstamped, caplog):
    cat = unstamped
    gone = cat.order[1]
    cat.ds.stamp_fails[gone] = CommandError(["zfs", "set"], 1, "", "dataset does not exist")
    with caplog.at_level(logging.WARNING, logger="vsnap.services.catalog"):
        assert cat.catalog.stamp_missing() == 4
    assert len(cat.ds.stamps) == 5
    assert any(gone in r.getMessage() for r in caplog.records)
    del cat.ds.stamp_fails[gone]
    assert cat.catalog.stamp_missing() == 1  # tried again on the next pass, and only that one


def test_stamp_missing_stopped_by_a_stuck_zfs_keeps_what_it_did(unstamped):
    cat = unstamped
    third = cat.order[2]
    cat.ds.stamp_fails[third] = CommandTimeout(["zfs", "set"], 120)
    with pytest.raises(CommandTimeout):
        cat.catalog.stamp_missing()
    assert len(cat.ds.stamps) == 3
    del cat.ds.stamp_fails[third]
    assert cat.catalog.stamp_missing() == 3 and len(cat.ds.stamps) == 6  # the rest, not the first two again


def test_stamp_missing_with_nothing_to_do(cat):
    assert cat.catalog.stamp_missing() == 0
    assert cat.ds.stamps == [] and cat.gen.bumps == [] and cat.lock.taken == 0


# =============================================================================================
# 7. DumpMemo and list_or_detail: a listing's JSON made once per body
# =============================================================================================

def test_dump_memo_same_list_object_is_not_dumped_again():
    memo, dumps = DumpMemo(), []
    items = [{"id": "1"}]

    def dump(text):
        return lambda: dumps.append(text) or text

    assert memo.get({"items": items, "total": 1}, dump(b"first")) == b"first"
    assert memo.get({"items": items, "total": 1}, dump(b"second")) == b"first"  # a new dict, same list
    assert dumps == [b"first"]


@pytest.mark.parametrize("body", [
    lambda items: {"items": [{"id": "1"}], "total": 1},  # an equal list, but another object
    lambda items: {"items": items, "total": 2},  # a scalar changed
    lambda items: {"items": items},  # a key fewer
    lambda items: {"items": items, "total": 1, "more": None},  # a key more
])
def test_dump_memo_dumps_again_for_another_body(body):
    memo, dumps = DumpMemo(), []
    items = [{"id": "1"}]
    memo.get({"items": items, "total": 1}, lambda: dumps.append(1) or b"first")
    assert memo.get(body(items), lambda: dumps.append(2) or b"second") == b"second"
    assert dumps == [1, 2]


def test_dump_memo_keeps_the_last_size_bodies():
    memo = DumpMemo()
    lists = [[i] for i in range(DumpMemo.SIZE + 1)]
    for i, items in enumerate(lists):
        memo.get({"items": items}, lambda i=i: b"%d" % i)
    assert len(memo._kept) == DumpMemo.SIZE
    assert memo.get({"items": lists[-1]}, lambda: b"dumped again") == b"%d" % DumpMemo.SIZE
    assert memo.get({"items": lists[1]}, lambda: b"dumped again") == b"1"
    assert memo.get({"items": lists[0]}, lambda: b"dumped again") == b"dumped again"  # the oldest went


class ItemSchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()


class ItemListSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(ItemSchema))
    total = ma.fields.Integer()


class ItemDetailSchema(ItemSchema):
    size = ma.fields.Integer()


@pytest.fixture
def items_app():
    """A tiny app with one list_or_detail endpoint whose data the test swaps."""
    state = SimpleNamespace(items=[], detail={}, calls=0)
    blp = Blueprint("items", __name__, url_prefix="/items")

    @blp.route("")
    @list_or_detail(blp, ItemListSchema, ItemDetailSchema)
    def list_items():
        state.calls += 1
        if state.detail:
            return "detail", state.detail
        return "list", {"items": state.items, "total": len(state.items)}

    app = Flask("items")
    app.config.update(API_TITLE="t", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    SmorestApi(app).register_blueprint(blp)
    return SimpleNamespace(client=app.test_client(), state=state)


def test_list_or_detail_serves_the_schema_dump_and_keeps_it_for_the_same_list(items_app):
    state = items_app.state
    state.items = [{"id": "1", "name": "a", "secret": "x"}, {"id": "2", "name": "b", "secret": "y"}]
    body = {"items": state.items, "total": 2}
    first = items_app.client.get("/items")
    assert first.status_code == 200 and first.mimetype == "application/json"
    assert first.get_json() == ItemListSchema().dump(body)  # "secret" is not in the schema
    state.items[0]["name"] = "changed in place"  # the same list object: the kept text is served
    again = items_app.client.get("/items")
    assert again.get_data() == first.get_data() and state.calls == 2
    state.items = [dict(i) for i in state.items]  # a new list (a new view): dumped again
    assert items_app.client.get("/items").get_json()["items"][0]["name"] == "changed in place"


def test_list_or_detail_dumps_details_every_time(items_app):
    state = items_app.state
    state.detail = {"id": "1", "name": "a", "size": 5, "secret": "x"}
    assert items_app.client.get("/items").get_json() == {"id": "1", "name": "a", "size": 5}
    state.detail["size"] = 6
    assert items_app.client.get("/items").get_json()["size"] == 6


# =============================================================================================
# 8. The API: Cache-Control / Pragma no-cache asks for fresh reads, for that request only
# =============================================================================================

class FakeAuth:
    def __init__(self):
        self.refuse = False

    def authenticate(self, user, password, address):
        if self.refuse:
            raise AuthenticationError("Invalid username or password")
        return "admin"


class SpyVolumes:
    """The volume service as the API sees it: records whether the request asked for fresh reads."""

    def __init__(self):
        self.fresh: list[bool] = []
        self.listing = [{"id": "1", "name": "v", "volume_type": "filesystem", "is_clone": False,
                         "pool_id": "1", "size_total": None, "size_free": "100", "size_used": "10",
                         "time_created": "1700000000", "time_updated": "1700000000", "serial": "not listed"}]

    def list(self, *, volume_type=None, pool_id=None):
        self.fresh.append(fresh_reads.get())
        return self.listing


@pytest.fixture(scope="module")
def vsnap_app():
    from vsnap.api import init_api

    app = Flask("caching-api")
    init_api(app)
    services = SimpleNamespace(auth=FakeAuth(), volumes=SpyVolumes(), audit=None)
    app.extensions["vsnap"] = services
    return SimpleNamespace(client=app.test_client(), services=services)


@pytest.fixture
def api(vsnap_app):
    vsnap_app.services.auth.refuse = False
    vsnap_app.services.volumes.fresh.clear()
    outer = fresh_reads.set(False)  # a leak from a request would show as True below
    yield vsnap_app
    fresh_reads.reset(outer)


@pytest.mark.parametrize("headers, fresh", [
    ({}, False),
    ({"Cache-Control": "no-cache"}, True),
    ({"Pragma": "no-cache"}, True),
    ({"Cache-Control": "max-age=0, No-Cache"}, True),
    ({"Cache-Control": "max-age=0"}, False),
])
def test_no_cache_sets_fresh_reads_for_the_request_only(api, headers, fresh):
    response = api.client.get("/api/volume", headers=headers)
    assert response.status_code == 200
    assert api.services.volumes.fresh == [fresh]
    assert fresh_reads.get() is False  # reset when the request ended
    api.client.get("/api/volume")
    assert api.services.volumes.fresh == [fresh, False]  # the next request is not fresh


def test_fresh_reads_reset_after_a_refused_request(api):
    api.services.auth.refuse = True
    assert api.client.get("/api/volume", headers={"Cache-Control": "no-cache"}).status_code == 401
    assert fresh_reads.get() is False and api.services.volumes.fresh == []


def test_volume_listing_is_the_schema_dump_and_kept_for_the_same_list(api):
    from vsnap.api.volume import VolumeListSchema

    listing = api.services.volumes.listing
    first = api.client.get("/api/volume")
    assert first.get_json() == VolumeListSchema().dump({"volumes": listing, "total": 1})
    assert "serial" not in first.get_json()["volumes"][0]  # the summary schema only
    listing[0]["name"] = "renamed in place"  # the service handed out the same list: kept text
    assert api.client.get("/api/volume").get_data() == first.get_data()
    api.services.volumes.listing = [dict(listing[0])]  # a new view's list: dumped again
    try:
        assert api.client.get("/api/volume").get_json()["volumes"][0]["name"] == "renamed in place"
    finally:
        api.services.volumes.listing = listing


# =============================================================================================
# lock order: a kept read never waits for the storage lock
# =============================================================================================

def test_a_read_needing_to_settle_never_waits_for_the_storage_lock_holder(cat):
    """The worker's target check holds the storage lock and loads the catalog while another
    thread's read (holding the read lock) finds an outside change to settle, which takes the
    storage lock: each waited for the other, for ever (seen in the suite). The reading thread
    now lets go of the read lock and reads again taking the storage lock first."""
    cat.ds.trees["tank"]["tank/outside"] = fs("300")  # made outside: needs settling (adoption)
    cat.ds.gate = threading.Event()
    reader_view = {}
    reader = threading.Thread(target=lambda: reader_view.update(v=cat.catalog.load()))
    reader.start()
    assert cat.ds.entered.wait(WAIT)  # the reader holds the read lock, inside its first tree call
    holder_view = {}

    def hold_and_load():
        with cat.lock.held():
            cat.ds.gate.set()  # let the reader go on, while this thread holds the storage lock
            holder_view["v"] = cat.catalog.load()

    holder = threading.Thread(target=hold_and_load)
    holder.start()
    reader.join(WAIT)
    holder.join(WAIT)
    assert not reader.is_alive() and not holder.is_alive(), "deadlock: storage lock against read lock"
    # Both settled: the holder under its lock; the reader let go of the read lock, then took
    # the storage lock first and read again.
    assert "outside" in {v.row.name for v in reader_view["v"].volumes.values()}
    assert "outside" in {v.row.name for v in holder_view["v"].volumes.values()}
    assert cat.catalog.load() in (reader_view["v"], holder_view["v"])  # a settled view is kept


def test_a_read_keeps_only_what_a_snapshot_needs():
    """10,000 snapshots times every property asked for: a snapshot keeps only the properties
    the catalog uses, only those it has, and property names are shared strings."""
    from vsnap.drivers.zfs import parse_zfs_get
    text = ("tank/v\tused\t1024\ntank/v\tmountpoint\t/vsnap/tank/v\n"
            "tank/v@s\tused\t0\ntank/v@s\tmountpoint\t-\ntank/v@s\tguid\t7\n"
            "tank/v@s\tcom.vsnap:snap_id\t-\ntank/v@t\tused\t512\n")
    tree = parse_zfs_get(text, {"used", "guid", "com.vsnap:snap_id"})
    assert tree == {"tank/v": {"used": "1024", "mountpoint": "/vsnap/tank/v"},
                    "tank/v@s": {"used": "0", "guid": "7"}, "tank/v@t": {"used": "512"}}
    keys = [k for props in tree.values() for k in props if k == "used"]
    assert all(k is keys[0] for k in keys)
    assert parse_zfs_get(text)["tank/v@s"] == {"used": "0", "mountpoint": "-", "guid": "7",
                                               "com.vsnap:snap_id": "-"}  # all, without the filter


def test_a_long_expired_view_is_read_anew_by_the_request(cat):
    """An idle server's kept view (older than three lifetimes) is not served: the request reads,
    and sees what changed outside meanwhile (the bench listed 100 snapshots of 1,000 before)."""
    first = cat.catalog.load()
    cat.ds.trees["tank"]["tank/v"]["used"] = "999"  # changed outside: no bump
    cat.clock.advance(60)
    second = cat.catalog.load()
    assert second is not first and second.volumes[cat.vol].props["used"] == "999"
    assert cat.ds.reads == 2
