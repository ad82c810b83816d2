"""PoolService with fakes for ZFS, disks and the system, a real Store on a temp SQLite file and
a real StorageLock; plus split_groups, plan_vdevs and validate_pool_name."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

import vsnap.services.owner as owner_mod
import vsnap.services.pools as pools_mod
from vsnap.config import Settings
from vsnap.drivers.disks import BlockDevice
from vsnap.drivers.runner import CommandError
from vsnap.drivers.zfs import PoolStatus, PoolSummary, VdevNode, parse_zpool_status
from vsnap.errors import ConflictError, InvalidCandidateError, NotFoundError, ValidationError
from vsnap.services.locking import StorageLock
from vsnap.services.pools import (
    PROP_GROUP_SIZE,
    PROP_POOL_ID,
    PROP_POOL_TYPE,
    PROP_SYSTEM,
    PoolService,
    plan_vdevs,
    split_groups,
    validate_pool_name,
)
from vsnap.store.models import Pool

from support import empty_tables, holder
from zpool_support import (
    FUSE_OFFLINE_WITH_SPARE,
    FUSE_RESILVERING,
    FUSE_SCRUB_DONE,
    FUSE_SCRUBBING,
    FUSE_SPARE_RESILVERING,
    OZFS_RESILVERING_SPARE,
)

SYSTEM_ID = "0123456789abcdef0123456789abcdef"
OTHER_SYSTEM_ID = "fedcba9876543210fedcba9876543210"
DEAD_PID = 2 ** 22 + 12345  # above any Linux pid_max: never a live process
DEAD_OWNER = f"{DEAD_PID}:12345"


# =============================================================================================
# split_groups / plan_vdevs / validate_pool_name
# =============================================================================================

@pytest.mark.parametrize("count, size, expected", [
    (15, 8, [8, 7]), (16, 8, [8, 8]), (17, 8, [6, 6, 5]), (8, 8, [8]), (1, 8, [1]), (0, 8, []),
    (9, 8, [5, 4]), (24, 8, [8, 8, 8]), (25, 8, [7, 6, 6, 6]), (7, 3, [3, 2, 2]), (-3, 8, []),
])
def test_split_groups_examples(count, size, expected):
    assert split_groups(count, size) == expected


def test_split_groups_properties():
    for size in range(1, 33):
        for count in range(0, 200):
            groups = split_groups(count, size)
            where = (count, size, groups)
            assert sum(groups) == count, where
            assert len(groups) == math.ceil(count / size), where  # the fewest groups possible
            assert groups == sorted(groups, reverse=True), where  # larger first
            if groups:
                assert max(groups) <= size, where
                assert max(groups) - min(groups) <= 1, where  # as even as possible
                assert min(groups) >= 1, where


def _paths(n):
    return [f"/dev/disk/by-id/d{i}" for i in range(n)]


def test_plan_vdevs_raid0_stripes_as_is():
    paths = _paths(5)
    assert plan_vdevs("raid0", paths, 2) == paths
    assert plan_vdevs("raid0", paths[:1], 8) == paths[:1]
    assert plan_vdevs("raid0", paths, 2) is not paths  # a copy, never the caller's list


def test_plan_vdevs_raid5_raidz1_groups():
    p = _paths(15)
    assert plan_vdevs("raid5", p, 8) == ["raidz1", *p[:8], "raidz1", *p[8:]]
    assert plan_vdevs("raid5", p[:3], 8) == ["raidz1", *p[:3]]


def test_plan_vdevs_raid6_raidz2_groups():
    p = _paths(17)
    assert plan_vdevs("raid6", p, 8) == ["raidz2", *p[:6], "raidz2", *p[6:12], "raidz2", *p[12:]]
    assert plan_vdevs("raid6", p[:4], 8) == ["raidz2", *p[:4]]
    assert plan_vdevs("raid6", p[:8], 4) == ["raidz2", *p[:4], "raidz2", *p[4:8]]


@pytest.mark.parametrize("pool_type, count, size", [
    ("raid5", 2, 8), ("raid5", 1, 8), ("raid6", 3, 8),
    ("raid6", 5, 4),   # groups 3 + 2: both too small for raidz2
    ("raid5", 5, 4),   # groups 3 + 2: the second too small for raidz1
    ("raid5", 0, 8), ("raid6", 0, 8),
])
def test_plan_vdevs_too_few_disks_per_group(pool_type, count, size):
    with pytest.raises(InvalidCandidateError):
        plan_vdevs(pool_type, _paths(count), size)


@pytest.mark.parametrize("name", ["tank", "a", "pool-1.b_c", "A" * 255, "Tank2", "z.9-_"])
def test_validate_pool_name_accepts(name):
    assert validate_pool_name(name) == name


@pytest.mark.parametrize("name", [
    "", "a" * 256, "1pool", "-f", "_x", ".x", "a b", "a/b", "a;rm -rf /", "a$(id)", "a`id`",
    "mirror", "mirror2", "raidz", "raidz1x", "draid1", "spare", "spares", "log", "logs", "cache",
    "special", "dedup", "c0t0d0", "c1", "poolé", "pool\x00x", "pool\n", "pool\nx", "tank@snap",
    "tank#b", "tank:1", "tank%", None, 42,
])
def test_validate_pool_name_refuses(name):
    with pytest.raises(ValidationError):
        validate_pool_name(name)


# =============================================================================================
# fakes
# =============================================================================================

@dataclass
class FakePool:
    name: str
    guid: str
    health: str = "ONLINE"
    imported: bool = True
    props: dict = field(default_factory=dict)
    status: PoolStatus | None = None


DEFAULT_PROPS = {"used": "1048576", "available": "5242880", "creation": "1700000000",
                 "compression": "on", "compressratio": "1.00x", "dedup": "off",
                 "sync": "standard", "logicalused": "1048576"}


def status_from_vdevs(name: str, vdevs: list[str]) -> PoolStatus:
    """What `zpool status` would show for a pool just made from these vdev arguments."""
    status, current, groups = PoolStatus(name, "ONLINE"), None, 0
    for arg in vdevs:
        if arg in ("raidz1", "raidz2", "mirror"):
            current = VdevNode(f"{arg}-{groups}", "ONLINE")
            groups += 1
            status.data.append(current)
        elif current is not None:
            current.children.append(VdevNode(arg, "ONLINE"))
        else:
            status.data.append(VdevNode(arg, "ONLINE"))
    return status


class FakeOps:
    """ZfsPoolOps over an in-memory set of pools. Changes are recorded in `calls`."""

    MUTATING = ("create", "add", "remove", "set", "export", "import_by_guid", "destroy", "load_key", "scrub",
                "scrub_stop", "replace")

    def __init__(self):
        self.has_sync = True
        self.has_logicalused = True
        self.pools: list[FakePool] = []
        self.calls: list[tuple] = []
        self.reads: list[tuple] = []
        self.fail: dict[str, Exception] = {}
        self.mount_checks: list[str] = []  # pools whose unmounted datasets were mounted
        self.unmounted: dict[str, list[str]] = {}
        self.locked: dict[str, list[tuple[str, str]]] = {}  # pool -> (encryption root, keylocation) locked
        self._guid = 9000000000000000000

    def add_pool(self, name, guid=None, *, health="ONLINE", imported=True, props=None,
                 status=None) -> FakePool:
        if guid is None:
            self._guid += 1
            guid = str(self._guid)
        pool = FakePool(name, guid, health, imported, {**DEFAULT_PROPS, **(props or {})}, status)
        self.pools.append(pool)
        return pool

    def _imported(self, name) -> FakePool:
        for p in self.pools:
            if p.imported and p.name == name:
                return p
        raise CommandError(["zfs"], 1, "", f"cannot open '{name}': dataset does not exist\n")

    def _do(self, method, *args):
        self.calls.append((method, *args))
        if method in self.fail:
            raise self.fail[method]

    # reading
    def list(self):
        self.reads.append(("list",))
        return [PoolSummary(p.name, p.guid, p.health) for p in self.pools if p.imported]

    def dataset_props(self, dataset, props):
        self.reads.append(("dataset_props", dataset, tuple(props)))
        pool = self._imported(dataset)
        return {p: pool.props.get(p, "-") for p in props}

    def pool_props(self, pool, props):
        self.reads.append(("pool_props", pool, tuple(props)))
        self._imported(pool)
        return {"dedupratio": "1.00x"}

    def locked_keys(self, pool):
        self.reads.append(("locked_keys", pool))
        return [(name, loc) for name, loc in self.locked.get(pool, [])]

    def load_key(self, dataset, location=None):
        self._do("load_key", dataset)
        self.locked[dataset.split("/")[0]] = [(n, loc) for n, loc in self.locked.get(dataset.split("/")[0], [])
                                              if n != dataset]

    def mount_missing(self, pool, encryption=False):
        self.mount_checks.append(pool)
        if "mount_missing" in self.fail:
            raise self.fail["mount_missing"]
        self._imported(pool)
        return self.unmounted.pop(pool, [])

    # changing
    def create(self, name, vdevs, *, mountpoint, props):
        self._do("create", name, list(vdevs), mountpoint, dict(props))
        self.add_pool(name, props={**props, "mountpoint": mountpoint},
                      status=status_from_vdevs(name, vdevs))

    def add(self, pool, vdevs):
        self._do("add", pool, list(vdevs))

    def remove(self, pool, devices):
        self._do("remove", pool, list(devices))

    def scrub(self, pool):
        self._do("scrub", pool)

    def scrub_stop(self, pool):
        self._do("scrub_stop", pool)

    def replace(self, pool, old, new):
        self._do("replace", pool, old, new)

    def set(self, dataset, prop, value):
        self._do("set", dataset, prop, value)
        self._imported(dataset).props[prop] = value

    def export(self, pool):
        self._do("export", pool)
        self._imported(pool).imported = False

    def import_by_guid(self, guid, name):
        self._do("import_by_guid", guid, name)
        pool = next(p for p in self.pools if p.guid == guid and not p.imported)
        pool.imported, pool.name = True, name

    def destroy(self, pool):
        self._do("destroy", pool)
        self.pools.remove(self._imported(pool))

    def mutations(self):
        return [c for c in self.calls if c[0] in self.MUTATING]


class FakeZfs:
    def __init__(self, ops: FakeOps):
        self.ops = ops
        self.up = True
        self.cleared: list[str] = []
        self.has_encryption = False  # zfs-fuse's; the encryption tests give OpenZFS's
        self.exported: set[str] = set()  # names of pools `zpool import` would list

    def importable_names(self):
        return {p.name for p in self.ops.pools if p.imported} | self.exported

    def available(self):
        return self.up

    def pool_status(self, pool=None):
        return [p.status for p in self.ops.pools
                if p.imported and p.status is not None and (pool is None or p.name == pool)]

    def clear_label(self, device):
        self.cleared.append(device)

    def known_pool_guids(self):
        return {p.guid for p in self.ops.pools}


def disk(name, used_as="unused", pool=None):
    return (BlockDevice(f"/dev/{name}", 2 ** 30, "disk", serial=f"SER-{name}"), used_as, pool)


class FakeDisks:
    def __init__(self, entries=()):
        self.entries = list(entries)

    def inventory(self):
        return list(self.entries)


class FakeDiskDriver:
    @staticmethod
    def stable_path(path):
        return f"/dev/disk/by-id/ata-QEMU_{os.path.basename(path)}"


def by_id(name):
    return FakeDiskDriver.stable_path(f"/dev/{name}")


class FakeSystem:
    def __init__(self):
        self.id = SYSTEM_ID
        self.multipool = False


@pytest.fixture
def env(tmp_path, store):
    empty_tables(store)
    settings = Settings(state_dir=tmp_path, mount_root="/vsnap")
    ops = FakeOps()
    zfs = FakeZfs(ops)
    disks = FakeDisks([disk(n) for n in ("sdb", "sdc", "sdd", "sde", "sdf", "sdg")])
    system = FakeSystem()
    svc = PoolService(settings, store, zfs, ops, disks, FakeDiskDriver(), system,
                      StorageLock(tmp_path / "storage.lock"))
    yield SimpleNamespace(svc=svc, store=store, ops=ops, zfs=zfs, disks=disks, system=system)
    empty_tables(store)


def rows(store) -> list[Pool]:
    with store.session() as s:
        return s.query(Pool).order_by(Pool.id).all()


def add_row(store, **fields) -> int:
    values = {"name": "tank", "pool_type": "raid5", "diskgroup_size": 8, "state": "ready"}
    values.update(fields)
    with store.session() as s:
        row = Pool(**values)
        s.add(row)
        s.flush()
        return row.id


def make_pool(env, name="tank", *, pool_type="raid5", status_text=None, health="ONLINE",
              props=None) -> tuple[int, FakePool]:
    """A pool that exists in (fake) ZFS and has a ready row."""
    status = parse_zpool_status(status_text)[0] if status_text else None
    pool = env.ops.add_pool(name, health=health, props=props, status=status)
    pool_id = add_row(env.store, name=name, guid=pool.guid, pool_type=pool_type)
    return pool_id, pool


# =============================================================================================
# create
# =============================================================================================

def test_create_runs_zpool_create_with_stamps(env):
    result = env.svc.create(name="tank", pool_type="raid5",
                            disk_list=["SER-sdb", "SER-sdc", "SER-sdd", "SER-sde"],
                            compression=False, deduplication=True, diskgroup_size=8)
    [row] = rows(env.store)
    [call] = env.ops.mutations()
    assert call == ("create", "tank",
                    ["raidz1", by_id("sdb"), by_id("sdc"), by_id("sdd"), by_id("sde")],
                    "/vsnap/tank",
                    {"compression": "off", "dedup": "on", PROP_SYSTEM: SYSTEM_ID,
                     PROP_POOL_ID: str(row.id), PROP_POOL_TYPE: "raid5", PROP_GROUP_SIZE: "8",
                     "sync": "standard"})
    created = env.ops.pools[0]
    assert (row.name, row.guid, row.state, row.owner) == ("tank", created.guid, "ready", None)
    assert (row.pool_type, row.diskgroup_size) == ("raid5", 8)
    assert result["id"] == str(row.id)
    assert result["name"] == "tank"
    assert result["pool_type"] == "raid5"
    assert result["compression"] is False and result["deduplication"] is True
    assert result["disks"] == {"raid5_group1": [by_id(n) for n in ("sdb", "sdc", "sdd", "sde")]}
    assert result["health"] == "100"


def test_create_defaults_and_group_split(env):
    env.disks.entries = [disk(f"sd{c}") for c in "bcdefghijk"]  # 10 disks
    env.svc.create(name="big", pool_type="raid6", disk_list=None, diskgroup_size=6)
    [(_, name, vdevs, mountpoint, props)] = env.ops.mutations()
    paths = [by_id(f"sd{c}") for c in "bcdefghijk"]
    assert (name, mountpoint) == ("big", "/vsnap/big")
    assert vdevs == ["raidz2", *paths[:5], "raidz2", *paths[5:]]
    assert props["compression"] == "on" and props["dedup"] == "off"  # API defaults
    assert props[PROP_POOL_TYPE] == "raid6" and props[PROP_GROUP_SIZE] == "6"


def test_create_without_disk_list_uses_only_unused_disks(env):
    env.disks.entries = [disk("sdb"), disk("sdc", "data", "other"), disk("sdd", "mounted"),
                         disk("sde"), disk("sdf", "zfs")]
    env.svc.create(name="tank", pool_type="raid0")
    [(_, _, vdevs, _, _)] = env.ops.mutations()
    assert vdevs == [by_id("sdb"), by_id("sde")]


def test_create_second_pool_ids_increase(env):
    env.system.multipool = True
    first = env.svc.create(name="p1", pool_type="raid0", disk_list=["SER-sdb"])
    env.disks.entries[0] = disk("sdb", "data", "p1")
    second = env.svc.create(name="p2", pool_type="raid0", disk_list=["SER-sdc"])
    assert int(second["id"]) > int(first["id"])
    stamped = [c[4][PROP_POOL_ID] for c in env.ops.mutations()]
    assert stamped == [first["id"], second["id"]]


def test_create_sync_disabled_when_syncwrite_false(env):
    env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], syncwrite=False)
    assert env.ops.mutations()[0][4]["sync"] == "disabled"


def test_create_without_sync_property(env):
    env.ops.has_sync = False
    with pytest.raises(ValidationError):
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], syncwrite=False)
    assert env.ops.mutations() == [] and rows(env.store) == []
    env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], syncwrite=True)
    assert "sync" not in env.ops.mutations()[0][4]


def test_create_name_taken_by_any_imported_pool(env):
    env.ops.add_pool("tank")  # someone else's: no row, no stamps
    with pytest.raises(ConflictError):
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"])
    assert env.ops.mutations() == [] and rows(env.store) == []


def test_create_second_pool_needs_multipool(env):
    env.svc.create(name="p1", pool_type="raid0", disk_list=["SER-sdb"])
    with pytest.raises(ConflictError, match="multipool"):
        env.svc.create(name="p2", pool_type="raid0", disk_list=["SER-sdc"])
    assert [r.name for r in rows(env.store)] == ["p1"]
    assert len(env.ops.mutations()) == 1
    env.system.multipool = True
    env.svc.create(name="p2", pool_type="raid0", disk_list=["SER-sdc"])
    assert [r.name for r in rows(env.store)] == ["p1", "p2"]


def test_create_foreign_pool_does_not_count_against_multipool(env):
    env.ops.add_pool("foreign")  # imported, but not ours: no row
    env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"])
    assert [r.name for r in rows(env.store)] == ["tank"]


def test_create_unknown_disk(env):
    with pytest.raises(InvalidCandidateError, match="SER-nope"):
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb", "SER-nope"])
    assert env.ops.mutations() == [] and rows(env.store) == []


def test_create_disk_in_use_names_the_pool(env):
    env.disks.entries[1] = disk("sdc", "data", "backup")
    with pytest.raises(InvalidCandidateError) as err:
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb", "SER-sdc"])
    assert "backup" in err.value.message and "/dev/sdc" in err.value.message
    assert "data" in err.value.message
    assert env.ops.mutations() == [] and rows(env.store) == []


@pytest.mark.parametrize("used_as", ["log", "cache", "spare", "mounted", "partitioned", "zfs",
                                     "filesystem"])
def test_create_refuses_any_used_disk(env, used_as):
    env.disks.entries[0] = disk("sdb", used_as)
    with pytest.raises(InvalidCandidateError):
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"])
    assert env.ops.mutations() == []


def test_create_duplicate_uuid(env):
    with pytest.raises(ValidationError):
        env.svc.create(name="tank", pool_type="raid5", disk_list=["SER-sdb", "SER-sdc", "SER-sdb"])
    assert env.ops.mutations() == [] and rows(env.store) == []


def test_create_no_unused_disks(env):
    env.disks.entries = [disk("sdb", "data", "x")]
    with pytest.raises(InvalidCandidateError):
        env.svc.create(name="tank", pool_type="raid0")


@pytest.mark.parametrize("kwargs, error", [
    ({"name": "mirror", "pool_type": "raid0"}, ValidationError),
    ({"name": "tank", "pool_type": "raid10"}, ValidationError),
    ({"name": "tank", "pool_type": "raid6", "disk_list": ["SER-sdb", "SER-sdc", "SER-sdd"]},
     InvalidCandidateError),
])
def test_create_refused_before_anything_happens(env, kwargs, error):
    with pytest.raises(error):
        env.svc.create(**kwargs)
    assert env.ops.mutations() == [] and rows(env.store) == []


def test_create_zfs_failure_leaves_no_row(env):
    env.ops.fail["create"] = CommandError(
        ["zpool", "create"], 1, "",
        "invalid vdev specification\nuse '-f' to override the following errors:\n"
        "/dev/sdb is part of exported pool 'old'\n")
    with pytest.raises(InvalidCandidateError) as err:
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"])
    assert "invalid vdev specification" in err.value.message
    assert "exported pool 'old'" in err.value.message
    assert rows(env.store) == []
    assert env.ops.pools == []


def test_create_default_picks_type_and_free_name(env):
    env.ops.add_pool("vpool1")  # someone else's, but the name is taken
    env.svc.create_default()
    [(_, name, vdevs, _, props)] = env.ops.mutations()
    assert name == "vpool2"
    assert props[PROP_POOL_TYPE] == "raid6"  # six unused disks
    assert vdevs == ["raidz2", *[by_id(n) for n in ("sdb", "sdc", "sdd", "sde", "sdf", "sdg")]]
    env.svc.create_default()  # a pool exists now: nothing more
    assert len(env.ops.mutations()) == 1


@pytest.mark.parametrize("count, pool_type", [(1, "raid0"), (2, "raid0"), (3, "raid5"), (5, "raid5")])
def test_create_default_small_sets(env, count, pool_type):
    env.disks.entries = env.disks.entries[:count]
    env.svc.create_default()
    assert env.ops.mutations()[0][4][PROP_POOL_TYPE] == pool_type


# =============================================================================================
# _health and _disk_groups from zpool status
# =============================================================================================

STATUS_RAIDZ2_FULL = """\
  pool: tank
 state: ONLINE
  scan: none requested
config:

\tNAME          STATE     READ WRITE CKSUM
\ttank          ONLINE       0     0     0
\t  raidz2-0    ONLINE       0     0     0
\t    /dev/sdb  ONLINE       0     0     0
\t    /dev/sdc  ONLINE       0     0     0
\t    /dev/sdd  ONLINE       0     0     0
\t    /dev/sde  ONLINE       0     0     0
\t  raidz2-1    ONLINE       0     0     0
\t    /dev/sdf  ONLINE       0     0     0
\t    /dev/sdg  ONLINE       0     0     0
\t    /dev/sdh  ONLINE       0     0     0
\t    /dev/sdi  ONLINE       0     0     0
\tlogs
\t  mirror-2    ONLINE       0     0     0
\t    /dev/sdj  ONLINE       0     0     0
\t    /dev/sdk  ONLINE       0     0     0
\tcache
\t  /dev/sdl    ONLINE       0     0     0
\tspares
\t  /dev/sdm    AVAIL
\t  /dev/sdn    AVAIL

errors: No known data errors
"""

STATUS_STRIPES_FUSE = """\
  pool: stripe
 state: ONLINE
 scrub: none requested
config:

\tNAME        STATE     READ WRITE CKSUM
\tstripe      ONLINE       0     0     0
\t  loop0     ONLINE       0     0     0
\t  loop1     ONLINE       0     0     0
\t  loop2     ONLINE       0     0     0

errors: No known data errors
"""


def _degraded(bad_state):
    leaves = "".join(f"\t    loop{i}   ONLINE       0     0     0\n" for i in range(7))
    return (
        "  pool: tank\n"
        " state: DEGRADED\n"
        "status: One or more devices could not be opened.  Sufficient replicas exist for\n"
        "\tthe pool to continue functioning in a degraded state.\n"
        "action: Attach the missing device and online it using 'zpool online'.\n"
        "   see: http://www.sun.com/msg/ZFS-8000-2Q\n"
        " scrub: none requested\n"
        "config:\n\n"
        "\tNAME        STATE     READ WRITE CKSUM\n"
        "\ttank        DEGRADED     0     0     0\n"
        "\t  raidz2-0  DEGRADED     0     0     0\n"
        f"{leaves}"
        f"\t    loop7   {bad_state}      0     0     0  cannot open\n\n"
        "errors: No known data errors\n")


def test_disk_groups_raidz2_with_log_cache_spares():
    status = parse_zpool_status(STATUS_RAIDZ2_FULL)[0]
    assert PoolService._disk_groups("raid6", status) == {
        "raid6_group1": ["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde"],
        "raid6_group2": ["/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi"],
        "log": ["/dev/sdj", "/dev/sdk"],
        "cache": ["/dev/sdl"],
        "spare": ["/dev/sdm", "/dev/sdn"],
    }
    assert PoolService._health(PoolSummary("tank", "1", "ONLINE"), status) == 100


def test_disk_groups_raid0_stripes_are_one_group():
    status = parse_zpool_status(STATUS_STRIPES_FUSE)[0]
    assert PoolService._disk_groups("raid0", status) == {
        "raid0_group1": ["/dev/loop0", "/dev/loop1", "/dev/loop2"]}
    assert PoolService._health(PoolSummary("stripe", "1", "ONLINE"), status) == 100


@pytest.mark.parametrize("bad_state", ["FAULTED", "UNAVAIL", "REMOVED", "OFFLINE"])
def test_health_degraded_one_of_eight(bad_state):
    status = parse_zpool_status(_degraded(bad_state))[0]
    assert PoolService._health(PoolSummary("tank", "1", "DEGRADED"), status) == 87
    assert PoolService._disk_groups("raid6", status) == {
        "raid6_group1": [f"/dev/loop{i}" for i in range(8)]}


@pytest.mark.parametrize("pool_health", ["FAULTED", "UNAVAIL"])
def test_health_faulted_pool_is_zero(pool_health):
    status = parse_zpool_status(STATUS_RAIDZ2_FULL)[0]  # even with every device fine
    assert PoolService._health(PoolSummary("tank", "1", pool_health), status) == 0
    assert PoolService._health(PoolSummary("tank", "1", pool_health), None) == 0


def test_health_without_status():
    assert PoolService._health(PoolSummary("t", "1", "ONLINE"), None) == 100
    assert PoolService._health(PoolSummary("t", "1", "DEGRADED"), None) == 50
    assert PoolService._health(PoolSummary("t", "1", "ONLINE"), PoolStatus("t", "ONLINE")) == 0


def test_health_spare_in_use_counts_as_healthy():
    status = PoolStatus("t", "DEGRADED",
                        data=[VdevNode("mirror-0", "DEGRADED", [VdevNode("sda", "ONLINE"),
                                                                VdevNode("sdb", "FAULTED")])],
                        spare=[VdevNode("sdc", "INUSE"), VdevNode("sdd", "AVAIL")])
    assert PoolService._health(PoolSummary("t", "1", "DEGRADED"), status) == 75


def test_get_details_from_zfs(env):
    pool_id, _ = make_pool(env, "tank", pool_type="raid6", status_text=STATUS_RAIDZ2_FULL,
                           props={"used": "1000", "available": "3000", "compressratio": "1.50",
                                  "logicalused": "1600", "sync": "disabled", "dedup": "on",
                                  "compression": "off"})
    details = env.svc.get(pool_id=str(pool_id))
    assert details["id"] == str(pool_id) and details["name"] == "tank"
    assert (details["size_total"], details["size_free"], details["size_used"]) == ("4000", "3000", "1000")
    assert details["size_before_compression"] == "1600"
    assert details["size_before_deduplication"] == "1000"
    assert details["syncwrite"] is False
    assert details["compression"] is False and details["deduplication"] is True
    assert details["compression_ratio"] == "1.50x"  # as the spec writes it; OpenZFS's -p gives "1.50"
    assert details["disks"]["raid6_group2"] == ["/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi"]
    assert details["health"] == "100" and details["status"] == "ONLINE"
    assert env.svc.get(name="tank")["id"] == str(pool_id)
    with pytest.raises(NotFoundError):
        env.svc.get(pool_id="999")
    with pytest.raises(NotFoundError):
        env.svc.get(name="nope")


def test_get_details_on_zfs_fuse(env):
    env.ops.has_sync = env.ops.has_logicalused = False
    pool_id, _ = make_pool(env, "tank", props={"used": "1000", "compressratio": "1.50x"})
    details = env.svc.get(pool_id=str(pool_id))
    assert details["size_before_compression"] == "1500"  # used times ZFS's own ratio
    assert details["syncwrite"] is True
    requested = [r[2] for r in env.ops.reads if r[0] == "dataset_props"][-1]
    assert "sync" not in requested and "logicalused" not in requested


def test_list_shows_only_ready_rows_of_imported_pools(env):
    make_pool(env, "tank")
    env.ops.add_pool("foreign")
    add_row(env.store, name="gone", guid="555", state="ready")  # not in ZFS
    add_row(env.store, name="half", state="creating", owner=DEAD_OWNER)
    assert [p["name"] for p in env.svc.list()] == ["tank"]


# =============================================================================================
# recover
# =============================================================================================

def live_other_owner() -> str:
    """The owner string ("pid:start time") of a live process that is not this one."""
    for pid in (os.getppid(), 1):
        stat = owner_mod._stat(pid) if pid > 0 and pid != os.getpid() else None
        if stat is not None:
            return f"{pid}:{stat[1]}"
    pytest.skip("no other live process visible in /proc")


def test_owner_strings_used_here():
    assert owner_mod.owner_alive(DEAD_OWNER) is False
    assert owner_mod.owner_alive(live_other_owner()) is True
    assert owner_mod.is_current(live_other_owner()) is False
    assert owner_mod.is_current(owner_mod.current_owner()) is True


def test_recover_creating_never_reached_zfs(env):
    add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER)
    env.svc.recover()
    assert rows(env.store) == []
    assert env.ops.mutations() == []


def test_recover_creating_that_finished_in_zfs(env):
    pool_id = add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER)
    pool = env.ops.add_pool("tank", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: str(pool_id)})
    env.svc.recover()
    [row] = rows(env.store)
    assert (row.id, row.state, row.guid, row.owner, row.name) == (pool_id, "ready", pool.guid, None, "tank")
    assert env.ops.mutations() == []


def test_recover_creating_but_pool_stamped_by_another_system(env):
    pool_id = add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER)
    env.ops.add_pool("tank", props={PROP_SYSTEM: OTHER_SYSTEM_ID, PROP_POOL_ID: str(pool_id)})
    env.svc.recover()
    assert rows(env.store) == []
    assert env.ops.mutations() == []  # the other appliance's pool is left alone
    assert [p.name for p in env.ops.pools] == ["tank"]


def test_recover_creating_but_pool_stamped_by_us_with_another_id(env):
    # the row's create never ran; a pool of the same name is an older one of ours (id 40)
    add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER)
    pool = env.ops.add_pool("tank", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: "40",
                                           PROP_POOL_TYPE: "raid0", PROP_GROUP_SIZE: "8"})
    env.svc.recover()
    # the half-made row is rolled back; the pool is adopted under its own stamped id
    assert [(r.id, r.guid, r.state) for r in rows(env.store)] == [(40, pool.guid, "ready")]
    assert env.ops.mutations() == []


def test_recover_creating_but_pool_unstamped(env):
    add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER)
    env.ops.add_pool("tank")  # same name, no stamps: not the one this row was making
    env.svc.recover()
    assert rows(env.store) == []
    assert env.ops.mutations() == []


def test_recover_deleting_pool_exists(env):
    pool = env.ops.add_pool("tank")
    add_row(env.store, name="tank", guid=pool.guid, state="deleting", owner=DEAD_OWNER)
    hooked = []
    env.svc.attachments.register(holder(
        pool_going=lambda pool_id, name: hooked.append(("rows", name)),
        pool_released=lambda name: hooked.append(("servers", name, list(env.ops.mutations())))))
    env.svc.recover()
    assert env.ops.mutations() == [("destroy", "tank")]
    assert hooked == [("rows", "tank"), ("servers", "tank", [])]  # all before the destroy
    assert rows(env.store) == [] and env.ops.pools == []


def test_recover_deleting_pool_already_gone(env):
    add_row(env.store, name="tank", guid="4242", state="deleting", owner=DEAD_OWNER)
    env.svc.recover()
    assert rows(env.store) == []
    assert env.ops.mutations() == []


def test_recover_renaming_after_export(env):
    pool = env.ops.add_pool("old", imported=False)
    pool_id = add_row(env.store, name="old", guid=pool.guid, state="renaming",
                      pending_name="new", owner=DEAD_OWNER)
    env.svc.recover()
    assert env.ops.mutations() == [("import_by_guid", pool.guid, "new"),
                                   ("set", "new", "mountpoint", "/vsnap/new")]
    [row] = rows(env.store)
    assert (row.id, row.name, row.state, row.pending_name, row.owner) == \
        (pool_id, "new", "ready", None, None)


def test_recover_renaming_before_export_rolls_back(env):
    pool = env.ops.add_pool("old")
    add_row(env.store, name="old", guid=pool.guid, state="renaming", pending_name="new",
            owner=DEAD_OWNER)
    env.svc.recover()
    assert env.ops.mutations() == [("set", "old", "mountpoint", "/vsnap/old")]
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending_name) == ("old", "ready", None)


def test_recover_leaves_changes_of_live_processes_alone(env):
    owner = live_other_owner()
    pool = env.ops.add_pool("tank", imported=False)
    add_row(env.store, name="a", state="creating", owner=owner)
    add_row(env.store, name="tank", guid=pool.guid, state="renaming", pending_name="b",
            owner=owner)
    deleting = env.ops.add_pool("c")
    add_row(env.store, name="c", guid=deleting.guid, state="deleting", owner=owner)
    env.svc.recover()
    assert [(r.name, r.state, r.owner) for r in rows(env.store)] == [
        ("a", "creating", owner), ("tank", "renaming", owner), ("c", "deleting", owner)]
    assert env.ops.mutations() == []


def test_recover_asks_whether_the_owner_is_alive(env, monkeypatch):
    seen = []
    monkeypatch.setattr(pools_mod, "owner_alive", lambda owner: seen.append(owner) or True)
    add_row(env.store, name="a", state="creating", owner=DEAD_OWNER)
    add_row(env.store, name="b", state="ready")
    env.svc.recover()
    assert seen == [DEAD_OWNER]  # only rows in flight are asked about
    assert [r.state for r in rows(env.store)] == ["creating", "ready"]


def test_recover_owner_pid_reused_by_another_process_is_dead(env):
    pid, _, start = live_other_owner().partition(":")
    stale = f"{pid}:{int(start) + 1}"  # that pid is alive, but not the process that started
    add_row(env.store, name="a", state="creating", owner=stale)
    env.svc.recover()
    assert rows(env.store) == []


def test_recover_own_rows_are_recovered(env):
    add_row(env.store, name="a", state="creating", owner=owner_mod.current_owner())
    env.svc.recover()
    assert rows(env.store) == []


def test_recover_ready_row_of_exported_pool_is_imported_again(env):
    pool = env.ops.add_pool("tank", imported=False)
    add_row(env.store, name="tank", guid=pool.guid)
    env.svc.recover()
    assert env.ops.mutations() == [("import_by_guid", pool.guid, "tank")]


def test_recover_ready_row_follows_a_rename_outside(env):
    pool = env.ops.add_pool("renamed")
    add_row(env.store, name="tank", guid=pool.guid)
    env.svc.recover()
    assert [r.name for r in rows(env.store)] == ["renamed"]
    assert env.ops.mutations() == []


def test_recover_one_failure_does_not_stop_the_rest(env):
    pool = env.ops.add_pool("old", imported=False)
    add_row(env.store, name="old", guid=pool.guid, state="renaming", pending_name="new",
            owner=DEAD_OWNER)
    add_row(env.store, name="half", state="creating", owner=DEAD_OWNER)
    env.ops.fail["import_by_guid"] = CommandError(["zpool", "import"], 1, "", "cannot import: no such pool\n")
    env.svc.recover()
    assert [(r.name, r.state) for r in rows(env.store)] == [("old", "renaming")]


def test_recover_adopts_our_stamped_pool_with_its_id(env):
    pool = env.ops.add_pool("lost", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: "7",
                                           PROP_POOL_TYPE: "raid6", PROP_GROUP_SIZE: "6"})
    env.svc.recover()
    [row] = rows(env.store)
    assert (row.id, row.guid, row.name, row.pool_type, row.diskgroup_size, row.state) == \
        (7, pool.guid, "lost", "raid6", 6, "ready")
    assert env.ops.mutations() == []
    # a pool created later never reuses an adopted id
    env.system.multipool = True
    assert int(env.svc.create(name="next", pool_type="raid0", disk_list=["SER-sdb"])["id"]) > 7


def test_recover_adopts_with_a_new_id_when_the_stamped_one_is_taken(env):
    taken_id, _ = make_pool(env, "tank")
    pool = env.ops.add_pool("lost", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: str(taken_id),
                                           PROP_POOL_TYPE: "raid5", PROP_GROUP_SIZE: "8"})
    env.svc.recover()
    adopted = [r for r in rows(env.store) if r.guid == pool.guid]
    assert len(adopted) == 1
    new_id = adopted[0].id
    assert new_id != taken_id
    assert env.ops.mutations() == [("set", "lost", PROP_POOL_ID, str(new_id))]
    assert pool.props[PROP_POOL_ID] == str(new_id)


@pytest.mark.parametrize("stamp", [
    {"com.vsnap:pool_type": "raid6"},  # no system stamp at all ("-" from zfs get)
    {PROP_SYSTEM: OTHER_SYSTEM_ID, PROP_POOL_ID: "1"},
    {PROP_SYSTEM: SYSTEM_ID.upper(), PROP_POOL_ID: "1"},
])
def test_recover_never_adopts_nor_touches_other_pools(env, stamp):
    env.ops.add_pool("theirs", props=stamp)
    env.ops.add_pool("exported", imported=False, props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: "3"})
    env.svc.recover()
    assert rows(env.store) == []
    assert env.ops.mutations() == []
    assert env.ops.mount_checks == []


def test_recover_adoption_defaults_for_odd_stamps(env):
    env.ops.add_pool("odd", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: "abc",
                                   PROP_POOL_TYPE: "raid99", PROP_GROUP_SIZE: "x"})
    env.svc.recover()
    [row] = rows(env.store)
    assert (row.pool_type, row.diskgroup_size) == ("raid0", 8)
    assert env.ops.mutations() == [("set", "odd", PROP_POOL_ID, str(row.id))]


def test_recover_mounts_what_is_missing_on_our_pools_only(env, caplog):
    make_pool(env, "tank")
    make_pool(env, "backup")
    env.ops.add_pool("foreign", props={PROP_SYSTEM: OTHER_SYSTEM_ID, PROP_POOL_ID: "1"})
    add_row(env.store, name="busy", state="creating", owner=live_other_owner())
    env.ops.unmounted["tank"] = ["tank", "tank/vol1"]
    with caplog.at_level("INFO", logger="vsnap.services.pools"):
        env.svc.recover()
    assert env.ops.mount_checks == ["tank", "backup"]
    assert "mounted tank/vol1" in caplog.text
    assert env.ops.mutations() == []


def test_recover_mounting_failure_is_logged_not_raised(env, caplog):
    make_pool(env, "tank")
    make_pool(env, "backup")
    env.ops.fail["mount_missing"] = CommandError(["zfs", "mount", "tank"], 1, "",
                                                 "cannot mount '/vsnap/tank': directory is not empty\n")
    env.svc.recover()
    assert "directory is not empty" in caplog.text
    assert [r.state for r in rows(env.store)] == ["ready", "ready"]


def test_recover_mounts_adopted_pools_too(env):
    env.ops.add_pool("lost", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: "2"})
    env.svc.recover()
    assert env.ops.mount_checks == ["lost"]


def test_recover_without_zfs_does_nothing(env):
    env.zfs.up = False
    add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER)
    env.ops.add_pool("lost", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: "9"})
    env.svc.recover()
    assert [(r.name, r.state) for r in rows(env.store)] == [("tank", "creating")]
    assert env.ops.reads == [] and env.ops.calls == [] and env.ops.mount_checks == []


def test_recover_is_idempotent(env):
    env.ops.add_pool("lost", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: "4"})
    env.svc.recover()
    env.svc.recover()
    assert [(r.id, r.name) for r in rows(env.store)] == [(4, "lost")]
    assert env.ops.mutations() == []


# =============================================================================================
# update
# =============================================================================================

def test_update_compression_dedup_sync(env):
    pool_id, pool = make_pool(env, "tank", props={"compression": "on", "dedup": "off", "sync": "standard"})
    result = env.svc.update(str(pool_id), compression=False, deduplication=True, syncwrite=False)
    assert env.ops.mutations() == [("set", "tank", "compression", "off"),
                                   ("set", "tank", "dedup", "on"),
                                   ("set", "tank", "sync", "disabled")]
    assert result["compression"] is False and result["deduplication"] is True
    assert result["syncwrite"] is False
    env.ops.calls.clear()
    env.svc.update(str(pool_id), compression=True, deduplication=False, syncwrite=True)
    assert env.ops.mutations() == [("set", "tank", "compression", "on"),
                                   ("set", "tank", "dedup", "off"),
                                   ("set", "tank", "sync", "standard")]


def test_update_nothing_given_changes_nothing(env):
    pool_id, _ = make_pool(env, "tank")
    env.svc.update(str(pool_id))
    assert env.ops.mutations() == []


def test_update_syncwrite_without_sync_property(env):
    env.ops.has_sync = False
    pool_id, _ = make_pool(env, "tank")
    with pytest.raises(ValidationError):
        env.svc.update(str(pool_id), syncwrite=False, compression=False)
    assert env.ops.mutations() == []
    env.svc.update(str(pool_id), syncwrite=True)  # already how zfs-fuse behaves: nothing to do
    assert env.ops.mutations() == []


def test_update_unknown_pool(env):
    with pytest.raises(NotFoundError):
        env.svc.update("12", compression=True)


def test_update_rename(env):
    pool_id, pool = make_pool(env, "old")
    events = []
    env.svc.attachments.register(holder(pool_renaming=lambda name: events.append(("before", name))))
    env.svc.attachments.register(holder(pool_renamed=lambda old, new: events.append(("after", old, new))))
    result = env.svc.update(str(pool_id), name="new")
    assert env.ops.mutations() == [("export", "old"), ("import_by_guid", pool.guid, "new"),
                                   ("set", "new", "mountpoint", "/vsnap/new")]
    assert events == [("before", "old"), ("after", "old", "new")]
    [row] = rows(env.store)
    assert (row.id, row.name, row.state, row.pending_name, row.owner) == \
        (pool_id, "new", "ready", None, None)
    assert result["name"] == "new" and result["id"] == str(pool_id)


def test_update_rename_to_same_name_is_no_rename(env):
    pool_id, _ = make_pool(env, "tank")
    env.svc.update(str(pool_id), name="tank")
    assert env.ops.mutations() == []


def test_update_rename_to_existing_name(env):
    pool_id, _ = make_pool(env, "tank")
    env.ops.add_pool("other")
    with pytest.raises(ConflictError):
        env.svc.update(str(pool_id), name="other")
    assert env.ops.mutations() == []
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending_name) == ("tank", "ready", None)


def test_update_rename_invalid_name(env):
    pool_id, _ = make_pool(env, "tank")
    with pytest.raises(ValidationError):
        env.svc.update(str(pool_id), name="bad name")
    assert env.ops.mutations() == []


def test_update_rename_export_busy(env):
    pool_id, _ = make_pool(env, "tank")
    env.ops.fail["export"] = CommandError(["zpool", "export", "tank"], 1, "",
                                          "cannot export 'tank': pool is busy\n")
    renamed, undone = [], []
    env.svc.attachments.register(holder(pool_renaming=lambda name: lambda: undone.append(name)))
    env.svc.attachments.register(holder(pool_renamed=lambda old, new: renamed.append((old, new))))
    with pytest.raises(ConflictError, match="busy"):
        env.svc.update(str(pool_id), name="new")
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending_name, row.owner) == ("tank", "ready", None, None)
    assert undone == ["tank"] and renamed == []  # the before hooks' undo put things back
    assert [c[0] for c in env.ops.mutations()] == ["export"]
    assert env.svc.get(pool_id=str(pool_id))["name"] == "tank"


def test_update_conflicting_rename_changes_nothing(env):
    pool_id, _ = make_pool(env, "tank")
    env.ops.add_pool("other")
    with pytest.raises(ConflictError):
        env.svc.update(str(pool_id), name="other", compression=False)
    assert env.ops.mutations() == []


def test_update_renames_first_then_sets_what_differs_recording_the_update(env):
    pool_id, pool = make_pool(env, "old", props={"compression": "on", "dedup": "off"})
    seen = []
    env.svc.attachments.register(holder(pool_renaming=lambda name: seen.append(rows(env.store)[0].pending)))
    env.svc.update(str(pool_id), name="new", compression=False, deduplication=False, syncwrite=True)
    assert env.ops.mutations() == [("export", "old"), ("import_by_guid", pool.guid, "new"),
                                   ("set", "new", "mountpoint", "/vsnap/new"),
                                   ("set", "new", "compression", "off")]  # dedup, sync: as asked already
    assert seen == [{"name": ["old", "new"], "props": {"compression": ["on", "off"]}}]
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending, row.pending_name, row.owner) == ("new", "ready", None, None, None)
    env.ops.calls.clear()
    env.svc.recover()  # nothing left in flight
    assert [c for c in env.ops.mutations() if c[0] != "set" or c[2] != "mountpoint"] == []


def test_update_whose_rename_is_refused_sets_no_property(env):
    pool_id, pool = make_pool(env, "tank")
    env.ops.fail["export"] = CommandError(["zpool", "export", "tank"], 1, "",
                                          "cannot export 'tank': pool is busy\n")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.update(str(pool_id), name="new", compression=False, deduplication=True)
    assert env.ops.mutations() == [("export", "tank")]
    assert (pool.props["compression"], pool.props["dedup"]) == ("on", "off")
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending, row.owner) == ("tank", "ready", None, None)


def test_update_whose_property_is_refused_puts_back_what_it_changed(env):
    pool_id, pool = make_pool(env, "old", props={"compression": "on", "dedup": "off"})
    real_set = env.ops.set

    def set_(dataset, prop, value):
        if prop == "dedup" and value == "on":
            env.ops.calls.append(("set", dataset, prop, value))
            raise CommandError(["zfs", "set"], 1, "", "cannot set property for 'new': pool I/O is suspended\n")
        real_set(dataset, prop, value)
    env.ops.set = set_
    renames = []
    env.svc.attachments.register(holder(pool_renamed=lambda old, new: renames.append((old, new))))
    with pytest.raises(ConflictError, match="suspended"):
        env.svc.update(str(pool_id), name="new", compression=False, deduplication=True)
    assert env.ops.mutations() == [
        ("export", "old"), ("import_by_guid", pool.guid, "new"), ("set", "new", "mountpoint", "/vsnap/new"),
        ("set", "new", "compression", "off"), ("set", "new", "dedup", "on"),
        ("set", "new", "compression", "on"),
        ("export", "new"), ("import_by_guid", pool.guid, "old"), ("set", "old", "mountpoint", "/vsnap/old")]
    assert renames == [("old", "new"), ("new", "old")]
    assert (pool.name, pool.props["compression"], pool.props["dedup"]) == ("old", "on", "off")
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending, row.owner) == ("old", "ready", None, None)


def test_update_to_a_name_whose_mount_point_is_taken_changes_nothing(env, tmp_path):
    import dataclasses
    env.svc.settings = dataclasses.replace(env.svc.settings, mount_root=str(tmp_path))
    pool_id, _ = make_pool(env, "tank")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    for name in ("full", "afile"):
        with pytest.raises(ConflictError, match="mount point"):
            env.svc.update(str(pool_id), name=name, compression=False)
    assert env.ops.mutations() == []
    env.svc.update(str(pool_id), name="empty")  # an empty directory is fine to mount on
    assert rows(env.store)[0].name == "empty"


def test_recover_update_past_the_export_finishes_it(env):
    pool = env.ops.add_pool("old", imported=False, props={"compression": "on"})
    add_row(env.store, name="old", guid=pool.guid, state="renaming", pending_name="new", owner=DEAD_OWNER,
            pending={"name": ["old", "new"], "props": {"compression": ["on", "off"]}})
    env.svc.recover()
    assert env.ops.mutations() == [("import_by_guid", pool.guid, "new"),
                                   ("set", "new", "mountpoint", "/vsnap/new"),
                                   ("set", "new", "compression", "off")]
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending, row.pending_name, row.owner) == ("new", "ready", None, None, None)


def test_recover_update_before_the_export_rolls_it_back(env):
    pool = env.ops.add_pool("old", props={"compression": "on"})
    add_row(env.store, name="old", guid=pool.guid, owner=DEAD_OWNER,
            pending={"name": ["old", "new"], "props": {"compression": ["on", "off"]}})
    env.svc.recover()
    assert env.ops.mutations() == [("set", "old", "compression", "on")]
    [row] = rows(env.store)
    assert (row.name, row.state, row.pending, row.owner) == ("old", "ready", None, None)


def test_recover_update_without_rename_finishes_it(env):
    pool = env.ops.add_pool("tank", props={"compression": "off", "dedup": "off"})
    add_row(env.store, name="tank", guid=pool.guid, owner=DEAD_OWNER,
            pending={"name": None, "props": {"compression": ["on", "off"], "dedup": ["off", "on"]}})
    env.svc.recover()
    assert env.ops.mutations() == [("set", "tank", "compression", "off"), ("set", "tank", "dedup", "on")]
    assert rows(env.store)[0].pending is None


def test_recover_leaves_a_live_processs_update_alone(env):
    owner = live_other_owner()
    pool = env.ops.add_pool("tank")
    add_row(env.store, name="tank", guid=pool.guid, owner=owner,
            pending={"name": None, "props": {"compression": ["on", "off"]}})
    env.svc.recover()
    assert env.ops.mutations() == []
    assert (rows(env.store)[0].pending, rows(env.store)[0].owner) == \
        ({"name": None, "props": {"compression": ["on", "off"]}}, owner)


# =============================================================================================
# action
# =============================================================================================

STATUS_WITH_LOG_MIRROR_FUSE = """\
  pool: tank
 state: ONLINE
 scrub: none requested
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        ONLINE       0     0     0
\t  raidz1-0  ONLINE       0     0     0
\t    loop0   ONLINE       0     0     0
\t    loop1   ONLINE       0     0     0
\t    loop2   ONLINE       0     0     0
\tlogs
\t  mirror-1  ONLINE       0     0     0
\t    loop3   ONLINE       0     0     0
\t    loop4   ONLINE       0     0     0
\tcache
\t  loop5     ONLINE       0     0     0
\t  loop6     ONLINE       0     0     0
\tspares
\t  sdm       AVAIL

errors: No known data errors
"""

STATUS_SINGLE_LOG = """\
  pool: tank
 state: ONLINE
config:

\tNAME          STATE     READ WRITE CKSUM
\ttank          ONLINE       0     0     0
\t  /dev/sdb    ONLINE       0     0     0
\tlogs
\t  /dev/sdj    ONLINE       0     0     0

errors: No known data errors
"""


def test_action_unknown(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_SINGLE_LOG)
    with pytest.raises(ValidationError):
        env.svc.action(str(pool_id), "explode")
    assert env.ops.mutations() == []


def test_action_unknown_pool(env):
    with pytest.raises(NotFoundError):
        env.svc.action("3", "addlog", disk_list=["SER-sdb"])


def test_removelog_without_log(env):
    pool_id, _ = make_pool(env, "stripe", pool_type="raid0", status_text=STATUS_STRIPES_FUSE)
    with pytest.raises(ValidationError):
        env.svc.action(str(pool_id), "removelog")
    with pytest.raises(ValidationError):
        env.svc.action(str(pool_id), "removecache")
    assert env.ops.mutations() == [] and env.zfs.cleared == []


def test_removelog_mirror(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_WITH_LOG_MIRROR_FUSE)
    env.svc.action(str(pool_id), "removelog")
    assert env.ops.mutations() == [("remove", "tank", ["mirror-1"])]
    assert env.zfs.cleared == ["/dev/loop3", "/dev/loop4"]


def test_removelog_single_device_by_path(env):
    pool_id, _ = make_pool(env, "tank", pool_type="raid0", status_text=STATUS_SINGLE_LOG)
    env.svc.action(str(pool_id), "removelog")
    assert env.ops.mutations() == [("remove", "tank", ["/dev/sdj"])]
    assert env.zfs.cleared == ["/dev/sdj"]


def test_removecache_removes_every_cache_device(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_WITH_LOG_MIRROR_FUSE)
    env.svc.action(str(pool_id), "removecache")
    assert env.ops.mutations() == [("remove", "tank", ["/dev/loop5", "/dev/loop6"])]
    assert env.zfs.cleared == ["/dev/loop5", "/dev/loop6"]


def test_removespare(env):
    env.disks.entries.append(disk("sdm", "spare", "tank"))
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_WITH_LOG_MIRROR_FUSE)
    env.svc.action(str(pool_id), "removespare", disk_list=["SER-sdm"])
    assert env.ops.mutations() == [("remove", "tank", ["/dev/sdm"])]
    assert env.zfs.cleared == ["/dev/sdm"]


def test_removespare_of_a_disk_that_is_not_a_spare(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_WITH_LOG_MIRROR_FUSE)
    with pytest.raises(InvalidCandidateError, match="SER-sdb"):
        env.svc.action(str(pool_id), "removespare", disk_list=["SER-sdb"])
    with pytest.raises(InvalidCandidateError):
        env.svc.action(str(pool_id), "removespare", disk_list=["SER-unknown"])
    with pytest.raises(ValidationError):
        env.svc.action(str(pool_id), "removespare")
    assert env.ops.mutations() == [] and env.zfs.cleared == []


def test_addlog_two_disks_is_a_mirror(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_STRIPES_FUSE)
    env.svc.action(str(pool_id), "addlog", disk_list=["SER-sdb", "SER-sdc"])
    assert env.ops.mutations() == [("add", "tank", ["log", "mirror", by_id("sdb"), by_id("sdc")])]


def test_addlog_one_disk(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_STRIPES_FUSE)
    env.svc.action(str(pool_id), "addlog", disk_list=["SER-sdb"])
    assert env.ops.mutations() == [("add", "tank", ["log", by_id("sdb")])]


def test_addlog_needs_disks_and_unused_ones(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_STRIPES_FUSE)
    with pytest.raises(ValidationError):
        env.svc.action(str(pool_id), "addlog")
    env.disks.entries[0] = disk("sdb", "data", "tank")
    with pytest.raises(InvalidCandidateError):
        env.svc.action(str(pool_id), "addlog", disk_list=["SER-sdb"])
    assert env.ops.mutations() == []


def test_addcache_and_addspare(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_STRIPES_FUSE)
    with pytest.raises(ValidationError):
        env.svc.action(str(pool_id), "addcache")
    env.svc.action(str(pool_id), "addcache", disk="SER-sdb")
    env.svc.action(str(pool_id), "addspare", disk_list=["SER-sdc", "SER-sdd"])
    assert env.ops.mutations() == [("add", "tank", ["cache", by_id("sdb")]),
                                   ("add", "tank", ["spare", by_id("sdc"), by_id("sdd")])]


def test_expand_follows_pool_type_and_group_size(env):
    pool_id, _ = make_pool(env, "tank", pool_type="raid5", status_text=STATUS_STRIPES_FUSE)
    env.svc.action(str(pool_id), "expand", disk_list=["SER-sdb", "SER-sdc", "SER-sdd"])
    assert env.ops.mutations() == [("add", "tank", ["raidz1", by_id("sdb"), by_id("sdc"), by_id("sdd")])]
    with pytest.raises(InvalidCandidateError):
        env.svc.action(str(pool_id), "expand", disk_list=["SER-sde", "SER-sdf"])
    assert len(env.ops.mutations()) == 1


def test_action_zfs_refusal_is_invalid_candidate(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_STRIPES_FUSE)
    env.ops.fail["add"] = CommandError(["zpool", "add"], 1, "",
                                       "cannot add to 'tank': device is too small\n")
    with pytest.raises(InvalidCandidateError, match="device is too small"):
        env.svc.action(str(pool_id), "addlog", disk_list=["SER-sdb"])


def test_action_touches_time_updated(env, monkeypatch):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_STRIPES_FUSE)
    monkeypatch.setattr(pools_mod, "now", lambda: 2_000_000_000)
    result = env.svc.action(str(pool_id), "addlog", disk_list=["SER-sdb"])
    assert result["time_updated"] == "2000000000"


# =============================================================================================
# health: scan, device states, scrub and replace (beyond the spec)
# =============================================================================================

def _at(monkeypatch, epoch=2_000_000_000):
    monkeypatch.setattr(pools_mod, "now", lambda: epoch)
    return epoch


def test_view_of_a_degraded_pool_resilvering_onto_its_spare(env, monkeypatch):
    t = _at(monkeypatch)
    pool_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_SPARE_RESILVERING,
                           health="DEGRADED")
    details = env.svc.get(pool_id=str(pool_id))
    assert details["status"] == "DEGRADED"
    assert details["health"] == "75"  # the offline disk is 1 of 4 (the spare counts in both places)
    assert details["scan"] == {"function": "resilver", "state": "scanning", "percent": 79.0,
                               "estimated_end": str(t), "errors": None, "time_started": None,
                               "time_ended": None}
    # the spec's shape is kept; the states come beside it
    assert details["disks"] == {"raid0_group1": ["/var/tmp/h21-a.img", "/var/tmp/h21-d.img", "/var/tmp/h21-c.img"],
                                "spare": ["/var/tmp/h21-d.img"]}
    assert details["disk_states"] == [
        {"path": "/var/tmp/h21-a.img", "group": "raid0_group1", "role": "data", "state": "OFFLINE",
         "replacing": "old"},
        {"path": "/var/tmp/h21-d.img", "group": "raid0_group1", "role": "data", "state": "ONLINE",
         "replacing": "spare"},
        {"path": "/var/tmp/h21-c.img", "group": "raid0_group1", "role": "data", "state": "ONLINE",
         "replacing": None},
        {"path": "/var/tmp/h21-d.img", "group": "spare", "role": "spare", "state": "INUSE", "replacing": None},
    ]


def test_view_of_a_replacement_in_progress(env, monkeypatch):
    _at(monkeypatch)
    pool_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_RESILVERING)
    details = env.svc.get(pool_id=str(pool_id))
    assert [(d["path"], d["replacing"]) for d in details["disk_states"]] == [
        ("/var/tmp/h21-a.img", None), ("/var/tmp/h21-b.img", "old"), ("/var/tmp/h21-c.img", "new")]
    assert details["health"] == "100" and details["scan"]["state"] == "scanning"


def test_a_degraded_pool_is_below_100_even_with_every_device_healthy():
    status = parse_zpool_status(FUSE_RESILVERING)[0]
    assert PoolService._health(PoolSummary("h21pool", "1", "ONLINE"), status) == 100
    assert PoolService._health(PoolSummary("h21pool", "1", "DEGRADED"), status) == 99


def test_view_of_a_finished_scan_and_of_none(env):
    pool_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_SCRUB_DONE)
    scan = env.svc.get(pool_id=str(pool_id))["scan"]
    assert (scan["function"], scan["state"], scan["percent"], scan["errors"], scan["estimated_end"]) == \
        ("scrub", "finished", 100.0, 0, None)
    assert scan["time_ended"] is not None and scan["time_ended"].isdigit()
    other_id, _ = make_pool(env, "stripe", pool_type="raid0", status_text=STATUS_STRIPES_FUSE)
    assert env.svc.get(pool_id=str(other_id))["scan"] is None


def test_view_of_a_failed_disk_known_by_guid_shows_its_old_path(env, monkeypatch):
    t = _at(monkeypatch)
    pool_id, _ = make_pool(env, "tank", pool_type="raid6", status_text=OZFS_RESILVERING_SPARE, health="DEGRADED")
    details = env.svc.get(pool_id=str(pool_id))
    failed = details["disk_states"][0]
    assert failed == {"path": "/dev/disk/by-id/virtio-vsnapdisk1", "group": "raid6_group1", "role": "data",
                      "state": "FAULTED", "replacing": "old"}
    assert details["disks"]["raid6_group1"][0] == "/dev/disk/by-id/virtio-vsnapdisk1"
    assert details["scan"]["estimated_end"] == str(t + 2 * 86400 + 3723)
    assert details["scan"]["time_started"] is not None
    assert int(details["health"]) < 100


def test_list_gives_each_pool_its_scan_and_health_from_one_status(env):
    make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_SPARE_RESILVERING, health="DEGRADED")
    make_pool(env, "stripe", pool_type="raid0", status_text=STATUS_STRIPES_FUSE)
    listed = {p["name"]: p for p in env.svc.list()}
    assert (listed["h21pool"]["status"], listed["h21pool"]["health"]) == ("DEGRADED", "75")
    assert listed["h21pool"]["scan"]["percent"] == 79.0
    assert (listed["stripe"]["health"], listed["stripe"]["scan"]) == ("100", None)


def test_list_without_zpool_status_still_lists(env, monkeypatch):
    make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_SPARE_RESILVERING, health="DEGRADED")

    def refuse(pool=None):
        raise CommandError(["zpool", "status"], 1, "", "internal error\n")
    monkeypatch.setattr(env.zfs, "pool_status", refuse)
    [listed] = env.svc.list()
    assert (listed["status"], listed["health"], listed["scan"]) == ("DEGRADED", "50", None)


def test_scrub_and_scrub_stop(env):
    pool_id, _ = make_pool(env, "stripe", pool_type="raid0", status_text=STATUS_STRIPES_FUSE)
    env.svc.action(str(pool_id), "scrub")
    scrubbing_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_SCRUBBING)
    env.svc.action(str(scrubbing_id), "scrub_stop")
    assert env.ops.mutations() == [("scrub", "stripe"), ("scrub_stop", "h21pool")]


def test_scrub_while_a_scan_runs_is_a_conflict_and_runs_nothing(env):
    scrubbing_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_SCRUBBING)
    with pytest.raises(ConflictError, match="already scrubbing"):
        env.svc.action(str(scrubbing_id), "scrub")
    resilvering_id, _ = make_pool(env, "tank", pool_type="raid0", status_text=FUSE_RESILVERING)
    with pytest.raises(ConflictError, match="already resilvering"):
        env.svc.action(str(resilvering_id), "scrub")
    assert env.ops.mutations() == []


@pytest.mark.parametrize("status_text, why", [
    (STATUS_STRIPES_FUSE, "no scrub is running"),
    (FUSE_SCRUB_DONE, "no scrub is running"),
    (FUSE_RESILVERING, "a resilver is running"),
])
def test_scrub_stop_without_a_scrub_running_is_a_conflict(env, status_text, why):
    pool_id, _ = make_pool(env, "tank", pool_type="raid0", status_text=status_text)
    with pytest.raises(ConflictError, match=why):
        env.svc.action(str(pool_id), "scrub_stop")
    assert env.ops.mutations() == []


def test_a_scrub_zfs_refuses_is_a_conflict_with_its_words(env):
    pool_id, _ = make_pool(env, "stripe", pool_type="raid0", status_text=STATUS_STRIPES_FUSE)
    env.ops.fail["scrub"] = CommandError(["zpool", "scrub"], 1, "",
                                         "cannot scrub stripe: pool is currently unavailable\n")
    with pytest.raises(ConflictError, match="currently unavailable"):
        env.svc.action(str(pool_id), "scrub")


def test_replace_a_device_by_its_path_with_an_unused_disk(env, monkeypatch):
    pool_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_OFFLINE_WITH_SPARE,
                           health="DEGRADED")
    monkeypatch.setattr(pools_mod, "now", lambda: 2_000_000_000)
    result = env.svc.action(str(pool_id), "replace", disk="/var/tmp/h21-a.img", disk_list=["SER-sdb"])
    assert env.ops.mutations() == [("replace", "h21pool", "/var/tmp/h21-a.img", by_id("sdb"))]
    assert result["time_updated"] == "2000000000"


def test_replace_a_failed_disk_known_by_guid_passes_zfs_the_guid(env):
    pool_id, _ = make_pool(env, "tank", pool_type="raid6", status_text=OZFS_RESILVERING_SPARE, health="DEGRADED")
    env.svc.action(str(pool_id), "replace", disk="/dev/disk/by-id/virtio-vsnapdisk1", disk_list=["SER-sdc"])
    assert env.ops.mutations() == [("replace", "tank", "4242424242424242", by_id("sdc"))]


def test_replace_a_bare_named_device_passes_its_path(env):
    pool_id, _ = make_pool(env, "stripe", pool_type="raid0", status_text=STATUS_STRIPES_FUSE)
    env.svc.action(str(pool_id), "replace", disk="/dev/loop1", disk_list=["SER-sdb"])
    assert env.ops.mutations() == [("replace", "stripe", "/dev/loop1", by_id("sdb"))]


@pytest.mark.parametrize("disk, disk_list, error, words", [
    (None, ["SER-sdb"], ValidationError, "disk is required"),
    ("", ["SER-sdb"], ValidationError, "disk is required"),
    ("/var/tmp/h21-a.img", None, ValidationError, "exactly one"),
    ("/var/tmp/h21-a.img", [], ValidationError, "exactly one"),
    ("/var/tmp/h21-a.img", ["SER-sdb", "SER-sdc"], ValidationError, "exactly one"),
    ("/dev/sdz", ["SER-sdb"], InvalidCandidateError, "not a device of pool"),
    ("h21-a.img", ["SER-sdb"], InvalidCandidateError, "not a device of pool"),
    ("/var/tmp/h21-a.img; rm -rf /", ["SER-sdb"], InvalidCandidateError, "not a device of pool"),
    ("/var/tmp/../tmp/h21-a.img", ["SER-sdb"], InvalidCandidateError, "not a device of pool"),
    ("mirror-0", ["SER-sdb"], InvalidCandidateError, "not a device of pool"),
    ("/dev/mirror-0", ["SER-sdb"], InvalidCandidateError, "not a device of pool"),
    ("h21pool", ["SER-sdb"], InvalidCandidateError, "not a device of pool"),
    ("/var/tmp/h21-d.img", ["SER-sdb"], InvalidCandidateError, "spare device"),
    ("/var/tmp/h21-a.img", ["SER-nope"], InvalidCandidateError, "no such disk"),
    ("/var/tmp/h21-a.img", ["SER-sdh"], InvalidCandidateError, "in use"),
])
def test_replace_refuses_bad_input_and_changes_nothing(env, disk, disk_list, error, words):
    env.disks.entries.append((BlockDevice("/dev/sdh", 2 ** 30, "disk", serial="SER-sdh"), "data", "other"))
    pool_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_OFFLINE_WITH_SPARE,
                           health="DEGRADED")
    with pytest.raises(error, match=words):
        env.svc.action(str(pool_id), "replace", disk=disk, disk_list=disk_list)
    assert env.ops.mutations() == [] and env.zfs.cleared == []


def test_replace_of_a_cache_device_is_refused(env):
    pool_id, _ = make_pool(env, "tank", status_text=STATUS_WITH_LOG_MIRROR_FUSE)
    with pytest.raises(InvalidCandidateError, match="cache device"):
        env.svc.action(str(pool_id), "replace", disk="/dev/loop5", disk_list=["SER-sdb"])
    env.svc.action(str(pool_id), "replace", disk="/dev/loop3", disk_list=["SER-sdb"])  # a log device: yes
    assert env.ops.mutations() == [("replace", "tank", "/dev/loop3", by_id("sdb"))]


def test_a_replace_zfs_refuses_is_invalid_candidate_with_its_words(env):
    pool_id, _ = make_pool(env, "h21pool", pool_type="raid0", status_text=FUSE_OFFLINE_WITH_SPARE)
    env.ops.fail["replace"] = CommandError(["zpool", "replace"], 1, "",
                                           "cannot replace /var/tmp/h21-a.img with /dev/sdb: device is too small\n")
    with pytest.raises(InvalidCandidateError, match="device is too small"):
        env.svc.action(str(pool_id), "replace", disk="/var/tmp/h21-a.img", disk_list=["SER-sdb"])


# =============================================================================================
# delete
# =============================================================================================

def test_delete(env):
    pool_id, _ = make_pool(env, "tank")
    hooked = []
    env.svc.attachments.register(holder(pool_going=lambda pool_id, name: hooked.append(name)))
    env.svc.delete(str(pool_id))
    assert env.ops.mutations() == [("destroy", "tank")]
    assert hooked == ["tank"]
    assert rows(env.store) == [] and env.ops.pools == []


def test_delete_refused_by_zfs_keeps_the_pool(env):
    pool_id, _ = make_pool(env, "tank")
    env.ops.fail["destroy"] = CommandError(["zpool", "destroy"], 1, "", "cannot destroy 'tank': pool is busy\n")
    with pytest.raises(ConflictError):
        env.svc.delete(str(pool_id))
    [row] = rows(env.store)
    assert (row.state, row.owner) == ("ready", None)
    assert env.svc.get(pool_id=str(pool_id))["name"] == "tank"


def test_delete_refused_by_a_hook_keeps_the_pool(env):
    pool_id, _ = make_pool(env, "tank")

    def refuse(pool_id, name):
        raise ConflictError(f"a share of {name} is in use")

    env.svc.attachments.register(holder(pool_going=refuse))
    with pytest.raises(ConflictError):
        env.svc.delete(str(pool_id))
    [row] = rows(env.store)
    assert (row.state, row.owner) == ("ready", None)
    assert env.ops.mutations() == []


def test_delete_guard_runs_before_anything_changes(env):
    pool_id, _ = make_pool(env, "tank")
    seen, hooked = [], []

    def guard(pool_id, name):
        seen.append(rows(env.store)[0].state)
        raise ConflictError("Pool tank holds volumes in replication relationships")

    env.svc.attachments.register(holder(refuse_pool_delete=guard))
    env.svc.attachments.register(holder(pool_going=lambda pool_id, name: hooked.append(name)))
    with pytest.raises(ConflictError, match="relationships"):
        env.svc.delete(str(pool_id))
    assert seen == ["ready"] and hooked == [] and env.ops.mutations() == []
    [row] = rows(env.store)
    assert (row.state, row.owner) == ("ready", None)


def test_delete_lets_shares_go_once_the_pool_is_marked_deleting(env):
    pool_id, _ = make_pool(env, "tank")
    seen = []
    env.svc.attachments.register(holder(pool_going=lambda pool_id, name: seen.append(rows(env.store)[0].state)))
    env.svc.delete(str(pool_id))
    assert seen == ["deleting"]  # a crash from here on finishes the delete at the next start


# =============================================================================================
# encrypted pools
# =============================================================================================

def _keys_dir(env):
    return env.svc.keys.dir


def test_create_encrypted_writes_a_root_only_key_and_points_the_pool_at_it(env):
    env.zfs.has_encryption = True
    result = env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], encryption={"enabled": True})
    [call] = env.ops.mutations()
    props = call[4]
    assert (props["encryption"], props["keyformat"]) == ("aes-256-gcm", "raw")
    [key] = list(_keys_dir(env).iterdir())
    assert props["keylocation"] == f"file://{key}" and key.name.startswith("pool-") and key.suffix == ".key"
    assert key.stat().st_mode & 0o777 == 0o600 and _keys_dir(env).stat().st_mode & 0o777 == 0o700
    assert len(key.read_bytes()) == 32
    assert not any(p.name.startswith(".") for p in _keys_dir(env).iterdir())  # no temporary file left
    [row] = rows(env.store)
    assert (row.state, row.pending) == ("ready", None)  # the intent is gone; the key's bytes never in it
    env.ops.pools[0].props["encryption"] = "aes-256-gcm"
    assert env.svc.get(pool_id=result["id"])["encryption"] == {"enabled": True}
    assert env.svc.list()[0]["encryption"] == {"enabled": True}


def test_a_plain_pool_says_it_is_not_encrypted_and_has_no_key(env):
    env.zfs.has_encryption = True
    result = env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], encryption={"enabled": False})
    assert "encryption" not in env.ops.mutations()[0][4]
    assert not _keys_dir(env).exists()
    env.ops.pools[0].props["encryption"] = "off"
    assert result["encryption"] == {"enabled": False}


def test_encryption_where_zfs_has_none_is_refused_by_name_and_changes_nothing(env):
    with pytest.raises(ValidationError, match="encryption.*zfs-fuse"):
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], encryption={"enabled": True})
    assert rows(env.store) == [] and env.ops.mutations() == [] and not _keys_dir(env).exists()
    # off is fine everywhere, and the view says so without asking ZFS for a property it lacks
    result = env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], encryption={"enabled": False})
    assert result["encryption"] == {"enabled": False}
    assert not any("encryption" in read[2] for read in env.ops.reads if read[0] == "dataset_props")


@pytest.mark.parametrize("bad", [True, "yes", {"enabled": "yes"}, {}, {"enabled": None}])
def test_encryption_must_be_an_object_with_a_boolean(env, bad):
    env.zfs.has_encryption = True
    with pytest.raises(ValidationError, match="encryption"):
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], encryption=bad)
    assert rows(env.store) == [] and env.ops.mutations() == []


def test_a_failed_encrypted_create_leaves_no_key_and_no_row(env):
    env.zfs.has_encryption = True
    env.ops.fail["create"] = CommandError(["zpool", "create"], 1, "", "cannot create 'tank': I/O error\n")
    with pytest.raises(InvalidCandidateError, match="I/O error"):
        env.svc.create(name="tank", pool_type="raid0", disk_list=["SER-sdb"], encryption={"enabled": True})
    assert rows(env.store) == [] and env.ops.pools == []
    assert list(_keys_dir(env).iterdir()) == []


def test_recover_an_encrypted_create_that_never_reached_zfs_removes_its_key(env):
    key = _keys_dir(env) / "pool-0123.key"
    env.svc.keys.create(key)
    add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER, pending={"key": str(key)})
    env.svc.recover()
    assert rows(env.store) == [] and not key.exists()


def test_recover_keeps_a_key_a_pool_of_that_name_may_still_need(env):
    key = _keys_dir(env) / "pool-0123.key"
    env.svc.keys.create(key)
    add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER, pending={"key": str(key)})
    env.zfs.exported.add("tank")  # `zpool import` lists a pool of that name: it may be the one
    env.svc.recover()
    assert rows(env.store) == [] and key.exists()


def test_recover_an_encrypted_create_that_finished_keeps_its_key(env):
    key = _keys_dir(env) / "pool-0123.key"
    env.svc.keys.create(key)
    pool_id = add_row(env.store, name="tank", state="creating", owner=DEAD_OWNER, pending={"key": str(key)})
    env.ops.add_pool("tank", props={PROP_SYSTEM: SYSTEM_ID, PROP_POOL_ID: str(pool_id)})
    env.svc.recover()
    [row] = rows(env.store)
    assert (row.state, row.pending) == ("ready", None) and key.exists()


def _encrypted_pool(env):
    env.zfs.has_encryption = True
    key = _keys_dir(env) / "pool-abcd.key"
    env.svc.keys.create(key)
    pool_id, pool = make_pool(env, "tank", pool_type="raid0",
                              props={"encryption": "aes-256-gcm", "keylocation": f"file://{key}"})
    return pool_id, pool, key


def test_delete_removes_the_key_once_the_pool_is_destroyed(env):
    pool_id, _, key = _encrypted_pool(env)
    env.svc.delete(str(pool_id))
    assert env.ops.pools == [] and rows(env.store) == [] and not key.exists()


def test_a_refused_delete_keeps_the_key(env):
    pool_id, _, key = _encrypted_pool(env)
    env.ops.fail["destroy"] = CommandError(["zpool", "destroy"], 1, "", "pool is busy")
    with pytest.raises(ConflictError):
        env.svc.delete(str(pool_id))
    [row] = rows(env.store)
    assert (row.state, row.pending) == ("ready", None) and key.exists()


def test_recover_an_interrupted_delete_removes_the_key_after_the_pool(env):
    _, pool, key = _encrypted_pool(env)
    with env.store.session() as s:
        row = s.query(Pool).one()
        row.state, row.owner, row.pending = "deleting", DEAD_OWNER, {"key": str(key)}
    env.svc.recover()
    assert env.ops.pools == [] and rows(env.store) == [] and not key.exists()
    # already destroyed when the crash came: the key still goes
    key2 = _keys_dir(env) / "pool-ef01.key"
    env.svc.keys.create(key2)
    add_row(env.store, name="gone", guid="1234", state="deleting", owner=DEAD_OWNER, pending={"key": str(key2)})
    env.svc.recover()
    assert rows(env.store) == [] and not key2.exists()


def test_a_key_outside_the_keys_directory_is_never_removed(env, tmp_path):
    env.zfs.has_encryption = True
    elsewhere = tmp_path / "their.key"
    elsewhere.write_bytes(b"k" * 32)
    pool_id, _ = make_pool(env, "tank", pool_type="raid0",
                           props={"encryption": "aes-256-gcm", "keylocation": f"file://{elsewhere}"})
    env.svc.delete(str(pool_id))
    assert elsewhere.exists()


def test_recover_loads_the_keys_this_appliance_keeps_and_mounts(env):
    _, _, key = _encrypted_pool(env)
    env.ops.locked["tank"] = [("tank", f"file://{key}"), ("tank/replica", "prompt")]
    env.svc.recover()
    assert ("load_key", "tank") in env.ops.calls
    assert ("load_key", "tank/replica") not in env.ops.calls  # a partner's key: not here
    assert env.ops.mount_checks == ["tank"]


def test_recover_on_a_zfs_without_encryption_asks_for_no_key(env):
    make_pool(env, "tank")
    env.svc.recover()
    assert not any(r[0] == "locked_keys" for r in env.ops.reads)
