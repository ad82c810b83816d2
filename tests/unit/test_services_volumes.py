"""VolumeService over an in-memory ZFS (fake dataset ops), a fake LUN image driver, fake pools,
a real Store on a temp SQLite file, a real StorageLock and a real Catalog; plus the validators
and resolve_inside on a real directory tree."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import vsnap.services.owner as owner_mod
from vsnap.drivers.lunfile import LunFileDriver
from vsnap.drivers.runner import CommandError
from vsnap.errors import ConflictError, NotFoundError, ValidationError
from vsnap.services.catalog import PROP_SERIAL, PROP_TYPE, PROP_VOL_ID, PROP_VOLSIZE, Catalog
from vsnap.services.locking import StorageLock
from vsnap.services.volumes import (
    DEFAULT_BLOCK,
    MAX_NAME,
    MAX_SIZE,
    MIN_SIZE,
    VolumeService,
    resolve_inside,
    validate_block_size,
    validate_name,
    validate_size,
)
from vsnap.store.models import Pool, Snapshot, Volume

import support
from support import SpyLock, empty_tables, holder

DEAD_OWNER = f"{2 ** 22 + 12345}:12345"  # above any Linux pid_max: never a live process
GIB = 1 << 30


# =============================================================================================
# validators
# =============================================================================================

@pytest.mark.parametrize("name", ["a", "vol1", "Vol_1.b-c", "9lives", "a" * MAX_NAME, "x..y"])
def test_validate_name_accepts(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", None, 42, "a" * (MAX_NAME + 1), "-a", "_a", ".a", "a b", "a/b", "a@b", "a:b", "a%b",
    "a\n", "a\x00b", "vé", "a;rm", "$(id)", "a#b",
])
def test_validate_name_refuses(name):
    with pytest.raises(ValidationError):
        validate_name(name)


def test_validate_name_says_what():
    with pytest.raises(ValidationError, match="Snapshot name"):
        validate_name("", "Snapshot")


@pytest.mark.parametrize("size", [1 << n for n in range(9, 18)])
def test_validate_block_size_accepts_powers_of_two(size):
    assert validate_block_size(size) == size


@pytest.mark.parametrize("size", [0, 1, 256, 511, 513, 1000, 3 << 10, 65535, 65537, 131073, 1 << 18, -512])
def test_validate_block_size_refuses(size):
    with pytest.raises(ValidationError):
        validate_block_size(size)


@pytest.mark.parametrize("size", [MIN_SIZE, MIN_SIZE + 1, GIB, MAX_SIZE])
def test_validate_size_accepts(size):
    assert validate_size(size) == size


@pytest.mark.parametrize("size", [0, -1, MIN_SIZE - 1, MAX_SIZE + 1])
def test_validate_size_refuses(size):
    with pytest.raises(ValidationError, match="size_total"):
        validate_size(size)


# =============================================================================================
# resolve_inside
# =============================================================================================

@pytest.fixture(scope="module")
def fsroot(tmp_path_factory):
    """/fs: a filesystem's root holding files, a directory and symlinks; /fs-other beside it."""
    tmp_path = tmp_path_factory.mktemp("resolve")
    root = tmp_path / "fs"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "disk.img").write_bytes(b"x")
    (root / "dir" / "sub" / "deep.img").write_bytes(b"x")
    other = tmp_path / "fs-other"  # a sibling whose path starts like the root's
    other.mkdir()
    (other / "secret.img").write_bytes(b"x")
    (root / "to_passwd").symlink_to("/etc/passwd")
    (root / "to_etc").symlink_to("/etc")
    (root / "to_sibling").symlink_to(other / "secret.img")
    (root / "to_sibling_dir").symlink_to(other)
    (root / "inside_link").symlink_to("dir/sub/deep.img")
    (root / "dir" / "up_link").symlink_to("../disk.img")
    (root / "to_root").symlink_to(".")
    (root / "dangling").symlink_to("nowhere.img")
    return root


@pytest.mark.parametrize("relative, expected", [
    ("disk.img", "disk.img"),
    ("dir/sub/deep.img", "dir/sub/deep.img"),
    ("./disk.img", "disk.img"),
    ("dir//sub/./deep.img", "dir/sub/deep.img"),
    ("inside_link", "dir/sub/deep.img"),  # a symlink that stays inside: its resolved path
    ("dir/up_link", "disk.img"),
    ("to_root/disk.img", "disk.img"),
])
def test_resolve_inside_accepts(fsroot, relative, expected):
    assert resolve_inside(str(fsroot), relative) == expected


@pytest.mark.parametrize("relative", [
    "/etc/passwd", "../fs-other/secret.img", "dir/../disk.img", "..", "dir/sub/../../disk.img",
    "to_passwd", "to_etc/passwd", "to_sibling", "to_sibling_dir/secret.img",
    "dir", "dir/sub", "missing.img", "dangling", ".", "to_root", "", "disk.img\x00", "\x00", None,
])
def test_resolve_inside_refuses(fsroot, relative):
    with pytest.raises(ValidationError):
        resolve_inside(str(fsroot), relative)


def test_resolve_inside_through_a_symlinked_root(fsroot, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(fsroot)
    assert resolve_inside(str(alias), "inside_link") == "dir/sub/deep.img"
    with pytest.raises(ValidationError):
        resolve_inside(str(alias), "to_passwd")


# =============================================================================================
# fakes
# =============================================================================================

class FakeDatasets:
    """ZfsDatasetOps over an in-memory tree. Mutations are recorded in `calls` (with whether the
    storage lock was held); `fail[method]` raises before the change, `fail_after[method]` after
    it (a half-made dataset)."""

    MUTATING = ("create_filesystem", "create_zvol", "snapshot", "clone", "rename", "inherit",
                "set", "destroy")

    def __init__(self, mount_root: Path):
        self.mount_root = mount_root
        self.has_zvols = True
        self.data: dict[str, dict[str, str]] = {}
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}
        self.fail_after: dict[str, Exception] = {}
        self.lock: StorageLock | None = None
        self.unlocked: list[str] = []
        self._guid = 5000

    def guid(self) -> str:
        self._guid += 1
        return str(self._guid)

    def add(self, name, kind="filesystem", **props) -> dict:
        base = {"type": kind, "guid": self.guid(), "origin": "-", "used": "65536",
                "referenced": "65536", "creation": "1700000000"}
        if kind == "filesystem":
            mountpoint = str(self.mount_root / name)
            os.makedirs(mountpoint, exist_ok=True)
            base.update(available="10000000000", quota="0", mountpoint=mountpoint, recordsize="131072")
        elif kind == "volume":
            base.update(available="10000000000", mountpoint="-", volblocksize="8192")
        else:
            base.update(used="0", mountpoint="-")
        self.data[name] = {**base, **props}
        return self.data[name]

    def _do(self, method, *args):
        self.calls.append((method, *args))
        if self.lock is not None and not self.lock._depth:
            self.unlocked.append(method)
        if method in self.fail:
            raise self.fail[method]

    def _after(self, method):
        if method in self.fail_after:
            raise self.fail_after[method]

    def _missing(self, name):
        return CommandError(["zfs"], 1, "", f"cannot open '{name}': dataset does not exist\n")

    def mutations(self, *methods):
        return [c for c in self.calls if not methods or c[0] in methods]

    # reading
    def tree(self, root, user_props, snapshot_props=None):
        found = {}
        for name, props in self.data.items():
            if name == root or name.startswith(root + "/") or name.startswith(root + "@"):
                found[name] = {**{p: "-" for p in user_props}, **props}
        return found

    def get(self, name, props):
        if name not in self.data:
            raise self._missing(name)
        return {p: self.data[name].get(p, "-") for p in props}

    # changing
    def create_filesystem(self, name, props):
        self._do("create_filesystem", name, dict(props))
        self.add(name, "filesystem", **props)
        self._after("create_filesystem")

    def create_zvol(self, name, size, block_size, props):
        self._do("create_zvol", name, size, block_size, dict(props))
        self.add(name, "volume", volsize=str(size), volblocksize=str(block_size), **props)
        self._after("create_zvol")

    def snapshot(self, name):
        self._do("snapshot", name)
        self.add(name, "snapshot")

    def clone(self, snapshot, name, props):
        self._do("clone", snapshot, name, dict(props))
        source = self.data[snapshot.split("@")[0]]
        extra = {"volsize": source["volsize"]} if source["type"] == "volume" else {}
        self.add(name, source["type"], origin=snapshot, **extra, **props)

    def rename(self, old, new):
        self._do("rename", old, new)
        for name in list(self.data):
            if name == old or name.startswith(old + "@") or name.startswith(old + "/"):
                self.data[new + name[len(old):]] = self.data.pop(name)

    def inherit(self, name, prop):
        self._do("inherit", name, prop)
        if prop == "mountpoint":
            self.data[name]["mountpoint"] = str(self.mount_root / name)
        else:
            self.data[name].pop(prop, None)

    def set(self, name, prop, value):
        self._do("set", name, prop, value)
        if name not in self.data:
            raise self._missing(name)
        self.data[name][prop] = value

    def destroy(self, name, *, recursive=False):
        self._do("destroy", name, recursive)
        doomed = [n for n in self.data if n.startswith(name + "@") or n.startswith(name + "/")]
        if doomed and not recursive:
            raise CommandError(["zfs", "destroy"], 1, "", f"cannot destroy '{name}': has children\n")
        for n in [name, *doomed]:
            self.data.pop(n, None)


class FakeLunFiles:
    path = staticmethod(LunFileDriver.path)

    def __init__(self):
        self.images: dict[str, int] = {}
        self.calls: list[tuple] = []
        self.fail: Exception | None = None

    def create(self, mountpoint, size):
        self.calls.append(("create", mountpoint, size))
        if self.fail:
            raise self.fail
        self.images[mountpoint] = size
        return self.path(mountpoint)

    def size(self, mountpoint):
        return self.images.get(mountpoint)

    def resize(self, mountpoint, size):
        self.calls.append(("resize", mountpoint, size))
        self.images[mountpoint] = size


class FakePools(support.FakePools):
    """The pool service, with each pool's root dataset in the fake ZFS."""

    def __init__(self, store, ds):
        super().__init__(store)
        self.ds = ds

    def add(self, name) -> int:
        guid = self.ds.guid()
        self.ds.add(name, "filesystem", guid=guid)
        return super().add(name, guid)


@pytest.fixture
def env(workdir, store):
    empty_tables(store)
    tmp_path = Path(tempfile.mkdtemp(dir=workdir))  # cheaper than a tmp_path per test
    ds = FakeDatasets(tmp_path / "mnt")
    lock = SpyLock(tmp_path / "storage.lock")
    ds.lock = lock
    pools = FakePools(store, ds)
    pool_id = pools.add("tank")
    lunfiles = FakeLunFiles()
    catalog = Catalog(store, ds, pools, lock)
    svc = VolumeService(store, ds, lunfiles, catalog, pools, lock)
    yield SimpleNamespace(svc=svc, ds=ds, lock=lock, pools=pools, pool_id=pool_id, store=store,
                          lunfiles=lunfiles, catalog=catalog, mnt=tmp_path / "mnt")
    assert ds.unlocked == [], "ZFS changed without the storage lock"
    empty_tables(store)


def rows(store) -> list[Volume]:
    with store.session() as s:
        return s.query(Volume).order_by(Volume.id).all()


def row(store, vol_id) -> Volume | None:
    with store.session() as s:
        return s.get(Volume, vol_id)


def add_row(store, **fields) -> int:
    values = {"volume_type": "filesystem", "state": "ready"}
    values.update(fields)
    with store.session() as s:
        r = Volume(**values)
        s.add(r)
        s.flush()
        return r.id


def make_fs(env, name="fs1", **kw) -> dict:
    return env.svc.create(name=name, volume_type="filesystem", pool_id=str(env.pool_id), **kw)


def make_lun(env, name="lun1", size=GIB, **kw) -> dict:
    return env.svc.create(name=name, volume_type="lun", pool_id=str(env.pool_id), size_total=size, **kw)


def snap_of(env, dataset, name="s1") -> int:
    """A snapshot taken in ZFS (made outside the API: the catalog adopts it); its id."""
    with env.lock.held():
        env.ds.snapshot(f"{dataset}@{name}")
    view = env.catalog.load()
    return next(s.row.id for s in view.snapshots.values() if s.zfs_name == f"{dataset}@{name}")


# =============================================================================================
# create
# =============================================================================================

def test_create_filesystem_with_quota(env):
    body = make_fs(env, size_total=5 * GIB)
    assert env.ds.mutations() == [("create_filesystem", "tank/fs1", {
        PROP_VOL_ID: "1", PROP_TYPE: "filesystem", "quota": str(5 * GIB)})]
    [r] = rows(env.store)
    assert (r.id, r.name, r.volume_type, r.state, r.owner, r.guid, r.serial, r.size_block, r.is_clone) == \
        (1, "fs1", "filesystem", "ready", None, env.ds.data["tank/fs1"]["guid"], None, None, False)
    assert body["id"] == "1" and body["name"] == "fs1" and body["volume_type"] == "filesystem"
    assert body["pool_id"] == str(env.pool_id) and body["pool_name"] == "tank"
    assert body["size_total"] == str(5 * GIB)
    assert body["size_free"] == "10000000000" and body["size_used"] == "65536"
    assert body["is_clone"] is False and body["snapshot_id"] is None and body["serial"] is None
    assert body["time_created"] == "1700000000"


def test_create_filesystem_without_quota(env):
    body = make_fs(env)
    [(_, _, props)] = env.ds.mutations()
    assert props == {PROP_VOL_ID: "1", PROP_TYPE: "filesystem"}
    assert body["size_total"] is None


def test_create_lun_as_zvol(env):
    body = make_lun(env, size=2 * GIB, size_block=16384)
    [r] = rows(env.store)
    assert env.ds.mutations() == [("create_zvol", "tank/lun1", 2 * GIB, 16384, {
        PROP_VOL_ID: "1", PROP_TYPE: "lun", PROP_SERIAL: r.serial, PROP_VOLSIZE: str(2 * GIB)})]
    assert env.lunfiles.calls == []
    assert len(r.serial) == 36 and r.size_block == 16384 and r.state == "ready"
    assert body["serial"] == r.serial and body["size_total"] == str(2 * GIB)


def test_create_lun_default_block(env):
    make_lun(env)
    [(_, _, _, block, _)] = env.ds.mutations()
    assert block == DEFAULT_BLOCK
    assert rows(env.store)[0].size_block == DEFAULT_BLOCK


def test_create_lun_as_image_file_without_zvols(env):
    env.ds.has_zvols = False
    body = make_lun(env, size=3 * GIB, size_block=4096)
    [r] = rows(env.store)
    assert env.ds.mutations() == [("create_filesystem", "tank/lun1", {
        PROP_VOL_ID: "1", PROP_TYPE: "lun", PROP_SERIAL: r.serial, PROP_VOLSIZE: str(3 * GIB),
        "recordsize": "4096"})]
    mountpoint = env.ds.data["tank/lun1"]["mountpoint"]
    assert env.lunfiles.calls == [("create", mountpoint, 3 * GIB)]
    assert body["size_total"] == str(3 * GIB) and body["volume_type"] == "lun"
    assert env.svc.backing(*env.svc.view("1"))[0] == LunFileDriver.path(mountpoint)


@pytest.mark.parametrize("kwargs", [
    {"volume_type": "lun", "size_total": None},
    {"volume_type": "lun", "size_total": MIN_SIZE - 1},
    {"volume_type": "lun", "size_total": GIB, "size_block": 1000},
    {"volume_type": "filesystem", "size_block": 4096},
    {"volume_type": "filesystem", "size_total": 10},
    {"volume_type": "bogus"},
    {"volume_type": None},
])
def test_create_refused_before_anything_happens(env, kwargs):
    with pytest.raises(ValidationError):
        env.svc.create(name="v", pool_id=str(env.pool_id), **kwargs)
    assert rows(env.store) == [] and env.ds.mutations() == []


def test_create_needs_pool_and_a_known_one(env):
    with pytest.raises(ValidationError):
        env.svc.create(name="v", volume_type="filesystem")
    with pytest.raises(NotFoundError):
        env.svc.create(name="v", volume_type="filesystem", pool_id="99")
    assert rows(env.store) == [] and env.ds.mutations() == []


def test_zfs_refusal_is_a_validation_error_and_leaves_nothing(env):
    env.ds.fail["create_zvol"] = CommandError(
        ["zfs", "create"], 1, "", "cannot create 'tank/lun1': volume size must be a multiple of volume block size\n")
    with pytest.raises(ValidationError, match="multiple of volume block size"):
        make_lun(env)
    assert rows(env.store) == []
    assert "tank/lun1" not in env.ds.data
    assert env.ds.mutations("destroy") == []  # nothing was made: nothing to destroy


def test_half_made_dataset_destroyed(env):
    env.ds.fail_after["create_filesystem"] = CommandError(
        ["zfs", "create"], 1, "", "filesystem successfully created, but it may only be mounted by root\n")
    with pytest.raises(ValidationError):
        make_fs(env, size_total=GIB)
    assert rows(env.store) == []
    assert "tank/fs1" not in env.ds.data
    assert env.ds.mutations("destroy") == [("destroy", "tank/fs1", True)]


def test_image_file_failure_destroys_the_dataset(env):
    env.ds.has_zvols = False
    env.lunfiles.fail = OSError(28, "No space left on device")
    with pytest.raises(ValidationError, match="No space left"):
        make_lun(env)
    assert rows(env.store) == [] and "tank/lun1" not in env.ds.data
    assert env.ds.mutations("destroy") == [("destroy", "tank/lun1", True)]


def test_duplicate_name_conflicts(env):
    make_fs(env, name="v")
    calls = len(env.ds.calls)
    with pytest.raises(ConflictError):
        make_lun(env, name="v")
    env.ds.add("tank/byhand")  # a dataset not (yet) in the catalog counts too
    with pytest.raises(ConflictError):
        make_fs(env, name="byhand")
    assert len(env.ds.calls) == calls
    assert [r.name for r in rows(env.store)] == ["v"]


def test_duplicate_name_of_a_filebacked_lun_conflicts(env):
    add_row(env.store, pool_id=env.pool_id, name="flun", volume_type="filebackedlun", parent_path="x")
    with pytest.raises(ConflictError):
        make_fs(env, name="flun")
    assert env.ds.mutations() == []


def test_same_name_in_another_pool_is_fine(env):
    other = env.pools.add("data")
    make_fs(env, name="v")
    env.svc.create(name="v", volume_type="filesystem", pool_id=str(other))
    assert sorted((r.pool_id, r.name) for r in rows(env.store)) == [(env.pool_id, "v"), (other, "v")]


# =============================================================================================
# clones
# =============================================================================================

def test_clone_of_unknown_snapshot(env):
    for snapshot_id in ("99", "abc", 99):
        with pytest.raises(NotFoundError):
            env.svc.create(name="c", snapshot_id=snapshot_id)
    assert rows(env.store) == [] and env.ds.mutations() == []


def test_clone_of_a_lun_snapshot(env):
    make_lun(env, size=2 * GIB, size_block=8192)
    sid = snap_of(env, "tank/lun1")
    env.ds.calls.clear()
    body = env.svc.create(name="restored", snapshot_id=str(sid))
    source, clone = rows(env.store)
    assert env.ds.mutations() == [("clone", "tank/lun1@s1", "tank/restored", {
        PROP_VOL_ID: str(clone.id), PROP_TYPE: "lun", PROP_SERIAL: clone.serial,
        PROP_VOLSIZE: str(2 * GIB)})]
    assert clone.serial != source.serial  # a new LUN, a new serial
    assert (clone.is_clone, clone.volume_type, clone.size_block, clone.state) == (True, "lun", 8192, "ready")
    assert body["snapshot_id"] == str(sid) and body["is_clone"] is True


def test_clone_failure_leaves_no_row(env):
    make_fs(env)
    sid = snap_of(env, "tank/fs1")
    env.ds.fail["clone"] = CommandError(["zfs", "clone"], 1, "", "out of space\n")
    with pytest.raises(ValidationError, match="out of space"):
        env.svc.create(name="c", snapshot_id=str(sid))
    assert [r.name for r in rows(env.store)] == ["fs1"]


def test_clone_name_taken(env):
    make_fs(env)
    sid = snap_of(env, "tank/fs1")
    with pytest.raises(ConflictError):
        env.svc.create(name="fs1", snapshot_id=str(sid))
    assert env.ds.mutations("clone") == []


# =============================================================================================
# file-backed LUNs
# =============================================================================================

def test_create_filebacked_lun(env):
    make_fs(env)
    mountpoint = Path(env.ds.data["tank/fs1"]["mountpoint"])
    (mountpoint / "images").mkdir()
    (mountpoint / "images" / "disk.img").write_bytes(b"\0" * 512)
    body = env.svc.create(name="flun", volume_type="filebackedlun", parent_id="1",
                          parent_path="images/./disk.img")
    r = row(env.store, int(body["id"]))
    assert (r.parent_id, r.parent_path, r.state, r.volume_type) == (1, "images/disk.img", "ready", "filebackedlun")
    assert body["size_total"] is None and body["parent_id"] == "1"
    assert env.svc.backing(*env.svc.view(body["id"])) == \
        (os.path.join(os.path.realpath(mountpoint), "images/disk.img"), 512)


@pytest.mark.parametrize("parent_path", ["../../etc/passwd", "/etc/passwd", "missing.img"])
def test_create_filebacked_lun_outside_refused(env, parent_path):
    make_fs(env)
    with pytest.raises(ValidationError):
        env.svc.create(name="flun", volume_type="filebackedlun", parent_id="1", parent_path=parent_path)
    assert [r.name for r in rows(env.store)] == ["fs1"]


def test_create_filebacked_lun_needs_a_filesystem_parent(env):
    make_lun(env)
    with pytest.raises(ValidationError):
        env.svc.create(name="flun", volume_type="filebackedlun", parent_id="1", parent_path="x")
    with pytest.raises(NotFoundError):
        env.svc.create(name="flun", volume_type="filebackedlun", parent_id="9", parent_path="x")


# =============================================================================================
# delete
# =============================================================================================

def test_delete_destroys_dataset_and_row_after_hooks(env):
    make_fs(env)
    snap_of(env, "tank/fs1")
    seen = []

    def hook(vol_id):
        seen.append((vol_id, list(env.ds.mutations("destroy")), row(env.store, vol_id).state))

    env.svc.attachments.register(holder(volume_going=hook))
    env.svc.delete("1")
    # called before anything is destroyed, once the row says DELETING: a crash from here on
    # finishes the delete instead of leaving the volume without its shares
    assert seen == [(1, [], "deleting")]
    assert env.ds.mutations("destroy") == [("destroy", "tank/fs1", True)]
    assert rows(env.store) == []
    with env.store.session() as s:
        assert s.query(Snapshot).count() == 0
    assert "tank/fs1@s1" not in env.ds.data


def test_delete_refused_when_a_snapshot_has_clones(env):
    make_fs(env, name="src")
    sid = snap_of(env, "tank/src")
    env.svc.create(name="clone_b", snapshot_id=str(sid))
    env.svc.create(name="clone_a", snapshot_id=str(sid))
    hooked = []
    env.svc.attachments.register(holder(volume_going=hooked.append))
    with pytest.raises(ConflictError, match="clone_a, clone_b"):
        env.svc.delete("1")
    assert hooked == [] and env.ds.mutations("destroy") == []
    assert row(env.store, 1).state == "ready"


def test_delete_refused_when_filebacked_luns_use_it(env):
    make_fs(env)
    add_row(env.store, pool_id=env.pool_id, name="flun2", volume_type="filebackedlun", parent_id=1,
            parent_path="a.img")
    add_row(env.store, pool_id=env.pool_id, name="flun1", volume_type="filebackedlun", parent_id=1,
            parent_path="b.img")
    hooked = []
    env.svc.attachments.register(holder(volume_going=hooked.append))
    with pytest.raises(ConflictError, match="flun1, flun2"):
        env.svc.delete("1")
    assert hooked == [] and env.ds.mutations("destroy") == []
    assert len(rows(env.store)) == 3


def test_delete_refused_by_a_guard_changes_nothing(env):
    make_fs(env)
    seen, hooked = [], []

    def guard(vol_id):
        seen.append(row(env.store, vol_id).state)
        raise ConflictError("Volume 1 is the primary of relationship r; delete the relationship first")

    env.svc.attachments.register(holder(refuse_volume_delete=guard))
    env.svc.attachments.register(holder(volume_going=hooked.append))
    with pytest.raises(ConflictError, match="relationship"):
        env.svc.delete("1")
    assert seen == ["ready"] and hooked == [] and env.ds.mutations("destroy") == []
    r = row(env.store, 1)
    assert (r.state, r.owner) == ("ready", None)


def test_delete_hook_failure_puts_the_row_back_to_ready_before_the_undo(env):
    make_fs(env)
    undone = []

    def shares_go(vol_id):
        return lambda: undone.append(row(env.store, vol_id).state)  # the undo re-applies

    def mappings_fail(vol_id):
        raise CommandError(["tgtadm"], 1, "", "tgtadm: failed\n")

    env.svc.attachments.register(holder(volume_going=shares_go), holder(volume_going=mappings_fail))
    with pytest.raises(CommandError):
        env.svc.delete("1")
    assert undone == ["ready"]  # so a re-apply serves the volume again
    r = row(env.store, 1)
    assert (r.state, r.owner) == ("ready", None) and env.ds.mutations("destroy") == []


def test_delete_filebacked_lun_destroys_nothing(env):
    make_fs(env)
    flun = add_row(env.store, pool_id=env.pool_id, name="flun", volume_type="filebackedlun", parent_id=1,
                   parent_path="a.img")
    env.svc.delete(str(flun))
    assert env.ds.mutations("destroy") == []
    assert [r.name for r in rows(env.store)] == ["fs1"]


def test_delete_zfs_failure_keeps_the_row_ready(env):
    make_fs(env)
    env.ds.fail["destroy"] = CommandError(["zfs", "destroy"], 1, "", "cannot destroy: dataset is busy\n")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.delete("1")
    r = row(env.store, 1)
    assert (r.state, r.owner) == ("ready", None)


def test_delete_unknown(env):
    with pytest.raises(NotFoundError):
        env.svc.delete("42")


# =============================================================================================
# update: resize, rename
# =============================================================================================

def test_resize_filesystem_quota(env):
    make_fs(env)
    env.svc.update("1", size_total=2 * GIB)
    env.svc.update("1", size_total=None)
    assert env.ds.mutations("set") == [("set", "tank/fs1", "quota", str(2 * GIB)),
                                       ("set", "tank/fs1", "quota", "none")]


def test_resize_below_used_refused(env):
    make_fs(env)
    env.ds.data["tank/fs1"]["used"] = str(3 * GIB)
    with pytest.raises(ValidationError, match="below"):
        env.svc.update("1", size_total=2 * GIB)
    make_lun(env)
    env.ds.data["tank/lun1"]["referenced"] = str(2 * GIB)
    with pytest.raises(ValidationError, match="below"):
        env.svc.update("2", size_total=GIB)
    assert env.ds.mutations("set") == []


def test_resize_zvol_and_image_lun(env):
    make_lun(env, name="zv")
    env.ds.has_zvols = False
    make_lun(env, name="img")
    env.ds.calls.clear()
    env.svc.update("1", size_total=2 * GIB)
    env.svc.update("2", size_total=4 * GIB)
    mountpoint = env.ds.data["tank/img"]["mountpoint"]
    assert env.ds.mutations() == [("set", "tank/zv", "volsize", str(2 * GIB)),
                                  ("set", "tank/img", PROP_VOLSIZE, str(4 * GIB))]
    assert env.lunfiles.calls[-1] == ("resize", mountpoint, 4 * GIB)
    assert env.svc.get(vol_id="2")["size_total"] == str(4 * GIB)


def test_resize_lun_to_nothing_refused(env):
    make_lun(env)
    with pytest.raises(ValidationError):
        env.svc.update("1", size_total=None)
    assert env.ds.mutations("set") == []


def test_resize_refused_by_zfs_is_a_client_error(env):
    make_lun(env)
    env.ds.fail["set"] = CommandError(["zfs", "set"], 1, "", "cannot set property for 'tank/lun1': "
                                      "'volsize' must be a multiple of volume block size (64K)\n")
    with pytest.raises((ValidationError, ConflictError)):
        env.svc.update("1", size_total=GIB + 512)


def test_rename_runs_hooks_with_old_and_new_dataset(env):
    make_fs(env, name="old")
    seen = []
    env.svc.attachments.register(holder(volume_renamed=lambda *args: seen.append(args)))
    body = env.svc.update("1", name="new")
    assert env.ds.mutations("rename") == [("rename", "tank/old", "tank/new")]
    assert seen == [(1, "tank/old", "tank/new")]
    assert body["name"] == "new" and row(env.store, 1).name == "new"
    assert env.lock.taken >= 1


def test_rename_to_a_taken_name(env):
    make_fs(env, name="a")
    make_fs(env, name="b")
    seen = []
    env.svc.attachments.register(holder(volume_renamed=lambda *args: seen.append(args)))
    with pytest.raises(ConflictError):
        env.svc.update("1", name="b")
    assert env.ds.mutations("rename") == [] and seen == []
    assert row(env.store, 1).name == "a"


def test_rename_refused_by_zfs(env):
    make_fs(env, name="a")
    seen = []
    env.svc.attachments.register(holder(volume_renamed=lambda *args: seen.append(args)))
    env.ds.fail["rename"] = CommandError(["zfs", "rename"], 1, "", "cannot rename: dataset is busy\n")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.update("1", name="b")
    assert row(env.store, 1).name == "a"
    # hooks may be told the dataset stayed where it was, never that it moved
    assert all(args == (1, "tank/a", "tank/a") for args in seen)
    assert "tank/a" in env.ds.data and "tank/b" not in env.ds.data


def test_before_rename_hooks_run_before_zfs_renames(env):
    make_fs(env, name="old")
    seen = []
    env.svc.attachments.register(
        holder(volume_renaming=lambda vol_id: seen.append((vol_id, env.ds.mutations("rename")))))
    env.svc.update("1", name="new")
    assert seen == [(1, [])]
    assert env.ds.mutations("rename") == [("rename", "tank/old", "tank/new")]


def test_rename_same_name_and_bad_name(env):
    make_fs(env, name="a")
    env.svc.update("1", name="a")
    with pytest.raises(ValidationError):
        env.svc.update("1", name="a/b")
    assert env.ds.mutations("rename") == []


def test_rename_filebacked_lun_is_a_row_change(env):
    make_fs(env)
    flun = add_row(env.store, pool_id=env.pool_id, name="flun", volume_type="filebackedlun", parent_id=1,
                   parent_path="a.img")
    seen = []
    env.svc.attachments.register(holder(volume_renamed=lambda *args: seen.append(args)))
    env.svc.update(str(flun), name="flun2")
    assert row(env.store, flun).name == "flun2"
    assert env.ds.mutations("rename") == [] and seen == []
    with pytest.raises(ConflictError):
        env.svc.update(str(flun), name="fs1")


def test_update_blocked_by_a_clone_is_refused_before_any_change(env):
    make_fs(env, name="src", size_total=GIB)
    sid = snap_of(env, "tank/src")
    env.svc.create(name="restore_1", snapshot_id=str(sid))
    env.ds.calls.clear()
    with pytest.raises(ConflictError, match="restore_1"):
        env.svc.update("1", name="moved", size_total=2 * GIB)
    assert env.ds.mutations() == []
    r = row(env.store, 1)
    assert (r.name, r.pending, r.owner) == ("src", None, None)
    env.svc.update("1", size_total=2 * GIB)  # a resize alone is not blocked by clones
    assert env.ds.mutations() == [("set", "tank/src", "quota", str(2 * GIB))]
    env.svc.update("2", name="restore_2")  # nor is the rename of the clone itself
    assert env.ds.mutations("rename") == [("rename", "tank/restore_1", "tank/restore_2")]


def test_zvol_with_clones_can_be_renamed(env):
    make_lun(env, name="zv")  # a zvol's clones are not mounted: nothing blocks its rename
    sid = snap_of(env, "tank/zv")
    env.svc.create(name="zvc", snapshot_id=str(sid))
    env.svc.update("1", name="zv2")
    assert env.ds.mutations("rename") == [("rename", "tank/zv", "tank/zv2")]


def test_update_renames_first_and_records_the_update_while_it_runs(env):
    make_fs(env, name="a", size_total=GIB)
    seen = []
    env.svc.attachments.register(holder(
        volume_renaming=lambda vol_id: seen.append((row(env.store, vol_id).pending, row(env.store, vol_id).owner))))
    env.ds.calls.clear()
    body = env.svc.update("1", name="b", size_total=2 * GIB)
    assert env.ds.mutations() == [("rename", "tank/a", "tank/b"), ("set", "tank/b", "quota", str(2 * GIB))]
    assert seen == [({"name": ["a", "b"], "size_total": [GIB, 2 * GIB]}, owner_mod.current_owner())]
    r = row(env.store, 1)
    assert (r.name, r.pending, r.owner, r.state) == ("b", None, None, "ready")
    assert (body["name"], body["size_total"]) == ("b", str(2 * GIB))
    with env.store.session() as s:  # SQL NULL, not JSON null: a later start has nothing to recover
        assert s.query(Volume).filter(Volume.pending.isnot(None)).count() == 0


def test_update_whose_rename_is_refused_changes_no_size(env):
    make_fs(env, name="a", size_total=GIB)
    env.ds.fail["rename"] = CommandError(["zfs", "rename"], 1, "", "cannot rename: dataset is busy\n")
    env.ds.calls.clear()
    with pytest.raises(ConflictError, match="busy"):
        env.svc.update("1", name="b", size_total=2 * GIB)
    assert env.ds.mutations("set") == [] and env.ds.data["tank/a"]["quota"] == str(GIB)
    r = row(env.store, 1)
    assert (r.name, r.pending, r.owner) == ("a", None, None)


def test_update_whose_resize_fails_renames_back(env):
    make_fs(env, name="a", size_total=GIB)
    moves = []
    env.svc.attachments.register(holder(volume_renamed=lambda *args: moves.append(args)))
    env.ds.fail["set"] = CommandError(["zfs", "set"], 1, "", "cannot set property: pool I/O is suspended\n")
    env.ds.calls.clear()
    with pytest.raises(ValidationError, match="suspended"):
        env.svc.update("1", name="b", size_total=2 * GIB)
    assert env.ds.mutations("rename") == [("rename", "tank/a", "tank/b"), ("rename", "tank/b", "tank/a")]
    assert moves == [(1, "tank/a", "tank/b"), (1, "tank/b", "tank/a")]
    assert "tank/a" in env.ds.data and env.ds.data["tank/a"]["quota"] == str(GIB)
    r = row(env.store, 1)
    assert (r.name, r.pending, r.owner) == ("a", None, None)


def test_update_whose_resize_and_rename_back_fail_says_where_the_volume_is(env):
    make_fs(env, name="a", size_total=GIB)
    env.ds.fail["set"] = CommandError(["zfs", "set"], 1, "", "cannot set property: pool I/O is suspended\n")
    calls = []

    def rename_once(old, new):
        calls.append((old, new))
        if len(calls) > 1:
            raise CommandError(["zfs", "rename"], 1, "", "cannot rename: dataset is busy\n")
        FakeDatasets.rename(env.ds, old, new)
    env.ds.rename = rename_once
    with pytest.raises(ValidationError, match="stays renamed to b"):
        env.svc.update("1", name="b", size_total=2 * GIB)
    assert (row(env.store, 1).name, row(env.store, 1).pending) == ("b", None)


def test_image_lun_resize_puts_the_file_back_if_its_size_cannot_be_recorded(env):
    env.ds.has_zvols = False
    make_lun(env, name="img", size=GIB)
    mountpoint = env.ds.data["tank/img"]["mountpoint"]
    env.ds.fail["set"] = CommandError(["zfs", "set"], 1, "", "cannot set property: out of space\n")
    with pytest.raises(ValidationError):
        env.svc.update("1", size_total=2 * GIB)
    assert env.lunfiles.images[mountpoint] == GIB
    assert env.lunfiles.calls[-2:] == [("resize", mountpoint, 2 * GIB), ("resize", mountpoint, GIB)]


def test_zvol_size_must_be_a_multiple_of_its_block_size(env):
    make_lun(env, name="zv", size_block=8192)
    env.ds.calls.clear()
    with pytest.raises(ValidationError, match="multiple"):
        env.svc.update("1", name="zv2", size_total=GIB + 512)
    assert env.ds.mutations() == []


# =============================================================================================
# recover
# =============================================================================================

def live_other_owner() -> str:
    for pid in (os.getppid(), 1):
        stat = owner_mod._stat(pid) if pid > 0 and pid != os.getpid() else None
        if stat is not None:
            return f"{pid}:{stat[1]}"
    pytest.skip("no other live process visible in /proc")


def test_recover_creating_that_reached_zfs(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="v", state="creating", owner=DEAD_OWNER)
    env.ds.add("tank/v", **{PROP_VOL_ID: str(vid)})
    env.svc.recover()
    r = row(env.store, vid)
    assert (r.state, r.owner, r.guid) == ("ready", None, env.ds.data["tank/v"]["guid"])
    assert env.ds.mutations() == []


def test_recover_creating_image_lun_makes_the_missing_image(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="l", volume_type="lun", serial="s",
                  state="creating", owner=DEAD_OWNER)
    env.ds.add("tank/l", **{PROP_VOL_ID: str(vid), PROP_TYPE: "lun", PROP_VOLSIZE: str(2 * GIB)})
    env.svc.recover()
    assert env.lunfiles.calls == [("create", env.ds.data["tank/l"]["mountpoint"], 2 * GIB)]
    assert row(env.store, vid).state == "ready"


def test_recover_creating_image_lun_keeps_an_existing_image(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="l", volume_type="lun", serial="s",
                  state="creating", owner=DEAD_OWNER)
    props = env.ds.add("tank/l", **{PROP_VOL_ID: str(vid), PROP_VOLSIZE: str(GIB)})
    env.lunfiles.images[props["mountpoint"]] = GIB
    env.svc.recover()
    assert env.lunfiles.calls == []
    assert row(env.store, vid).state == "ready"


def test_recover_creating_zvol_makes_no_image(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="l", volume_type="lun", serial="s",
                  state="creating", owner=DEAD_OWNER)
    env.ds.add("tank/l", "volume", **{PROP_VOL_ID: str(vid), "volsize": str(GIB)})
    env.svc.recover()
    assert env.lunfiles.calls == []
    assert row(env.store, vid).state == "ready"


def test_recover_creating_never_reached_zfs(env):
    add_row(env.store, pool_id=env.pool_id, name="v", state="creating", owner=DEAD_OWNER)
    env.svc.recover()
    assert rows(env.store) == []
    assert env.ds.mutations() == []


def test_recover_creating_but_dataset_is_someone_elses(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="v", state="creating", owner=DEAD_OWNER)
    env.ds.add("tank/v", **{PROP_VOL_ID: str(vid + 5)})
    env.svc.recover()
    assert rows(env.store) == []
    assert "tank/v" in env.ds.data and env.ds.mutations() == []


def test_recover_deleting_finishes_the_delete(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="v", state="deleting", owner=DEAD_OWNER, guid="1")
    env.ds.add("tank/v", **{PROP_VOL_ID: str(vid)})
    env.ds.add("tank/v@s", "snapshot")
    env.svc.recover()
    assert env.ds.mutations() == [("destroy", "tank/v", True)]
    assert rows(env.store) == [] and "tank/v" not in env.ds.data


def test_recover_deleting_lets_shares_and_mappings_go_before_the_destroy(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="v", state="deleting", owner=DEAD_OWNER, guid="1")
    env.ds.add("tank/v", **{PROP_VOL_ID: str(vid)})
    seen = []
    env.svc.attachments.register(holder(
        volume_going=lambda vol_id: seen.append(("rows", vol_id, list(env.ds.mutations()))),
        volume_released=lambda vol_id: seen.append(("servers", vol_id, list(env.ds.mutations())))))
    env.svc.recover()
    assert seen == [("rows", vid, []), ("servers", vid, [])]
    assert env.ds.mutations() == [("destroy", "tank/v", True)] and rows(env.store) == []


def test_recover_waits_for_a_pool_that_is_not_imported(env, caplog):
    gone = env.pools.add("away")
    env.pools.imported = [(r, summary) for r, summary in env.pools.imported if r.id != gone]
    vid = add_row(env.store, pool_id=gone, name="v", state="deleting", owner=DEAD_OWNER, guid="1")
    env.svc.recover()
    assert [(r.id, r.state) for r in rows(env.store)] == [(vid, "deleting")]  # kept for later
    assert env.ds.mutations() == []
    assert [r.levelname for r in caplog.records if "not imported" in r.getMessage()] == ["WARNING"]


def test_recover_deleting_already_gone(env):
    add_row(env.store, pool_id=env.pool_id, name="v", state="deleting", owner=DEAD_OWNER, guid="1")
    env.svc.recover()
    assert rows(env.store) == [] and env.ds.mutations() == []


def test_recover_own_rows_too_but_not_a_live_other_process(env):
    add_row(env.store, pool_id=env.pool_id, name="mine", state="creating",
                   owner=owner_mod.current_owner())
    theirs = add_row(env.store, pool_id=env.pool_id, name="theirs", state="creating",
                     owner=live_other_owner())
    env.svc.recover()
    assert [(r.id, r.state) for r in rows(env.store)] == [(theirs, "creating")]


def test_recover_failure_of_one_row_does_not_stop_the_others(env):
    add_row(env.store, pool_id=env.pool_id, name="v", state="creating", owner=DEAD_OWNER)
    with env.store.session() as s:  # a row of a pool that is not imported now
        s.add(Pool(id=50, name="gone", guid="77", pool_type="raid0", state="ready"))
    other = add_row(env.store, pool_id=50, name="w", state="creating", owner=DEAD_OWNER)
    env.svc.recover()
    assert [r.id for r in rows(env.store)] == [other]


def _pending_fs(env, name, quota, pending, owner=DEAD_OWNER):
    vid = add_row(env.store, pool_id=env.pool_id, name=name, guid="1", pending=pending, owner=owner)
    env.ds.add(f"tank/{name}", quota=str(quota), **{PROP_VOL_ID: str(vid)})
    return vid


def test_recover_update_after_its_rename_finishes_it(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="a", guid="1", owner=DEAD_OWNER,
                  pending={"name": ["a", "b"], "size_total": [GIB, 2 * GIB]})
    env.ds.add("tank/b", quota=str(GIB), **{PROP_VOL_ID: str(vid)})  # renamed, not resized
    env.svc.recover()
    assert env.ds.mutations() == [("set", "tank/b", "quota", str(2 * GIB))]
    r = row(env.store, vid)
    assert (r.name, r.pending, r.owner, r.state) == ("b", None, None, "ready")


def test_recover_update_before_its_rename_rolls_it_back(env):
    vid = _pending_fs(env, "a", GIB, {"name": ["a", "b"], "size_total": [None, 2 * GIB]})
    env.svc.recover()
    assert env.ds.mutations() == [("set", "tank/a", "quota", "none")]
    r = row(env.store, vid)
    assert (r.name, r.pending, r.owner) == ("a", None, None)


def test_recover_resize_only_update_finishes_it(env):
    env.ds.has_zvols = False
    vid = add_row(env.store, pool_id=env.pool_id, name="img", volume_type="lun", guid="1", owner=DEAD_OWNER,
                  pending={"name": None, "size_total": [GIB, 2 * GIB]})
    env.ds.add("tank/img", **{PROP_VOL_ID: str(vid), PROP_VOLSIZE: str(GIB)})
    mountpoint = env.ds.data["tank/img"]["mountpoint"]
    env.lunfiles.images[mountpoint] = 2 * GIB  # the file grew; its recorded size did not
    env.svc.recover()
    assert env.ds.mutations() == [("set", "tank/img", PROP_VOLSIZE, str(2 * GIB))]
    assert env.lunfiles.images[mountpoint] == 2 * GIB and row(env.store, vid).pending is None


def test_recover_leaves_a_live_processs_update_alone(env):
    owner = live_other_owner()
    vid = _pending_fs(env, "a", GIB, {"name": ["a", "b"], "size_total": None}, owner=owner)
    env.svc.recover()
    assert env.ds.mutations() == [] and (row(env.store, vid).pending, row(env.store, vid).owner) == \
        ({"name": ["a", "b"], "size_total": None}, owner)


def test_recover_update_of_a_dataset_gone_drops_it(env):
    vid = add_row(env.store, pool_id=env.pool_id, name="a", guid="1", owner=DEAD_OWNER,
                  pending={"name": ["a", "b"], "size_total": [GIB, 2 * GIB]})
    env.svc.recover()
    assert env.ds.mutations() == [] and row(env.store, vid).pending is None


def test_recover_remounts_volume_datasets_left_at_mountpoint_none(env):
    env.ds.add("tank/a", mountpoint="none")
    env.ds.add("tank/b")
    env.ds.add("tank/a/child", mountpoint="none")  # not a volume
    env.ds.add("tank/z", "volume")
    env.ds.add("tank/b@s", "snapshot", mountpoint="none")
    env.ds.data["tank"]["mountpoint"] = "none"  # the pool root is not a volume either
    env.svc.recover()
    assert env.ds.mutations() == [("inherit", "tank/a", "mountpoint")]
    assert env.ds.data["tank/a"]["mountpoint"] == str(env.mnt / "tank/a")


def test_recover_remount_failure_is_not_fatal(env):
    env.ds.add("tank/a", mountpoint="none")
    vid = add_row(env.store, pool_id=env.pool_id, name="v", state="creating", owner=DEAD_OWNER)
    env.ds.fail["inherit"] = CommandError(["zfs", "inherit"], 1, "", "cannot mount: busy\n")
    env.svc.recover()
    assert row(env.store, vid) is None


# =============================================================================================
# a replica's placeholder replaced by a received (encrypted) dataset
# =============================================================================================

def _replica(env, kind="filesystem"):
    """A ready replica volume with its empty placeholder dataset, as create-replica makes it."""
    if kind == "filesystem":
        vid = add_row(env.store, pool_id=env.pool_id, name="r", state="ready")
        env.ds.add("tank/r", **{PROP_VOL_ID: str(vid), PROP_TYPE: "filesystem", "readonly": "on", "atime": "off"})
    else:
        vid = add_row(env.store, pool_id=env.pool_id, name="r", volume_type="lun", serial="S1", state="ready")
        env.ds.add("tank/r", "volume", volsize=str(GIB), **{PROP_VOL_ID: str(vid), PROP_TYPE: "lun",
                                                              PROP_SERIAL: "S1", PROP_VOLSIZE: str(GIB)})
    with env.store.session() as s:
        s.get(Volume, vid).guid = env.ds.data["tank/r"]["guid"]
    return vid


def test_begin_replacement_records_the_placeholder_then_destroys_it(env):
    vid = _replica(env)
    props = env.svc.begin_replacement(vid, "tank/r")
    assert props == {PROP_VOL_ID: str(vid), PROP_TYPE: "filesystem", "readonly": "on", "atime": "off"}
    assert "tank/r" not in env.ds.data
    r = row(env.store, vid)
    assert r.state == "receiving" and r.owner and r.pending["placeholder"]["props"] == props
    assert env.ds.mutations() == [("destroy", "tank/r", False)] and env.ds.unlocked == []
    # meanwhile the catalog neither drops the row nor adopts what the receive is making
    env.ds.add("tank/r", **{"guid": "777"})
    env.catalog.load()
    assert row(env.store, vid).state == "receiving" and len(rows(env.store)) == 1


def test_end_replacement_keeps_the_received_dataset(env):
    vid = _replica(env)
    props = env.svc.begin_replacement(vid, "tank/r")
    env.ds.add("tank/r", guid="4242", **props)  # what receive -o made
    assert env.svc.end_replacement(vid, "tank/r") is True
    r = row(env.store, vid)
    assert (r.state, r.owner, r.pending, r.guid) == ("ready", None, None, "4242")
    assert env.svc.get(vol_id=vid)["name"] == "r"


@pytest.mark.parametrize("kind", ["filesystem", "lun"])
def test_end_replacement_without_a_received_dataset_makes_the_placeholder_again(env, kind):
    vid = _replica(env, kind)
    before = dict(env.ds.data["tank/r"])
    env.svc.begin_replacement(vid, "tank/r")
    assert env.svc.end_replacement(vid, "tank/r") is False
    again = env.ds.data["tank/r"]
    assert again["type"] == before["type"] and again[PROP_VOL_ID] == str(vid) and again["readonly"] == "on"
    if kind == "lun":
        assert again["volsize"] == str(GIB) and again[PROP_SERIAL] == "S1"
    r = row(env.store, vid)
    assert (r.state, r.pending, r.guid) == ("ready", None, again["guid"])


def test_a_placeholder_that_cannot_be_destroyed_leaves_the_replica_as_it_was(env):
    vid = _replica(env)
    env.ds.fail["destroy"] = CommandError(["zfs", "destroy"], 1, "", "dataset is busy")
    with pytest.raises(CommandError):
        env.svc.begin_replacement(vid, "tank/r")
    r = row(env.store, vid)
    assert (r.state, r.pending, r.owner) == ("ready", None, None) and "tank/r" in env.ds.data


@pytest.mark.parametrize("received", [True, False])
def test_recover_settles_a_replacement_a_crash_interrupted(env, received):
    vid = _replica(env)
    props = env.svc.begin_replacement(vid, "tank/r")
    with env.store.session() as s:
        s.get(Volume, vid).owner = DEAD_OWNER  # the receiving process died (kill -9)
    if received:
        env.ds.add("tank/r", guid="4343", **props)
    env.svc.recover()
    r = row(env.store, vid)
    assert r.state == "ready" and r.pending is None and r.guid == env.ds.data["tank/r"]["guid"]
    assert (r.guid == "4343") is received


def test_a_live_receive_in_place_is_left_alone(env):
    vid = _replica(env)
    env.svc.begin_replacement(vid, "tank/r")
    with env.store.session() as s:
        s.get(Volume, vid).owner = live_other_owner()
    env.svc.settle_replacement(vid)
    assert row(env.store, vid).state == "receiving" and "tank/r" not in env.ds.data


def test_settling_leaves_a_receive_that_still_runs_alone(env):
    vid = _replica(env)
    props = env.svc.begin_replacement(vid, "tank/r")
    with env.store.session() as s:
        s.get(Volume, vid).owner = DEAD_OWNER  # its process died; its zfs receive did not
    env.ds.add("tank/r", guid="4444", inconsistent="1", **props)
    env.svc.settle_replacement(vid)
    assert row(env.store, vid).state == "receiving"
    env.ds.data["tank/r"]["inconsistent"] = "0"  # it ended
    env.svc.settle_replacement(vid)
    r = row(env.store, vid)
    assert (r.state, r.guid) == ("ready", "4444")
