"""ShareService (with a real Store and StorageLock, fake catalog/volumes/pools/drivers),
the allowed_hosts/share_options validation, and AuthService's on_login hooks that keep Samba's
passwords in step with the API logins."""
from __future__ import annotations

import copy
import hashlib
import os

import pytest
from sqlalchemy import event

from vsnap.config import Settings
from vsnap.drivers.nfs import NfsExport
from vsnap.drivers.runner import CommandError
from vsnap.drivers.smb import SmbShare
from vsnap.drivers.zfs import PoolSummary
from vsnap.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    ValidationError,
)
from vsnap.services import shares as shares_mod
from vsnap.services.attachments import Attachment
from vsnap.services.auth import AuthService
from vsnap.services.catalog import CatalogView, VolumeView, find_one
from vsnap.services.locking import StorageLock
from vsnap.services.shares import ShareService, normalize_host, normalize_options
from vsnap.store.db import Store
from vsnap.store.models import Base, Pool, Share, SmbPassword, Volume

# -- normalize_host --------------------------------------------------------------------------

@pytest.mark.parametrize("entry, expected", [
    ("all", "all"), ("ALL", "all"), ("All", "all"), (" all ", "all"),
    ("10.0.0.5", "10.0.0.5"), (" 10.0.0.5 ", "10.0.0.5"),
    ("::1", "::1"), ("fe80::1", "fe80::1"), ("FE80:0:0::1", "fe80::1"),
    ("2001:db8::/32", "2001:db8::/32"), ("2001:db8:ffff::/32", "2001:db8::/32"),
    ("10.0.0.5/24", "10.0.0.0/24"), ("10.0.0.0/8", "10.0.0.0/8"), ("192.168.1.7/32", "192.168.1.7/32"),
    ("backup1", "backup1"), ("host.example.com", "host.example.com"),
    ("Host.Example.COM", "host.example.com"), ("BACKUP-1", "backup-1"), ("a", "a"), ("1host", "1host"),
])
def test_normalize_host_accepts(entry, expected):
    assert normalize_host(entry) == expected


def test_normalize_host_length_limits():
    label63 = "a" * 63
    assert normalize_host(label63) == label63
    name253 = ".".join(["a" * 63] * 3 + ["b" * 61])  # 63*3 + 61 + 3 dots = 253
    assert len(name253) == 253
    assert normalize_host(name253) == name253
    with pytest.raises(ValidationError):
        normalize_host(name253 + "b")  # 254
    with pytest.raises(ValidationError):
        normalize_host("a" * 64)
    with pytest.raises(ValidationError):
        normalize_host("ok." + "a" * 64 + ".com")


@pytest.mark.parametrize("entry", [
    "", " ", "\t", "bad host", "a;b", 'x" } EXPORT {', "10.0.0.0/33", "300.1.1.1", "1.2.3",
    "-host", "host-", "a..b", ".host", "host.", "a" * 254, "hôst", "хост.example", "ホスト",
    5, None, 1.5, ["host"], b"host", "*", "host(rw)", "*.example.com", "host/24", "10.0.0.1/abc",
    "host\nother", "@netgroup", "a_b",
])
def test_normalize_host_refuses(entry):
    with pytest.raises(ValidationError):
        normalize_host(entry)


@pytest.mark.parametrize("entry", ['fe80::1%x" } EXPORT {', "fe80::1%a b", "fe80::1%a;Access_Type=RW",
                                   "fe80::1%a\nb", "fe80::%a *(rw/64"])
def test_normalize_host_refuses_ipv6_scope_injection(entry):
    with pytest.raises(ValidationError):
        normalize_host(entry)


# -- normalize_options -----------------------------------------------------------------------

@pytest.mark.parametrize("options", [None, {}])
def test_nfs_defaults(options):
    assert normalize_options("nfs", options) == (False, [])


def test_nfs_options():
    assert normalize_options("nfs", {"read_only": True, "allowed_hosts": ["Backup1", "10.0.0.5/24"]}) == \
        (True, ["backup1", "10.0.0.0/24"])
    assert normalize_options("nfs", {"read_only": False, "allowed_hosts": None}) == (False, [])


def test_nfs_duplicates_removed_in_order():
    hosts = ["h2", "10.0.0.1/24", "H2", "all", "10.0.0.0/24", "ALL", "h1", "h2"]
    assert normalize_options("nfs", {"allowed_hosts": hosts}) == (False, ["h2", "10.0.0.0/24", "all", "h1"])


@pytest.mark.parametrize("value", [1, 0, "true", "false", None, [], {}])
def test_read_only_must_be_a_bool(value):
    with pytest.raises(ValidationError):
        normalize_options("nfs", {"read_only": value})


@pytest.mark.parametrize("value", ["host1", ("h1",), {"h1": 1}, 5, True])
def test_allowed_hosts_must_be_a_list(value):
    with pytest.raises(ValidationError):
        normalize_options("nfs", {"allowed_hosts": value})


def test_allowed_hosts_size_limit():
    hosts = [f"h{i}" for i in range(256)]
    assert normalize_options("nfs", {"allowed_hosts": hosts})[1] == hosts
    with pytest.raises(ValidationError):
        normalize_options("nfs", {"allowed_hosts": hosts + ["h256"]})


def test_allowed_hosts_bad_entry():
    with pytest.raises(ValidationError):
        normalize_options("nfs", {"allowed_hosts": ["good", "bad host"]})


@pytest.mark.parametrize("options", [{"readonly": True}, {"read_only": True, "squash": "no"}, {"": 1}])
def test_unknown_option_keys(options):
    with pytest.raises(ValidationError):
        normalize_options("nfs", options)


@pytest.mark.parametrize("options", ["read_only", ["read_only"], 5])
def test_options_must_be_an_object(options):
    with pytest.raises(ValidationError):
        normalize_options("nfs", options)


@pytest.mark.parametrize("options", [None, {}])
def test_smb_without_options(options):
    assert normalize_options("smb", options) == (False, [])


@pytest.mark.parametrize("options", [{"read_only": False}, {"allowed_hosts": []}, {"read_only": True},
                                     {"anything": 1}])
def test_smb_refuses_any_option(options):
    with pytest.raises(ValidationError):
        normalize_options("smb", options)


@pytest.mark.parametrize("share_type", ["NFS", "cifs", "", None, 5, "iscsi"])
def test_unknown_share_type(share_type):
    with pytest.raises(ValidationError):
        normalize_options(share_type, {})


# -- ShareService: fakes ---------------------------------------------------------------------

class FakeCatalog:
    def __init__(self):
        self.volumes: dict[int, VolumeView] = {}

    def load(self, pool_id=None) -> CatalogView:
        return CatalogView(dict(self.volumes), {})


class FakeVolumes:
    def __init__(self, catalog: FakeCatalog):
        self.catalog = catalog

    def find(self, view, vol_id=None, name=None):
        return find_one(view.volumes, vol_id, name, "Volume", "in different pools")

    def view(self, vol_id):
        view = self.catalog.load()
        return self.find(view, vol_id), view


class FakePools:
    def __init__(self):
        self.rows: dict[str, Pool] = {}

    def find(self, pool_id=None, name=None):
        for pname, row in self.rows.items():
            if (name is not None and pname == name) or (pool_id is not None and str(row.id) == str(pool_id)):
                return row, PoolSummary(pname, row.guid or "", "ONLINE")
        raise NotFoundError(f"Pool {name} not found")


class FakeDriver:
    """Records every apply(); raises for the next `fail` calls (or always with fail=-1)."""
    max_share_id = 65535

    def __init__(self):
        self.applied: list[list] = []
        self.fail = 0

    def apply(self, items):
        self.applied.append(copy.deepcopy(list(items)))
        if self.fail:
            if self.fail > 0:
                self.fail -= 1
            raise RuntimeError("server refused")

    @property
    def last(self):
        return self.applied[-1]


class FakeSmb(FakeDriver):
    def __init__(self):
        super().__init__()
        self.passwords: list[tuple[str, str]] = []
        self.password_error: Exception | None = None
        self.samba_users: list[str] = []
        self.removed: list[str] = []

    def set_password(self, user, password):
        self.passwords.append((user, password))
        if self.password_error:
            raise self.password_error

    def users(self):
        return list(self.samba_users)

    def remove_user(self, user):
        self.removed.append(user)


def _no_fsync(dbapi_conn, _record):
    dbapi_conn.execute("PRAGMA synchronous=OFF")


class Env:
    def __init__(self, tmp_path):
        self.store = Store(f"sqlite:///{tmp_path / 'vsnap.db'}")
        # Speed only: runs after the store's own pragmas, so commits skip the fsyncs.
        event.listen(self.store.engine, "connect", _no_fsync)
        Base.metadata.create_all(self.store.engine)
        self.lock = StorageLock(tmp_path / "storage.lock")
        self.catalog = FakeCatalog()
        self.volumes = FakeVolumes(self.catalog)
        self.pools = FakePools()
        self.nfs = FakeDriver()
        self.smb = FakeSmb()
        self.svc = ShareService(self.store, self.catalog, self.volumes, self.nfs, self.smb,
                                self.lock, "vsnap-admins")

    def pool(self, name: str) -> Pool:
        with self.store.session() as s:
            row = Pool(name=name, guid=f"g-{name}", pool_type="raid0", state="ready")
            s.add(row)
            s.flush()
        self.pools.rows[name] = row
        return row

    def volume(self, pool: Pool, name: str, volume_type: str = "filesystem") -> int:
        with self.store.session() as s:
            row = Volume(pool_id=pool.id, name=name, volume_type=volume_type, guid=f"g-{pool.name}-{name}")
            s.add(row)
            s.flush()
        props = {"mountpoint": f"/vsnap/{pool.name}/{name}"} if volume_type != "filebackedlun" else None
        self.catalog.volumes[row.id] = VolumeView(row, pool, pool.name, props)
        return row.id

    def shares(self) -> list[Share]:
        with self.store.session() as s:
            return s.query(Share).order_by(Share.id).all()

    def reset(self):
        self.nfs.applied.clear()
        self.smb.applied.clear()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    e.p = e.pool("p")
    e.q = e.pool("q")
    e.v = e.volume(e.p, "v")
    e.w = e.volume(e.p, "w")
    e.x = e.volume(e.q, "x")
    e.lun = e.volume(e.p, "lun1", "lun")
    return e


# -- ShareService: create / get / list -------------------------------------------------------

def test_create_nfs(env):
    body = env.svc.create(str(env.v), "nfs", {"allowed_hosts": ["all", "10.0.0.5/24"]})
    (row,) = env.shares()
    assert row.volume_id == env.v and row.share_type == "nfs"
    assert row.read_only is False and row.allowed_hosts == ["all", "10.0.0.0/24"]
    assert env.nfs.applied == [[NfsExport(row.id, "/vsnap/p/v", False, ["*"])]]
    assert env.smb.applied == [[]]
    assert body["id"] == str(row.id)
    assert body["name"] == "/vsnap/p/v"
    assert body["vol_id"] == str(env.v)
    assert body["share_type"] == "nfs"
    assert body["share_options"] == {"read_only": False, "allowed_hosts": ["all", "10.0.0.0/24"]}
    assert body["time_created"] == str(row.time_created)


def test_create_nfs_read_only_with_hosts(env):
    env.svc.create(env.v, "nfs", {"read_only": True, "allowed_hosts": ["Backup1", "10.1.2.3"]})
    (row,) = env.shares()
    assert env.nfs.last == [NfsExport(row.id, "/vsnap/p/v", True, ["backup1", "10.1.2.3"])]


def test_create_nfs_without_hosts_exports_to_nobody(env):
    env.svc.create(env.v, "nfs")
    (row,) = env.shares()
    assert env.nfs.last == [NfsExport(row.id, "/vsnap/p/v", False, [])]


def test_create_smb(env):
    body = env.svc.create(env.x, "smb", None)
    (row,) = env.shares()
    assert body["name"] == "q_x"
    assert body["share_options"] == {}
    assert env.smb.applied == [[SmbShare("q_x", "/vsnap/q/x")]]
    assert env.nfs.applied == [[]]


def test_create_on_a_lun_is_refused(env):
    with pytest.raises(ValidationError):
        env.svc.create(env.lun, "nfs", {"allowed_hosts": ["all"]})
    assert env.shares() == []
    assert env.nfs.applied == [] and env.smb.applied == []


def test_create_on_an_unknown_volume(env):
    with pytest.raises(NotFoundError):
        env.svc.create(9999, "nfs")
    assert env.shares() == [] and env.nfs.applied == []


def test_create_bad_options_touches_nothing(env):
    with pytest.raises(ValidationError):
        env.svc.create(env.v, "nfs", {"allowed_hosts": ["bad host"]})
    with pytest.raises(ValidationError):
        env.svc.create(env.v, "smb", {"read_only": True})
    assert env.shares() == [] and env.nfs.applied == []


def test_second_share_of_a_volume_conflicts(env):
    env.svc.create(env.v, "nfs")
    env.reset()
    with pytest.raises(ConflictError):
        env.svc.create(env.v, "smb")
    with pytest.raises(ConflictError):
        env.svc.create(env.v, "nfs", {"read_only": True})
    (row,) = env.shares()
    assert row.share_type == "nfs" and row.read_only is False
    assert env.nfs.applied == [] and env.smb.applied == []


def test_apply_carries_every_share(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.w, "smb")
    env.svc.create(env.x, "nfs", {"read_only": True, "allowed_hosts": ["ALL"]})
    ids = {r.volume_id: r.id for r in env.shares()}
    assert env.nfs.last == [NfsExport(ids[env.v], "/vsnap/p/v", False, ["h1"]),
                            NfsExport(ids[env.x], "/vsnap/q/x", True, ["*"])]
    assert env.smb.last == [SmbShare("p_w", "/vsnap/p/w")]


def test_export_id_is_limited_to_16_bits(env):
    with env.store.session() as s:
        s.add(Share(id=65535, volume_id=env.w, share_type="nfs", read_only=False, allowed_hosts=[]))
    with pytest.raises(ConflictError):
        env.svc.create(env.v, "nfs")
    assert [r.id for r in env.shares()] == [65535]
    assert env.nfs.applied == []


def test_get_and_list(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.x, "smb")
    ids = {r.volume_id: r.id for r in env.shares()}
    listed = env.svc.list()
    assert [b["id"] for b in listed] == [str(ids[env.v]), str(ids[env.x])]
    assert [b["name"] for b in listed] == ["/vsnap/p/v", "q_x"]
    assert all("share_options" not in b for b in listed)
    assert env.svc.get(share_id=str(ids[env.x]))["name"] == "q_x"
    assert env.svc.get(vol_id=str(env.v))["share_options"] == {"read_only": False, "allowed_hosts": ["h1"]}
    with pytest.raises(NotFoundError):
        env.svc.get(share_id="9999")
    with pytest.raises(NotFoundError):
        env.svc.get(vol_id=str(env.w))  # a volume without a share
    with pytest.raises(NotFoundError):
        env.svc.get(vol_id="9999")  # no such volume


def test_shares_of_volumes_not_in_the_view_are_left_out(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.x, "smb")
    del env.catalog.volumes[env.x]  # e.g. its pool is not imported
    env.svc.apply()
    assert env.smb.last == []
    assert [b["vol_id"] for b in env.svc.list()] == [str(env.v)]


# -- update / delete -------------------------------------------------------------------------

def test_update_replaces_the_options(env):
    env.svc.create(env.v, "nfs", {"read_only": False, "allowed_hosts": ["h1", "h2"]})
    (row,) = env.shares()
    body = env.svc.update(str(env.v), "nfs", {"read_only": True})
    (after,) = env.shares()
    assert after.id == row.id
    assert after.read_only is True and after.allowed_hosts == []  # replaced, not merged
    assert body["share_options"] == {"read_only": True, "allowed_hosts": []}
    assert env.nfs.last == [NfsExport(row.id, "/vsnap/p/v", True, [])]


def test_update_changes_the_type(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.update(env.v, "smb")
    (row,) = env.shares()
    assert row.share_type == "smb" and row.allowed_hosts == []
    assert env.nfs.last == []
    assert env.smb.last == [SmbShare("p_v", "/vsnap/p/v")]


def test_update_without_a_share(env):
    with pytest.raises(NotFoundError):
        env.svc.update(env.v, "nfs", {})
    with pytest.raises(NotFoundError):
        env.svc.update(9999, "nfs", {})
    assert env.nfs.applied == []


def test_update_rolls_back_when_the_server_refuses(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    (row,) = env.shares()
    env.reset()
    env.nfs.fail = 1
    with pytest.raises(ServiceUnavailableError):
        env.svc.update(env.v, "nfs", {"read_only": True, "allowed_hosts": ["h2"]})
    (after,) = env.shares()
    assert (after.share_type, after.read_only, after.allowed_hosts) == ("nfs", False, ["h1"])
    assert env.nfs.applied == [[NfsExport(row.id, "/vsnap/p/v", True, ["h2"])],
                               [NfsExport(row.id, "/vsnap/p/v", False, ["h1"])]]


def test_create_is_undone_when_the_server_refuses(env):
    env.svc.create(env.w, "smb")
    env.reset()
    env.nfs.fail = 1
    with pytest.raises(ServiceUnavailableError) as info:
        env.svc.create(env.v, "nfs", {"allowed_hosts": ["all"]})
    assert "server refused" in info.value.message
    assert [r.volume_id for r in env.shares()] == [env.w]
    assert len(env.nfs.applied) == 2
    (new_export,) = env.nfs.applied[0]
    assert new_export.path == "/vsnap/p/v" and new_export.clients == ["*"]
    assert env.nfs.applied[1] == []  # the old state again
    assert env.smb.last == [SmbShare("p_w", "/vsnap/p/w")]
    # the volume can be shared once the server works again
    env.svc.create(env.v, "nfs")
    assert {r.volume_id for r in env.shares()} == {env.v, env.w}


def test_smb_refusal_also_undoes(env):
    env.smb.fail = 1
    with pytest.raises(ServiceUnavailableError):
        env.svc.create(env.v, "smb")
    assert env.shares() == []
    assert env.smb.applied == [[SmbShare("p_v", "/vsnap/p/v")], []]


def test_persistent_server_failure_is_still_service_unavailable(env):
    env.nfs.fail = -1
    with pytest.raises(ServiceUnavailableError):
        env.svc.create(env.v, "nfs")
    assert env.shares() == []


def test_delete_by_share_id_and_by_volume(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.w, "nfs", {"allowed_hosts": ["h2"]})
    env.svc.create(env.x, "smb")
    ids = {r.volume_id: r.id for r in env.shares()}
    env.reset()
    env.svc.delete(share_id=str(ids[env.v]))
    assert env.nfs.last == [NfsExport(ids[env.w], "/vsnap/p/w", False, ["h2"])]
    env.svc.delete(vol_id=str(env.x))
    assert env.smb.last == []
    assert [r.volume_id for r in env.shares()] == [env.w]
    with pytest.raises(NotFoundError):
        env.svc.delete(share_id=str(ids[env.v]))
    with pytest.raises(NotFoundError):
        env.svc.delete(vol_id=str(env.v))


# -- what shares hold: an Attachment of volumes and pools ------------------------------------

def test_shares_hold_volumes_and_pools_as_an_attachment():
    assert issubclass(ShareService, Attachment)
    for reaction in ("volume_going", "pool_going", "volume_renaming", "pool_renaming", "volume_renamed", "pool_renamed",
                     "volume_released", "pool_released", "describe_volume"):
        assert getattr(ShareService, reaction) is not getattr(Attachment, reaction), reaction


def test_release_hooks_make_the_servers_let_go_whatever_the_rows_say(env):
    # A crash between the share row's delete and the servers' reload: the row still there here
    # stands for the servers' stale configuration; the release leaves the volume (or pool) out.
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.w, "smb")
    env.svc.create(env.x, "nfs", {"allowed_hosts": ["h3"]})
    env.reset()
    env.svc.volume_released(env.v)
    assert [e.path for e in env.nfs.applied[-1]] == ["/vsnap/q/x"]
    assert env.smb.applied[-1] == [SmbShare("p_w", "/vsnap/p/w")]
    env.svc.pool_released("p")
    assert [e.path for e in env.nfs.applied[-1]] == ["/vsnap/q/x"] and env.smb.applied[-1] == []


def test_volume_delete_hook_removes_the_share(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.w, "smb")
    env.reset()
    env.svc.volume_going(env.v)
    assert [r.volume_id for r in env.shares()] == [env.w]
    assert env.nfs.applied == [[]]
    assert env.smb.applied == [[SmbShare("p_w", "/vsnap/p/w")]]


def test_volume_delete_hook_without_a_share_does_nothing(env):
    env.svc.create(env.w, "smb")
    env.reset()
    env.svc.volume_going(env.v)
    assert len(env.shares()) == 1
    assert env.nfs.applied == [] and env.smb.applied == []


def test_pool_delete_hook_removes_that_pools_shares(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.w, "smb")
    env.svc.create(env.x, "nfs", {"allowed_hosts": ["h3"]})
    env.reset()
    env.svc.pool_going(env.pools.rows["p"].id, "p")
    (left,) = env.shares()
    assert left.volume_id == env.x
    assert env.nfs.applied == [[NfsExport(left.id, "/vsnap/q/x", False, ["h3"])]]
    assert env.smb.applied == [[]]


def test_pool_rename_hooks(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.w, "smb")
    env.svc.create(env.x, "smb")
    ids = {r.volume_id: r.id for r in env.shares()}
    env.reset()
    env.svc.pool_renaming("p")
    assert env.nfs.applied == [[]]
    assert env.smb.applied == [[SmbShare("q_x", "/vsnap/q/x")]]
    assert len(env.shares()) == 3  # only left out of the servers, not deleted
    env.svc.pool_renamed("p", "p")
    assert env.nfs.last == [NfsExport(ids[env.v], "/vsnap/p/v", False, ["h1"])]
    assert env.smb.last == [SmbShare("p_w", "/vsnap/p/w"), SmbShare("q_x", "/vsnap/q/x")]


def test_volume_rename_hooks(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.svc.create(env.w, "nfs", {"allowed_hosts": ["h2"]})
    ids = {r.volume_id: r.id for r in env.shares()}
    env.reset()
    env.svc.volume_renaming(env.v)
    assert env.nfs.applied == [[NfsExport(ids[env.w], "/vsnap/p/w", False, ["h2"])]]
    # renamed: the catalog now shows the new mountpoint
    env.catalog.volumes[env.v].props = {"mountpoint": "/vsnap/p/v2"}
    env.svc.volume_renamed(env.v, "p/v", "p/v2")
    assert env.nfs.last == [NfsExport(ids[env.v], "/vsnap/p/v2", False, ["h1"]),
                            NfsExport(ids[env.w], "/vsnap/p/w", False, ["h2"])]


def test_decorator_sets_share_id(env):
    env.svc.create(env.v, "nfs")
    (row,) = env.shares()
    decorate = env.svc.describe_volume
    body = {}
    decorate(env.catalog.volumes[env.v].row, body)
    assert body == {"share_id": str(row.id)}
    body = {"name": "w"}
    decorate(env.catalog.volumes[env.w].row, body)
    assert body == {"name": "w", "share_id": None}


def test_recover_rewrites_both_configurations_and_prunes(env):
    env.svc.create(env.v, "nfs", {"allowed_hosts": ["h1"]})
    env.reset()
    env.smb.samba_users = ["alice", "mallory"]
    env.svc.recover({"alice"})
    assert len(env.nfs.applied) == 1 and len(env.smb.applied) == 1
    assert env.smb.removed == ["mallory"]


def test_share_ids_beyond_what_the_nfs_server_numbers_are_refused(env):
    env.nfs.max_share_id = 1  # an appliance whose export ids start high on a shared server
    v1, v2 = env.v, env.w
    env.svc.create(v1, "nfs")
    with pytest.raises(ConflictError, match="No more share ids"):
        env.svc.create(v2, "nfs")
    assert [s["vol_id"] for s in env.svc.list()] == [str(v1)]


def test_smb_share_names_do_not_collide(env):
    a_b, a = env.pool("a_b"), env.pool("a")
    v1, v2 = env.volume(a_b, "c"), env.volume(a, "b_c")
    env.svc.create(v1, "smb")
    with pytest.raises(ConflictError):
        env.svc.create(v2, "smb")


# -- Samba passwords -------------------------------------------------------------------------

def _scrypt(password: str, salt: str) -> str:
    return hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=1 << 14, r=8, p=1).hex()


@pytest.fixture
def cheap_digest(monkeypatch):
    """scrypt at n=2^14 is slow; tests of the bookkeeping use a cheap salted stand-in
    (test_sync_smb_password_first_login_sets_it checks the real one)."""
    def digest(password, salt):
        return hashlib.sha256(bytes.fromhex(salt) + password.encode()).hexdigest()

    monkeypatch.setattr(shares_mod, "_digest", digest)
    return digest


def _pw_rows(env) -> dict[str, SmbPassword]:
    with env.store.session() as s:
        return {r.user: r for r in s.query(SmbPassword).all()}


def test_sync_smb_password_first_login_sets_it(env):
    env.svc.sync_smb_password("alice", "s3cret")
    assert env.smb.passwords == [("alice", "s3cret")]
    row = _pw_rows(env)["alice"]
    assert len(row.salt) == 32 and bytes.fromhex(row.salt)
    assert row.digest == _scrypt("s3cret", row.salt)
    assert "s3cret" not in row.digest and "s3cret" not in row.salt


def test_sync_smb_password_same_password_does_nothing(env, cheap_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    before = _pw_rows(env)["alice"]
    env.svc.sync_smb_password("alice", "s3cret")
    assert env.smb.passwords == [("alice", "s3cret")]
    after = _pw_rows(env)["alice"]
    assert (after.salt, after.digest) == (before.salt, before.digest)


def test_sync_smb_password_changed_password_sets_it_again(env, cheap_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    env.svc.sync_smb_password("alice", "n3w")
    assert env.smb.passwords == [("alice", "s3cret"), ("alice", "n3w")]
    row = _pw_rows(env)["alice"]
    assert row.digest == cheap_digest("n3w", row.salt)
    env.svc.sync_smb_password("alice", "n3w")
    assert len(env.smb.passwords) == 2


def test_sync_smb_password_salts_differ_per_user(env, cheap_digest):
    env.svc.sync_smb_password("alice", "same")
    env.svc.sync_smb_password("bob", "same")
    rows = _pw_rows(env)
    assert rows["alice"].salt != rows["bob"].salt
    assert rows["alice"].digest != rows["bob"].digest
    assert env.smb.passwords == [("alice", "same"), ("bob", "same")]


def test_sync_smb_password_samba_failure_is_swallowed_and_retried(env, cheap_digest):
    env.smb.password_error = CommandError(["smbpasswd"], 1, "", "failed")
    env.svc.sync_smb_password("alice", "s3cret")  # does not raise
    assert env.smb.passwords == [("alice", "s3cret")]
    assert _pw_rows(env) == {}  # nothing recorded: the next login tries again
    env.smb.password_error = None
    env.svc.sync_smb_password("alice", "s3cret")
    assert env.smb.passwords == [("alice", "s3cret")] * 2
    assert "alice" in _pw_rows(env)


def test_sync_smb_password_failed_change_keeps_retrying(env, cheap_digest):
    env.svc.sync_smb_password("alice", "old")
    env.smb.password_error = RuntimeError("smbpasswd missing")
    env.svc.sync_smb_password("alice", "new")
    row = _pw_rows(env)["alice"]
    assert row.digest == cheap_digest("old", row.salt)  # still the one Samba holds
    env.smb.password_error = None
    env.svc.sync_smb_password("alice", "new")
    assert env.smb.passwords[-1] == ("alice", "new")
    assert _pw_rows(env)["alice"].digest == cheap_digest("new", _pw_rows(env)["alice"].salt)


def test_prune_smb_users(env, cheap_digest):
    env.svc.sync_smb_password("alice", "a")
    env.svc.sync_smb_password("bob", "b")
    env.smb.samba_users = ["alice", "bob", "carol"]
    env.svc.prune_smb_users({"alice", "dave"})
    assert env.smb.removed == ["bob", "carol"]
    assert set(_pw_rows(env)) == {"alice"}
    # bob comes back: his password is set again at his next login
    env.svc.sync_smb_password("bob", "b")
    assert env.smb.passwords[-1] == ("bob", "b")


# -- the matched-password memo: scrypt once per password per process -------------------------

@pytest.fixture
def counted_digest(cheap_digest, monkeypatch):
    """The cheap digest, with each call recorded: a call is one scrypt in production."""
    calls = []

    def digest(password, salt):
        calls.append(password)
        return cheap_digest(password, salt)

    monkeypatch.setattr(shares_mod, "_digest", digest)
    digest.calls = calls
    return digest


def _other_process(env) -> ShareService:
    """Another server process: its own ShareService (and memo) over the same database."""
    return ShareService(env.store, env.catalog, env.volumes, FakeDriver(), env.smb, env.lock,
                        "vsnap-admins")


def _store_row(env, user, password, digest) -> str:
    """What another process writes after it set Samba's password: a new salt and its digest."""
    salt = os.urandom(16).hex()
    with env.store.session() as s:
        s.merge(SmbPassword(user=user, salt=salt, digest=digest(password, salt)))
    return salt


def test_sync_smb_password_remembers_a_matched_password(env, counted_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    assert env.smb.passwords == [("alice", "s3cret")] and counted_digest.calls == ["s3cret"]  # stored
    counted_digest.calls.clear()
    for _ in range(3):
        env.svc.sync_smb_password("alice", "s3cret")
    assert counted_digest.calls == []  # no scrypt
    assert env.smb.passwords == [("alice", "s3cret")]  # nor Samba


def test_sync_smb_password_another_process_verifies_once(env, counted_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    other = _other_process(env)
    counted_digest.calls.clear()
    other.sync_smb_password("alice", "s3cret")
    assert counted_digest.calls == ["s3cret"]  # its memo is empty: one check against the row
    other.sync_smb_password("alice", "s3cret")
    assert counted_digest.calls == ["s3cret"]
    assert env.smb.passwords == [("alice", "s3cret")]


def test_sync_smb_password_verifies_again_when_the_row_changed(env, counted_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    salt = _store_row(env, "alice", "s3cret", counted_digest)  # same password, set anew elsewhere
    counted_digest.calls.clear()
    env.svc.sync_smb_password("alice", "s3cret")
    assert counted_digest.calls == ["s3cret"]  # the remembered salt is not the row's: checked
    assert env.smb.passwords == [("alice", "s3cret")]  # it matched: Samba untouched
    assert _pw_rows(env)["alice"].salt == salt
    env.svc.sync_smb_password("alice", "s3cret")
    assert counted_digest.calls == ["s3cret"]  # remembered again


def test_sync_smb_password_sets_it_when_another_process_stored_another(env, counted_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    _store_row(env, "alice", "n3w", counted_digest)  # the password was changed and used elsewhere
    env.svc.sync_smb_password("alice", "s3cret")  # then changed back, and used here
    assert env.smb.passwords == [("alice", "s3cret"), ("alice", "s3cret")]
    row = _pw_rows(env)["alice"]
    assert row.digest == counted_digest("s3cret", row.salt)


def test_sync_smb_password_a_different_password_is_set(env, counted_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    env.svc.sync_smb_password("alice", "n3w")
    env.svc.sync_smb_password("alice", "s3cret")  # the memo follows the last one set
    assert env.smb.passwords == [("alice", "s3cret"), ("alice", "n3w"), ("alice", "s3cret")]


def test_sync_smb_password_memo_is_per_user(env, counted_digest):
    env.svc.sync_smb_password("alice", "same")
    env.svc.sync_smb_password("bob", "same")
    assert env.smb.passwords == [("alice", "same"), ("bob", "same")]


def test_sync_smb_password_sets_it_again_when_the_row_is_gone(env, counted_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    with env.store.session() as s:  # pruned (by this or another process)
        s.delete(s.get(SmbPassword, "alice"))
    env.svc.sync_smb_password("alice", "s3cret")
    assert env.smb.passwords == [("alice", "s3cret")] * 2


def test_sync_smb_password_memo_holds_no_password(env, counted_digest):
    env.svc.sync_smb_password("alice", "s3cret")
    [(salt, keyed)] = env.svc._matched.values()  # a salt and a keyed hash, not the password
    assert salt == _pw_rows(env)["alice"].salt and len(keyed) == 32 and b"s3cret" not in keyed


def test_prune_keeps_everyone_in_the_group(env):
    env.smb.samba_users = ["alice"]
    env.svc.prune_smb_users({"alice"})
    assert env.smb.removed == []


# -- AuthService on_login hooks --------------------------------------------------------------

class FakeAccounts:
    def __init__(self, passwords: dict[str, str], members: set[str]):
        self.passwords = passwords
        self.members = members
        self.auth_calls: list[tuple[str, str]] = []

    def authenticate(self, user, password):
        self.auth_calls.append((user, password))
        return self.passwords.get(user) == password

    def is_member(self, user, group):
        return user in self.members


@pytest.fixture
def auth(tmp_path, clock):
    settings = Settings(state_dir=tmp_path, auth_fail_limit=5, auth_fail_window=60.0,
                        auth_cache_seconds=3.0, admin_group="vsnap-admins")
    accounts = FakeAccounts({"alice": "s3cret", "bob": "hunter2"}, members={"alice"})
    service = AuthService(settings, accounts, clock=clock)
    service.logins = []
    service.on_login.append(lambda user, password: service.logins.append((user, password)))
    return service


def test_on_login_called_on_a_fresh_check(auth):
    assert auth.authenticate("alice", "s3cret", "192.0.2.1") == "alice"
    assert auth.logins == [("alice", "s3cret")]


def test_on_login_not_called_on_cached_hits(auth, clock):
    auth.authenticate("alice", "s3cret", "192.0.2.1")
    clock.advance(1.0)
    auth.authenticate("alice", "s3cret", "192.0.2.2")
    auth.authenticate("alice", "s3cret", "192.0.2.1")
    assert auth.logins == [("alice", "s3cret")]
    assert len(auth.accounts.auth_calls) == 1
    clock.advance(2.5)  # expired: a fresh check again
    auth.authenticate("alice", "s3cret", "192.0.2.1")
    assert auth.logins == [("alice", "s3cret")] * 2


def test_on_login_not_called_for_outsiders_or_failures(auth):
    with pytest.raises(PermissionDeniedError):
        auth.authenticate("bob", "hunter2", "192.0.2.1")
    with pytest.raises(AuthenticationError):
        auth.authenticate("alice", "wrong", "192.0.2.1")
    with pytest.raises(AuthenticationError):
        auth.authenticate("alice", None, "192.0.2.1")
    assert auth.logins == []


def test_on_login_called_for_each_hook_with_a_new_password(auth, clock):
    second = []
    auth.on_login.append(lambda u, p: second.append((u, p)))
    auth.authenticate("alice", "s3cret", "192.0.2.1")
    auth.accounts.passwords["alice"] = "n3w"
    auth.authenticate("alice", "n3w", "192.0.2.1")  # another password: not a cache hit
    assert auth.logins == [("alice", "s3cret"), ("alice", "n3w")]
    assert second == auth.logins


def test_sync_smb_password_as_on_login_hook(env, tmp_path, clock, cheap_digest):
    settings = Settings(state_dir=tmp_path, auth_cache_seconds=3.0, admin_group="vsnap-admins")
    service = AuthService(settings, FakeAccounts({"alice": "s3cret"}, {"alice"}), clock=clock)
    service.on_login.append(env.svc.sync_smb_password)
    service.authenticate("alice", "s3cret", "192.0.2.1")
    service.authenticate("alice", "s3cret", "192.0.2.1")
    assert env.smb.passwords == [("alice", "s3cret")]
    assert "alice" in _pw_rows(env)


def test_module_constants():
    assert shares_mod.MAX_HOSTS == 256
