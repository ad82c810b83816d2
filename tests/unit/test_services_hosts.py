"""HostService and TargetService with the real Store and StorageLock, a fake catalog/volumes/
pools and a fake target driver that records every apply (and can refuse); plus the initiator
name and host name validators."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from vsnap.config import Settings
from vsnap.drivers.iscsi import HostExport, LunExport, TargetDriver, TargetError, TargetPort
from vsnap.errors import ConflictError, NotFoundError, ServiceUnavailableError, ValidationError
from vsnap.services.attachments import Attachment
from vsnap.services.catalog import CatalogView, VolumeView, find_one
from vsnap.services.hosts import (
    MAX_HOST_NAME,
    MAX_INITIATORS,
    MAX_IQN,
    HostService,
    normalize_iqn,
    normalize_iqns,
    validate_host_name,
)
from vsnap.services.targets import TargetService
from vsnap.store.models import Host, HostInitiator, LunMapping, Pool, Volume

from support import SpyLock, empty_tables

INI_1 = "iqn.1993-08.org.debian:01:client1"
INI_2 = "iqn.1993-08.org.debian:01:client2"
INI_3 = "iqn.1991-05.com.microsoft:win3"
EUI = "eui.02004567A425678D"
GIB = 1 << 30


# =============================================================================================
# normalize_iqn(s)
# =============================================================================================

@pytest.mark.parametrize("value, expected", [
    ("iqn.1993-08.org.debian:01:abcdef", "iqn.1993-08.org.debian:01:abcdef"),
    ("IQN.1993-08.ORG.Debian:01:ABCdef", "iqn.1993-08.org.debian:01:abcdef"),
    ("iqn.2026-11.local.probe:client1", "iqn.2026-11.local.probe:client1"),
    ("iqn.1991-05.com.microsoft:win-host.example.com", "iqn.1991-05.com.microsoft:win-host.example.com"),
    ("iqn.2001-04.com.example", "iqn.2001-04.com.example"),
    ("iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
     "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309"),
    ("iqn.2026-01.x", "iqn.2026-01.x"), ("iqn.2026-12.a-b.c1", "iqn.2026-12.a-b.c1"),
    ("iqn.2026-10.1host.example:a", "iqn.2026-10.1host.example:a"),
    ("eui.02004567a425678d", "eui.02004567A425678D"),
    ("EUI.02004567A425678D", "eui.02004567A425678D"),
    ("Eui.02004567a425678D", "eui.02004567A425678D"),
    ("naa.52004567ba64678d", "naa.52004567BA64678D"),
    ("NAA.6001405abcdef0123456789abcdef012", "naa.6001405ABCDEF0123456789ABCDEF012"),
])
def test_normalize_iqn_accepts(value, expected):
    assert normalize_iqn(value) == expected


def test_normalize_iqn_length_limit():
    head = "iqn.2026-11.local.x:"
    longest = head + "a" * (MAX_IQN - len(head))
    assert len(longest) == 223
    assert normalize_iqn(longest) == longest
    with pytest.raises(ValidationError):
        normalize_iqn(longest + "a")


@pytest.mark.parametrize("value", [
    # dates
    "iqn.2026-13.local.x", "iqn.2026-00.local.x", "iqn.2026-1.local.x", "iqn.26-11.local.x",
    "iqn.20261-11.local.x", "iqn.2026_11.local.x", "iqn.2026.local.x",
    # no date / no domain
    "iqn.local.x:abc", "iqn.local", "iqn.2026-11", "iqn.2026-11.", "iqn.2026-11:abc", "iqn.",
    # underscores, spaces, empty or bad labels
    "iqn.2026-11.local_x:abc", "iqn.2026-11.local.x:a_b", "iqn.2026-11.local.x:a b",
    " iqn.2026-11.local.x", "iqn.2026-11.local.x ", "iqn.2026-11.local.x\t",
    "iqn.2026-11..local", "iqn.2026-11.local.", "iqn.2026-11.-local.x", "iqn.2026-11.local-.x",
    "iqn.2026-11.local.x:", "iqn.2026-11.lócal.x", "iqn.2026-11.local.x:ä",
    # wrong prefixes and forms
    "iqm.2026-11.local.x", "iqn2026-11.local.x", "eui2004567A425678D", "eui.0200456", "eui.02004567A425678DA",
    "eui.02004567A425678G", "naa.123", "naa." + "A" * 20, "naa." + "A" * 31, "naa." + "A" * 33,
    "wwn.02004567A425678D", "nqn.2014-08.org.nvmexpress:uuid:1", "local.x", "2026-11.local.x",
    # shell metacharacters, option-looking names, control characters
    "iqn.2026-11.local.x:a;rm", "iqn.2026-11.local.x:$(id)", "iqn.2026-11.local.x:`id`",
    "iqn.2026-11.local.x:a|b", "iqn.2026-11.local.x:a&b", "iqn.2026-11.local.x:a>b",
    "iqn.2026-11.local.x:a\nb", "iqn.2026-11.local.x:a,b", "iqn.2026-11.local.x:a=b",
    "iqn.2026-11.local.x:a'b", 'iqn.2026-11.local.x:a"b', "iqn.2026-11.local.x:*",
    "-iqn.2026-11.local.x", "--force", "-Q", "-",
    # too long
    "iqn.2026-11.local.x:" + "a" * 204,
])
def test_normalize_iqn_refuses(value):
    with pytest.raises(ValidationError):
        normalize_iqn(value)


@pytest.mark.parametrize("value", [None, 5, 1.5, True, b"iqn.2026-11.local.x", ["iqn.2026-11.local.x"],
                                   {"iqn": "iqn.2026-11.local.x"}, ""])
def test_normalize_iqn_refuses_non_strings(value):
    with pytest.raises(ValidationError):
        normalize_iqn(value)


def test_normalize_iqn_refuses_non_ascii_digits_in_the_date():
    with pytest.raises(ValidationError):
        normalize_iqn("iqn.\u0662\u0660\u0662\u0666-11.local.x")


def test_normalize_iqns():
    assert normalize_iqns(None) == []
    assert normalize_iqns([]) == []
    assert normalize_iqns([INI_2, INI_1.upper(), INI_2, INI_1, EUI.lower(), EUI]) == [INI_2, INI_1, EUI]
    many = [f"iqn.2026-11.local.x:c{i}" for i in range(MAX_INITIATORS)]
    assert normalize_iqns(many) == many
    with pytest.raises(ValidationError):
        normalize_iqns(many + ["iqn.2026-11.local.x:one-more"])
    with pytest.raises(ValidationError):
        normalize_iqns([INI_1, "bad name"])


@pytest.mark.parametrize("value", [INI_1, (INI_1,), {INI_1}, {"a": INI_1}, 5])
def test_normalize_iqns_wants_a_list(value):
    with pytest.raises(ValidationError):
        normalize_iqns(value)


# =============================================================================================
# validate_host_name
# =============================================================================================

@pytest.mark.parametrize("name", ["h", "host1", "Backup-Server-1", "db-01.example.com", "10.0.0.5",
                                  "a" * MAX_HOST_NAME, "x_y"])
def test_host_name_accepted(name):
    assert validate_host_name(name) == name


@pytest.mark.parametrize("name", ["", " ", "\t", " lead", "trail ", "a" * (MAX_HOST_NAME + 1),
                                  "new\nline", "tab\there", "bell\x07", "nul\x00", None, 5, ["h"], b"h",
                                  # as every other name: no path, shell or option characters
                                  "a/b", "../h", "-h", ".h", "$(id)", "a;b", "Backup Server 1", "ホスト",
                                  "with 'quotes'"])
def test_host_name_refused(name):
    with pytest.raises(ValidationError):
        validate_host_name(name)


# =============================================================================================
# fakes
# =============================================================================================

class FakeCatalog:
    def __init__(self):
        self.volumes: dict[int, VolumeView] = {}
        self.loads = 0

    def load(self, pool_id=None) -> CatalogView:
        self.loads += 1
        return CatalogView(dict(self.volumes), {})


class FakeVolumes:
    def __init__(self, catalog: FakeCatalog):
        self.catalog = catalog
        self.backings: dict[int, object] = {}  # vol id -> (path, size), or an exception to raise

    def find(self, view, vol_id=None, name=None):
        return find_one(view.volumes, vol_id, name, "Volume", "in different pools")

    def backing(self, v: VolumeView, view: CatalogView):
        found = self.backings[v.row.id]
        if isinstance(found, Exception):
            raise found
        return found


class FakeTargetDriver(TargetDriver):
    """Records every apply; refuses the next `fail` of them (every one with fail=-1). Its
    state() is a token that changes with each successful apply, or what a test sets."""

    name = "fake"
    first_lun = 1
    max_lun = 255

    def __init__(self):
        super().__init__("not-chosen-yet")
        self.applies: list[tuple[list[HostExport], frozenset]] = []
        self.fail = 0
        self.current: object = ("nothing applied",)
        self.state_error: Exception | None = None
        self.ports: list[TargetPort] = []
        self.targets_error: Exception | None = None

    def apply(self, hosts, refresh=frozenset()):
        self.applies.append((list(hosts), refresh))
        if self.fail:
            if self.fail > 0:
                self.fail -= 1
            raise TargetError("tgtadm --op bind --mode target: tgtadm: this target is still active")
        self.current = ("applied", len(self.applies))

    def state(self):
        if self.state_error:
            raise self.state_error
        return self.current

    def targets(self):
        if self.targets_error:
            raise self.targets_error
        return list(self.ports)

    @property
    def last(self) -> list[HostExport]:
        return self.applies[-1][0]


class Env:
    def __init__(self, store, tmp_path: Path):
        self.store = store
        self.lock = SpyLock(tmp_path / "storage.lock")
        self.catalog = FakeCatalog()
        self.volumes = FakeVolumes(self.catalog)

        self.driver = FakeTargetDriver()
        self.chosen: list[str] = []
        self.settings = Settings(state_dir=tmp_path)
        self.system = SimpleNamespace(id="0a1b2c3d")

        def choose(base_iqn):
            self.chosen.append(base_iqn)
            self.driver.base_iqn = base_iqn
            return self.driver

        self.targets = TargetService(self.settings, self.system, store, self.catalog, self.volumes, self.lock,
                                     choose)
        self.svc = HostService(store, self.targets, self.catalog, self.volumes, self.lock)
        self.pool_ids: dict[str, int] = {}

    def pool(self, name: str) -> Pool:
        with self.store.session() as s:
            row = Pool(name=name, guid=f"g-{name}", pool_type="raid0", state="ready")
            s.add(row)
            s.flush()
        self.pool_ids[name] = row.id
        return row

    def volume(self, pool: Pool, name: str, volume_type: str = "lun", size: int = GIB, **fields) -> int:
        serial = f"serial-{pool.name}-{name}" if volume_type != "filesystem" else None
        with self.store.session() as s:
            row = Volume(pool_id=pool.id, name=name, volume_type=volume_type, guid=f"g-{pool.name}-{name}",
                         serial=serial, **fields)
            s.add(row)
            s.flush()
        props = None if volume_type == "filebackedlun" else {"mountpoint": f"/vsnap/{pool.name}/{name}"}
        self.catalog.volumes[row.id] = VolumeView(row, pool, pool.name, props)
        if volume_type == "lun":
            self.volumes.backings[row.id] = (f"/dev/zvol/{pool.name}/{name}", size)
        elif volume_type == "filebackedlun":
            self.volumes.backings[row.id] = (f"/vsnap/{pool.name}/{fields['parent_path']}", size)
        return row.id

    def lun(self, number: int, vol_id: int) -> LunExport:
        v = self.catalog.volumes[vol_id]
        path, size = self.volumes.backings[vol_id]
        return LunExport(number, vol_id, path, v.row.serial, size)

    def dump(self) -> dict:
        with self.store.session() as s:
            return {
                "hosts": [(h.id, h.name, h.time_created, h.time_updated) for h in s.query(Host).order_by(Host.id)],
                "initiators": [(i.host_id, i.position, i.iqn) for i in
                               s.query(HostInitiator).order_by(HostInitiator.host_id, HostInitiator.position)],
                "mappings": [(m.id, m.host_id, m.volume_id, m.lun, m.time_created) for m in
                             s.query(LunMapping).order_by(LunMapping.id)],
            }

    def luns_of(self, host_id) -> dict[int, int]:
        """LUN number -> volume id of a host, from the database."""
        with self.store.session() as s:
            return {m.lun: m.volume_id for m in s.query(LunMapping).filter(LunMapping.host_id == int(host_id))}


@pytest.fixture
def env(store, workdir):
    empty_tables(store)
    e = Env(store, Path(tempfile.mkdtemp(dir=workdir)))
    e.p = e.pool("p")
    e.q = e.pool("q")
    e.v1 = e.volume(e.p, "lun1")
    e.v2 = e.volume(e.p, "lun2", size=2 * GIB)
    e.v3 = e.volume(e.q, "lun3", size=3 * GIB)
    e.fs = e.volume(e.p, "fs", "filesystem")
    e.fb = e.volume(e.p, "fb", "filebackedlun", size=100_000_000, parent_id=e.fs, parent_path="fs/fb.img")
    yield e
    empty_tables(store)


def applied_hosts(env) -> dict[int, tuple[tuple[str, ...], tuple[LunExport, ...]]]:
    return {h.host_id: (h.initiators, h.luns) for h in env.driver.last}


# =============================================================================================
# hosts: create / get / list
# =============================================================================================

def test_create_and_get(env):
    body = env.svc.create("h1", [INI_1, INI_2])
    assert body["id"] == "1" and body["name"] == "h1"
    assert body["iqns"] == [INI_1, INI_2]
    assert body["mapped_luns"] == []
    assert set(body) == {"id", "name", "iqns", "mapped_luns", "time_created", "time_updated"}
    (row,) = env.dump()["hosts"]
    assert body["time_created"] == str(row[2]) and body["time_updated"] == str(row[3])
    assert env.driver.applies == [([HostExport(1, (INI_1, INI_2), ())], frozenset())]
    assert env.lock.taken >= 1
    assert env.chosen == [f"{env.settings.iqn_prefix}:0a1b2c3d"]


def test_create_normalizes_and_keeps_order(env):
    body = env.svc.create("h1", [INI_2.upper(), EUI.lower(), INI_1, INI_2])
    assert body["iqns"] == [INI_2, EUI, INI_1]
    assert env.dump()["initiators"] == [(1, 0, INI_2), (1, 1, EUI), (1, 2, INI_1)]
    assert env.driver.last == [HostExport(1, (INI_2, EUI, INI_1), ())]


def test_create_without_iqns(env):
    assert env.svc.create("h1")["iqns"] == []
    assert env.driver.last == [HostExport(1, (), ())]


def test_list_and_get_by_id_and_name(env):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2, INI_3])
    listed = env.svc.list()
    assert [(b["id"], b["name"], b["iqns"]) for b in listed] == [("1", "h1", [INI_1]), ("2", "h2", [INI_2, INI_3])]
    assert all("mapped_luns" not in b for b in listed)
    assert env.svc.get(host_id="2")["name"] == "h2"
    assert env.svc.get(host_id=2)["iqns"] == [INI_2, INI_3]
    assert env.svc.get(name="h1")["id"] == "1"
    assert env.svc.get(host_id="1", name="h1")["id"] == "1"


@pytest.mark.parametrize("host_id, name", [("3", None), ("abc", None), ("-1", None), ("1.0", None),
                                           (None, "nope"), ("1", "h2"), (None, "H1")])
def test_get_unknown(env, host_id, name):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    with pytest.raises(NotFoundError):
        env.svc.get(host_id=host_id, name=name)


def test_duplicate_name_conflicts_and_writes_nothing(env):
    env.svc.create("h1", [INI_1])
    before, applies = env.dump(), len(env.driver.applies)
    with pytest.raises(ConflictError) as info:
        env.svc.create("h1", [INI_2])
    assert info.value.status == 409
    assert env.dump() == before and len(env.driver.applies) == applies


@pytest.mark.parametrize("iqns", [[INI_1], [INI_3, INI_1.upper()]])
def test_initiator_of_another_host_conflicts_and_writes_nothing(env, iqns):
    env.svc.create("h1", [INI_2, INI_1])
    before, applies = env.dump(), len(env.driver.applies)
    with pytest.raises(ConflictError, match="h1"):
        env.svc.create("h2", iqns)
    assert env.dump() == before and len(env.driver.applies) == applies


@pytest.mark.parametrize("name, iqns", [("", [INI_1]), (" h", [INI_1]), ("h", ["bad"]), ("h", INI_1),
                                        (None, None)])
def test_invalid_create_writes_nothing(env, name, iqns):
    with pytest.raises(ValidationError):
        env.svc.create(name, iqns)
    assert env.dump()["hosts"] == [] and env.driver.applies == []


# =============================================================================================
# hosts: update / delete
# =============================================================================================

def test_update_name_only_does_not_touch_the_target(env):
    env.svc.create("h1", [INI_1])
    applies = len(env.driver.applies)
    body = env.svc.update("1", name="renamed")
    assert body["name"] == "renamed" and body["iqns"] == [INI_1]
    assert env.dump()["hosts"][0][1] == "renamed"
    assert len(env.driver.applies) == applies
    assert env.svc.get(name="renamed")["id"] == "1"


def test_update_to_the_same_name_is_fine(env):
    env.svc.create("h1", [INI_1])
    assert env.svc.update(1, name="h1")["name"] == "h1"


def test_update_to_a_taken_name_conflicts(env):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    before = env.dump()
    with pytest.raises(ConflictError):
        env.svc.update("2", name="h1", iqns=[INI_3])
    assert env.dump() == before


def test_update_iqns_replaces_keeps_order_collapses_duplicates_and_applies(env):
    env.svc.create("h1", [INI_1, INI_2])
    env.svc.map("1", env.v1)
    body = env.svc.update("1", iqns=[INI_3, INI_2.upper(), INI_3, EUI])
    assert body["iqns"] == [INI_3, INI_2, EUI]
    assert env.dump()["initiators"] == [(1, 0, INI_3), (1, 1, INI_2), (1, 2, EUI)]
    assert env.driver.last == [HostExport(1, (INI_3, INI_2, EUI), (env.lun(1, env.v1),))]
    assert body["mapped_luns"] == [{"lun": "1", "vol_id": str(env.v1)}]


def test_update_iqns_to_empty(env):
    env.svc.create("h1", [INI_1])
    assert env.svc.update(1, iqns=[])["iqns"] == []
    assert env.driver.last == [HostExport(1, (), ())]


def test_update_with_nothing_changes_nothing_but_the_time(env):
    env.svc.create("h1", [INI_1])
    applies = len(env.driver.applies)
    assert env.svc.update(1)["iqns"] == [INI_1]
    assert len(env.driver.applies) == applies


def test_update_iqns_held_by_another_host(env):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    before, applies = env.dump(), len(env.driver.applies)
    with pytest.raises(ConflictError):
        env.svc.update("2", iqns=[INI_2, INI_1])
    assert env.dump() == before and len(env.driver.applies) == applies


def test_update_unknown_and_invalid(env):
    env.svc.create("h1", [INI_1])
    before = env.dump()
    with pytest.raises(NotFoundError):
        env.svc.update("7", name="x")
    with pytest.raises(ValidationError):
        env.svc.update("1", name=" x")
    with pytest.raises(ValidationError):
        env.svc.update("1", iqns=["iqn.bad"])
    assert env.dump() == before


def test_delete(env):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    env.svc.map("1", env.v1)
    env.svc.delete("1")
    d = env.dump()
    assert [h[1] for h in d["hosts"]] == ["h2"]
    assert d["initiators"] == [(2, 0, INI_2)] and d["mappings"] == []
    assert env.driver.last == [HostExport(2, (INI_2,), ())]
    with pytest.raises(NotFoundError):
        env.svc.delete("1")
    # its initiator is free again
    assert env.svc.create("h3", [INI_1])["iqns"] == [INI_1]


# =============================================================================================
# mapping
# =============================================================================================

def test_map_allocates_the_lowest_free_lun_from_first_lun(env):
    env.svc.create("h1", [INI_1])
    assert env.svc.map("1", str(env.v1)) == {"vol_id": str(env.v1), "lun": "1"}
    assert env.svc.map("1", env.v2) == {"vol_id": str(env.v2), "lun": "2"}
    assert env.svc.map("1", env.fb) == {"vol_id": str(env.fb), "lun": "3"}  # file-backed LUNs too
    assert env.driver.last == [HostExport(1, (INI_1,), (env.lun(1, env.v1), env.lun(2, env.v2),
                                                        env.lun(3, env.fb)))]
    assert env.svc.get(1)["mapped_luns"] == [{"lun": "1", "vol_id": str(env.v1)},
                                             {"lun": "2", "vol_id": str(env.v2)},
                                             {"lun": "3", "vol_id": str(env.fb)}]


def test_map_honours_the_drivers_first_lun(env):
    env.driver.first_lun = 0
    env.svc.create("h1", [INI_1])
    assert env.svc.map(1, env.v1)["lun"] == "0"
    assert env.svc.map(1, env.v2)["lun"] == "1"


def test_lun_numbers_stay_after_unmapping_a_middle_one(env):
    env.svc.create("h1", [INI_1])
    for vol in (env.v1, env.v2, env.v3):
        env.svc.map("1", vol)
    env.svc.unmap("1", env.v2)
    assert env.luns_of(1) == {1: env.v1, 3: env.v3}
    assert env.driver.last == [HostExport(1, (INI_1,), (env.lun(1, env.v1), env.lun(3, env.v3)))]
    assert env.svc.map("1", env.fb)["lun"] == "2"  # the gap
    assert env.svc.map("1", env.v2)["lun"] == "4"
    assert env.luns_of(1) == {1: env.v1, 2: env.fb, 3: env.v3, 4: env.v2}


def test_one_volume_to_several_hosts(env):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    env.svc.map(1, env.v2)
    env.svc.map(2, env.v1)
    env.svc.map(2, env.v2)
    assert applied_hosts(env) == {1: ((INI_1,), (env.lun(1, env.v2),)),
                                  2: ((INI_2,), (env.lun(1, env.v1), env.lun(2, env.v2)))}


def test_map_twice_conflicts(env):
    env.svc.create("h1", [INI_1])
    env.svc.map(1, env.v1)
    before, applies = env.dump(), len(env.driver.applies)
    with pytest.raises(ConflictError, match="already mapped"):
        env.svc.map(1, env.v1)
    assert env.dump() == before and len(env.driver.applies) == applies


def test_map_a_filesystem_is_refused(env):
    env.svc.create("h1", [INI_1])
    applies = len(env.driver.applies)
    with pytest.raises(ValidationError) as info:
        env.svc.map(1, env.fs)
    assert info.value.status == 400
    assert env.dump()["mappings"] == [] and len(env.driver.applies) == applies


@pytest.mark.parametrize("host_id, vol", [("9", "v1"), ("x", "v1"), ("1", 999), ("1", "abc")])
def test_map_unknown_host_or_volume(env, host_id, vol):
    env.svc.create("h1", [INI_1])
    applies = len(env.driver.applies)
    with pytest.raises(NotFoundError):
        env.svc.map(host_id, getattr(env, vol) if vol == "v1" else vol)
    assert env.dump()["mappings"] == [] and len(env.driver.applies) == applies


def test_map_a_busy_volume_conflicts(env):
    env.svc.create("h1", [INI_1])
    env.catalog.volumes[env.v1].row.state = "deleting"
    with pytest.raises(ConflictError, match="busy"):
        env.svc.map(1, env.v1)
    assert env.dump()["mappings"] == []


def test_map_a_volume_whose_data_cannot_be_served(env):
    env.svc.create("h1", [INI_1])
    env.volumes.backings[env.fb] = ValidationError("The parent filesystem of fb is not available")
    with pytest.raises(ValidationError, match="parent filesystem"):
        env.svc.map(1, env.fb)
    assert env.dump()["mappings"] == []


def test_no_free_lun_number(env):
    env.driver.max_lun = 3
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    for vol in (env.v1, env.v2, env.v3):
        env.svc.map(1, vol)
    before, applies = env.dump(), len(env.driver.applies)
    with pytest.raises(ConflictError, match="no free LUN"):
        env.svc.map(1, env.fb)
    assert env.dump() == before and len(env.driver.applies) == applies
    assert env.svc.map(2, env.fb)["lun"] == "1"  # per host


def test_unmap(env):
    env.svc.create("h1", [INI_1])
    env.svc.map(1, env.v1)
    env.svc.unmap("1", str(env.v1))
    assert env.dump()["mappings"] == []
    assert env.driver.last == [HostExport(1, (INI_1,), ())]


def test_unmap_what_is_not_mapped(env):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    env.svc.map(2, env.v1)
    before, applies = env.dump(), len(env.driver.applies)
    with pytest.raises(NotFoundError):
        env.svc.unmap(1, env.v1)  # mapped, but to the other host
    with pytest.raises(NotFoundError):
        env.svc.unmap(1, env.v2)
    with pytest.raises(NotFoundError):
        env.svc.unmap(7, env.v1)
    with pytest.raises(NotFoundError):
        env.svc.unmap(1, 999)
    assert env.dump() == before and len(env.driver.applies) == applies


def test_volume_details_carry_host_ids(env):
    env.svc.create("h1", [INI_1])
    env.svc.create("h2", [INI_2])
    env.svc.create("h3", [INI_3])
    env.svc.map(3, env.v1)
    env.svc.map(1, env.v1)
    decorate = env.svc.describe_volume
    body = {}
    decorate(env.catalog.volumes[env.v1].row, body)
    assert body == {"host_ids": ["1", "3"]}
    decorate(env.catalog.volumes[env.v2].row, body)
    assert body == {"host_ids": []}


# =============================================================================================
# the target refuses: 503 and the database as it was
# =============================================================================================

def _populated(env):
    env.svc.create("h1", [INI_2, INI_1])
    env.svc.create("h2", [EUI, INI_3])
    env.svc.map(1, env.v1)
    env.svc.map(1, env.v2)
    env.svc.map(1, env.v3)
    env.svc.unmap(1, env.v2)  # a gap: numbers must come back as they were
    env.svc.map(2, env.v1)


OPERATIONS = {
    "create": lambda env: env.svc.create("h3", ["iqn.2026-11.local.x:new"]),
    "update": lambda env: env.svc.update(1, name="other", iqns=[INI_1, "iqn.2026-11.local.x:new"]),
    "map": lambda env: env.svc.map(1, env.fb),
    "unmap": lambda env: env.svc.unmap(1, env.v3),
    "delete": lambda env: env.svc.delete(1),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_target_refusal_is_503_and_leaves_the_database_as_it_was(env, operation):
    _populated(env)
    before, config_before = env.dump(), env.driver.last
    env.driver.applies.clear()
    env.driver.fail = 1
    with pytest.raises(ServiceUnavailableError) as info:
        OPERATIONS[operation](env)
    assert info.value.status == 503
    assert "this target is still active" in info.value.message
    assert env.dump() == before
    # tried once with the change, then put back as it was
    assert len(env.driver.applies) == 2
    assert env.driver.applies[0][0] != config_before
    assert env.driver.last == config_before
    # and the same change works once the target does
    OPERATIONS[operation](env)
    assert env.dump() != before


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_target_refusing_the_restore_too(env, operation, caplog):
    _populated(env)
    before = env.dump()
    env.driver.fail = -1
    with caplog.at_level(logging.ERROR, logger="vsnap.services.targets"):
        with pytest.raises(ServiceUnavailableError):
            OPERATIONS[operation](env)
    assert env.dump() == before
    assert "could not put the iSCSI target configuration back" in caplog.text


def test_restored_delete_keeps_ids_and_times(env):
    _populated(env)
    before = env.dump()
    env.driver.fail = 1
    with pytest.raises(ServiceUnavailableError):
        env.svc.delete(1)
    assert env.dump() == before
    assert env.svc.get(1)["mapped_luns"] == [{"lun": "1", "vol_id": str(env.v1)},
                                             {"lun": "3", "vol_id": str(env.v3)}]
    assert env.svc.get(1)["iqns"] == [INI_2, INI_1]


# =============================================================================================
# what LUN mappings hold: an Attachment of volumes and pools
# =============================================================================================

def test_lun_mappings_hold_volumes_and_pools_as_an_attachment():
    assert issubclass(HostService, Attachment)
    for reaction in ("volume_going", "pool_going", "volume_renaming", "pool_renaming", "volume_renamed", "pool_renamed",
                     "volume_resized", "volume_released", "pool_released", "describe_volume"):
        assert getattr(HostService, reaction) is not getattr(Attachment, reaction), reaction


def test_volume_delete_hook_unmaps_and_its_undo_maps_back(env):
    _populated(env)
    before = env.dump()
    undo = env.svc.volume_going(env.v1)
    assert [m[2] for m in env.dump()["mappings"]] == [env.v3]
    assert applied_hosts(env) == {1: ((INI_2, INI_1), (env.lun(3, env.v3),)), 2: ((EUI, INI_3), ())}
    undo()
    assert env.dump() == before
    assert applied_hosts(env) == {1: ((INI_2, INI_1), (env.lun(1, env.v1), env.lun(3, env.v3))),
                                  2: ((EUI, INI_3), (env.lun(1, env.v1),))}


def test_volume_delete_hook_for_an_unmapped_volume_does_nothing(env):
    _populated(env)
    applies = len(env.driver.applies)
    assert env.svc.volume_going(env.v2) is None
    assert len(env.driver.applies) == applies


def test_volume_delete_hook_refused_by_the_target(env):
    _populated(env)
    before = env.dump()
    env.driver.fail = 1
    with pytest.raises(ServiceUnavailableError):
        env.svc.volume_going(env.v1)
    assert env.dump() == before


def test_pool_delete_hook_unmaps_that_pools_volumes_only(env):
    _populated(env)
    env.svc.map(2, env.fb)
    before = env.dump()
    undo = env.svc.pool_going(env.pool_ids["p"], "p")
    assert [(m[1], m[2], m[3]) for m in env.dump()["mappings"]] == [(1, env.v3, 3)]
    assert applied_hosts(env) == {1: ((INI_2, INI_1), (env.lun(3, env.v3),)), 2: ((EUI, INI_3), ())}
    undo()
    assert env.dump() == before


def test_volume_rename_hooks(env):
    _populated(env)
    before = env.dump()
    undo = env.svc.volume_renaming(env.v1)
    # left out of the target so it lets go of the data, but still mapped
    assert applied_hosts(env) == {1: ((INI_2, INI_1), (env.lun(3, env.v3),)), 2: ((EUI, INI_3), ())}
    assert env.dump() == before
    undo()  # the rename failed: back in the target
    full = {1: ((INI_2, INI_1), (env.lun(1, env.v1), env.lun(3, env.v3))), 2: ((EUI, INI_3), (env.lun(1, env.v1),))}
    assert applied_hosts(env) == full
    env.svc.volume_renaming(env.v1)
    env.volumes.backings[env.v1] = ("/dev/zvol/p/renamed", GIB)
    env.svc.volume_renamed(env.v1, "p/lun1", "p/renamed")
    assert applied_hosts(env)[1][1][0].path == "/dev/zvol/p/renamed"
    assert env.dump() == before


def test_volume_rename_hook_releases_file_backed_luns_inside_the_volume(env):
    env.svc.create("h1", [INI_1])
    env.svc.map(1, env.fb)  # its image file is inside the filesystem volume fs
    env.svc.volume_renaming(env.fs)
    assert applied_hosts(env) == {1: ((INI_1,), ())}


def test_pool_rename_hooks(env):
    _populated(env)
    env.svc.map(2, env.fb)
    undo = env.svc.pool_renaming("p")
    assert applied_hosts(env) == {1: ((INI_2, INI_1), (env.lun(3, env.v3),)), 2: ((EUI, INI_3), ())}
    undo()
    assert [len(luns) for _, luns in applied_hosts(env).values()] == [2, 2]
    env.svc.pool_renaming("q")
    assert applied_hosts(env) == {1: ((INI_2, INI_1), (env.lun(1, env.v1),)),
                                  2: ((EUI, INI_3), (env.lun(1, env.v1), env.lun(2, env.fb)))}
    env.svc.pool_renamed("q", "q2")
    assert [len(luns) for _, luns in applied_hosts(env).values()] == [2, 2]


def test_rename_hook_refused_by_the_target_is_a_target_error(env):
    # Attachments let it through; the API maps TargetError to 503 (services.system_error).
    _populated(env)
    env.driver.fail = 1
    with pytest.raises(TargetError):
        env.svc.volume_renaming(env.v1)


def test_resize_hook_refreshes_that_volume(env):
    _populated(env)
    env.volumes.backings[env.v1] = ("/dev/zvol/p/lun1", 2 * GIB)
    env.svc.volume_resized(env.v1)
    hosts, refresh = env.driver.applies[-1]
    assert refresh == frozenset({env.v1})
    assert {h.host_id: h.luns[0].size for h in hosts} == {1: 2 * GIB, 2: 2 * GIB}


# =============================================================================================
# TargetService
# =============================================================================================

def test_base_iqn_and_driver_chosen_once(env):
    assert env.targets.base_iqn == "iqn.2026-11.local.vsnap:0a1b2c3d"
    assert env.chosen == []  # not before first use
    assert env.targets.driver is env.driver
    assert env.targets.driver is env.driver
    assert env.chosen == ["iqn.2026-11.local.vsnap:0a1b2c3d"]
    assert env.driver.base_iqn == "iqn.2026-11.local.vsnap:0a1b2c3d"


def test_wanted(env):
    _populated(env)
    env.svc.map(2, env.fb)
    env.svc.create("empty", [])
    view = env.catalog.load()
    assert env.targets.wanted(view) == [
        HostExport(1, (INI_2, INI_1), (env.lun(1, env.v1), env.lun(3, env.v3))),
        HostExport(2, (EUI, INI_3), (env.lun(1, env.v1), env.lun(2, env.fb))),
        HostExport(3, (), ()),
    ]
    lun = env.targets.wanted(view)[0].luns[0]
    assert (lun.path, lun.serial, lun.size, lun.read_only) == ("/dev/zvol/p/lun1", "serial-p-lun1", GIB, False)


@pytest.mark.parametrize("broken", [ValidationError("Volume lun1 is not available in ZFS"),
                                    FileNotFoundError(2, "No such file or directory")])
def test_wanted_leaves_out_luns_whose_backing_cannot_be_resolved(env, broken, caplog):
    _populated(env)
    env.volumes.backings[env.v1] = broken
    with caplog.at_level(logging.WARNING, logger="vsnap.services.targets"):
        wanted = env.targets.wanted(env.catalog.load())
    assert wanted == [HostExport(1, (INI_2, INI_1), (env.lun(3, env.v3),)), HostExport(2, (EUI, INI_3), ())]
    assert "left out of the target" in caplog.text
    assert caplog.text.count("left out of the target") == 1  # once per volume, not per mapping


def test_wanted_leaves_out_volumes_not_ready_or_not_in_the_view(env):
    _populated(env)
    env.svc.map(2, env.fb)
    view = env.catalog.load()
    view.volumes[env.v1].row.state = "deleting"
    del view.volumes[env.fb]  # e.g. its pool is not imported
    assert env.targets.wanted(view) == [HostExport(1, (INI_2, INI_1), (env.lun(3, env.v3),)),
                                        HostExport(2, (EUI, INI_3), ())]


def test_wanted_excludes_a_volume_or_a_pool(env):
    _populated(env)
    env.svc.map(2, env.fb)
    view = env.catalog.load()
    assert env.targets.wanted(view, exclude_volume=env.v3) == [
        HostExport(1, (INI_2, INI_1), (env.lun(1, env.v1),)),
        HostExport(2, (EUI, INI_3), (env.lun(1, env.v1), env.lun(2, env.fb)))]
    assert env.targets.wanted(view, exclude_pool="p") == [
        HostExport(1, (INI_2, INI_1), (env.lun(3, env.v3),)), HostExport(2, (EUI, INI_3), ())]
    assert env.targets.wanted(view, exclude_pool="nope") == env.targets.wanted(view)


def test_apply_uses_the_lock_and_the_catalog(env):
    env.svc.create("h1", [INI_1])
    taken, loads = env.lock.taken, env.catalog.loads
    env.targets.apply()
    assert env.lock.taken > taken and env.catalog.loads == loads + 1
    env.targets.apply(env.catalog.load())
    assert env.catalog.loads == loads + 2  # a view given is used, not loaded again


def test_check_reapplies_only_when_the_target_changed(env):
    env.svc.create("h1", [INI_1])
    applies = len(env.driver.applies)
    env.targets.check()
    env.targets.check()
    assert len(env.driver.applies) == applies
    env.driver.current = ("tgtd restarted",)
    env.targets.check()
    assert len(env.driver.applies) == applies + 1
    assert env.driver.last == [HostExport(1, (INI_1,), ())]
    env.targets.check()
    assert len(env.driver.applies) == applies + 1


def test_check_full_always_reapplies(env):
    env.svc.create("h1", [INI_1])
    applies = len(env.driver.applies)
    env.targets.check(full=True)
    env.targets.check(full=True)
    assert len(env.driver.applies) == applies + 2


def test_check_applies_when_nothing_was_applied_yet(env):
    env.targets.check()
    assert env.driver.applies == [([], frozenset())]


def test_check_logs_a_failure_once_and_the_recovery(env, caplog):
    env.svc.create("h1", [INI_1])
    env.driver.current = ("changed",)
    env.driver.fail = -1
    with caplog.at_level(logging.INFO, logger="vsnap.services.targets"):
        for _ in range(3):
            env.targets.check()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "could not be applied" in errors[0].getMessage()
        env.driver.fail = 0
        env.targets.check()
        assert "applied again" in caplog.text
        env.driver.fail = -1
        env.driver.current = ("changed again",)
        env.targets.check()
        env.targets.check()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_check_survives_state_failing(env, caplog):
    env.svc.create("h1", [INI_1])
    env.driver.state_error = TargetError("tgt: tgtadm did not finish within 120 s")
    with caplog.at_level(logging.ERROR, logger="vsnap.services.targets"):
        env.targets.check()
        env.targets.check()
    assert caplog.text.count("did not finish") == 1


def test_recover_failure_is_logged_and_check_stays_quiet(env, caplog):
    env.svc.create("h1", [INI_1])
    env.driver.fail = -1
    with caplog.at_level(logging.ERROR, logger="vsnap.services.targets"):
        env.targets.recover()
        env.targets.check(full=True)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert "at start" in caplog.text


def test_list_targets(env):
    env.driver.ports = [TargetPort("iqn.2026-11.local.vsnap:0a1b2c3d:host1", 1),
                        TargetPort("iqn.2026-11.local.vsnap:0a1b2c3d", None)]
    assert env.targets.list() == [
        {"type": "iqn", "wwn": "iqn.2026-11.local.vsnap:0a1b2c3d:host1", "host_id": "1"},
        {"type": "iqn", "wwn": "iqn.2026-11.local.vsnap:0a1b2c3d", "host_id": None}]


def test_list_targets_when_the_target_service_is_down(env):
    env.driver.targets_error = TargetError("tgtadm --op show --mode target: failed to send request hdr")
    with pytest.raises(ServiceUnavailableError, match="not available") as info:
        env.targets.list()
    assert info.value.status == 503
