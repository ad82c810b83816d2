"""load_or_create_system_id: one id per appliance, made once, racing first starts agree; init
changes only what it is given."""
from __future__ import annotations

import re
import uuid

import pytest

from vsnap.config import Settings
from vsnap.services import system
from vsnap.services.system import load_or_create_system_id

from support import empty_tables


def test_creates_a_32_hex_id_once(tmp_path):
    path = tmp_path / "state" / "system-id"  # parent does not exist yet
    first = load_or_create_system_id(path)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert path.read_text() == first + "\n"
    assert load_or_create_system_id(path) == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["system-id"]  # no temp files left


def test_two_appliances_get_different_ids(tmp_path):
    assert load_or_create_system_id(tmp_path / "a" / "system-id") != \
        load_or_create_system_id(tmp_path / "b" / "system-id")


def test_existing_id_is_kept(tmp_path):
    path = tmp_path / "system-id"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    assert load_or_create_system_id(path) == "0123456789abcdef0123456789abcdef"
    assert path.read_text() == "0123456789abcdef0123456789abcdef\n"


def test_racing_start_that_wrote_first_wins(tmp_path, monkeypatch):
    path = tmp_path / "system-id"
    winner = "ffffffffffffffffffffffffffffffff"
    real_uuid4 = uuid.uuid4

    def racing_uuid4():
        # another process creates the file between our read and our link
        path.write_text(winner + "\n")
        return real_uuid4()

    monkeypatch.setattr(system.uuid, "uuid4", racing_uuid4)
    assert load_or_create_system_id(path) == winner
    assert path.read_text() == winner + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["system-id"]


@pytest.mark.parametrize("content", ["", "short\n", "Z" * 32, "0123456789abcdef0123456789ABCDEF"])
def test_corrupt_system_id_is_refused_not_replaced(tmp_path, content):
    path = tmp_path / "system-id"
    path.write_text(content)
    with pytest.raises(RuntimeError, match="corrupt"):
        load_or_create_system_id(path)
    assert path.read_text() == content


# -- init changes only what it is given --------------------------------------------------------
class _Packages:
    def versions(self, names):
        return {name: None for name in names}

    def os_release(self):
        return None, None


class _Zfs:
    def version(self):
        return None

    def stream_features(self):
        return frozenset()


@pytest.fixture
def service(tmp_path, store):
    empty_tables(store)
    svc = system.SystemService(Settings(state_dir=tmp_path), store, _Packages(), _Zfs(),
                               make_default_pool=lambda: None)
    yield svc
    empty_tables(store)


def test_init_without_multipool_leaves_the_setting_as_it_is(service):
    assert service.init(run_async=False, multipool=None, skip_pool=True)["multipool"] is False  # new: off
    assert service.init(run_async=False, multipool=True, skip_pool=True)["multipool"] is True
    info = service.init(run_async=False, multipool=None, skip_pool=True)
    assert (info["multipool"], info["init_status"]) == (True, "Ready")
    assert service.init(run_async=False, multipool=False, skip_pool=True)["multipool"] is False
    assert service.init(run_async=False, multipool=None, skip_pool=True)["multipool"] is False


def _record_init(service, status, owner):
    with service.store.session() as s:
        service._set(s, "init_status", status)
        service._set(s, "init_owner", owner)


def test_an_init_whose_process_died_is_recorded_as_interrupted(service):
    _record_init(service, "Initializing", "999999999:1")  # no such process
    assert service._status() == ("Failed", "Initialization was interrupted; run init again")
    with service.store.session() as s:
        assert service._get(s, "init_status") == "Failed"


def test_an_init_that_ends_while_its_status_is_read_is_not_called_interrupted(service, monkeypatch):
    # The status was read while the init ran; it ends (its owner cleared) before the owner is
    # judged: the status read must not be recorded over the end.
    _record_init(service, "Initializing", "999999999:1")

    def ended_meanwhile(owner):
        service._finish("Ready", None)
        return False

    monkeypatch.setattr(system, "owner_alive", ended_meanwhile)
    assert service._status() == ("Ready", None)
    with service.store.session() as s:
        assert service._get(s, "init_status") == "Ready"


# -- stats ------------------------------------------------------------------------------------
class _StatsZfs(_Zfs):
    def __init__(self, ddt):
        self.ddt = ddt

    def arc_stats(self):
        return {"c_max": 1024, "size": 512}

    def ddt_sizes(self, pool):
        return self.ddt.get(pool)


def test_stats_without_pools_has_an_empty_dedup_table(tmp_path, store):
    svc = system.SystemService(Settings(state_dir=tmp_path), store, _Packages(), _StatsZfs({}))
    stats = svc.stats([])
    assert (stats["size_ddt_core"], stats["size_ddt_disk"]) == ("0", "0")
    assert (stats["size_arc_max"], stats["size_arc_used"]) == ("1024", "512")


def test_stats_sums_the_dedup_table_and_says_null_when_zfs_cannot_tell(tmp_path, store):
    svc = system.SystemService(Settings(state_dir=tmp_path), store, _Packages(),
                               _StatsZfs({"a": (100, 10), "b": (50, 5)}))
    stats = svc.stats(["a", "b"])
    assert (stats["size_ddt_disk"], stats["size_ddt_core"]) == ("150", "15")
    assert svc.stats(["a", "unreadable"])["size_ddt_disk"] is None


def test_features_say_what_this_appliance_offers_beyond_the_spec(tmp_path, store):
    zfs = _Zfs()
    svc = system.SystemService(Settings(state_dir=tmp_path), store, _Packages(), zfs)
    assert svc.features() == ["bandwidth_limit"]  # zfs-fuse: the relay's limit only
    zfs.stream_features = lambda: frozenset({"compressed", "large_blocks", "resumable"})
    assert svc.features() == ["bandwidth_limit", "compressed_send", "resumable_send"]
    assert svc.info()["features"] == ["bandwidth_limit", "compressed_send", "resumable_send"]
    # OpenZFS: native encryption, its volumes replicated raw
    zfs.stream_features = lambda: frozenset({"compressed", "raw", "encryption", "resumable"})
    assert svc.features() == ["bandwidth_limit", "compressed_send", "encryption", "resumable_send"]
    zfs.stream_features = lambda: frozenset({"encryption"})  # no raw sends: no encrypted pools offered
    assert svc.features() == ["bandwidth_limit"]
