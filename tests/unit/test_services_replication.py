"""ReplicationService with the real Store and StorageLock; fakes for the catalog, volumes,
snapshots, pools, network, datasets and SSH driver, and a fake PartnerLink (svc.link) that
records every request to a partner and answers what a test set (or raises RemoteError).
The TLS side of partnering (certificate_fingerprint, PartnerApi, file_fingerprint) is
monkeypatched. Also: validate_address / validate_port, and PartnerLink over a FakeRunner."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

import vsnap.services.replication as replication
import vsnap.services.replication.partners as partners_mod
import vsnap.services.replication.sender as sender_mod
from vsnap.config import Settings
from vsnap.drivers.partner_api import PartnerApiError
from vsnap.drivers.pipeline import PipelineResult, PipelineStopped
from vsnap.drivers.runner import CommandError, CommandTimeout
from vsnap.drivers.ssh import normalize_public_key
from vsnap.drivers.zfs import ZfsDatasetOps
from vsnap.errors import ConflictError, NotFoundError, ServiceUnavailableError, ValidationError
from vsnap.services.catalog import CatalogView, SnapshotView, VolumeView, find_one
from vsnap.services.doorbell import Doorbell
from vsnap.services.hooks import Hooks
from vsnap.services.owner import current_owner
from vsnap.services.replication import (
    ACTIVE,
    CANCELED,
    COMPLETED,
    FAILED,
    PENDING,
    PRIMARY,
    REPLICA,
    PartnerLink,
    RemoteError,
    ReplicationService,
    validate_address,
    validate_port,
)
from vsnap.services.replication.partners import Partners
from vsnap.store.models import Partner, Pool, Relationship, ReplicationSession, Setting, Snapshot, Volume

from support import SpyLock, empty_tables

OUR_SYS = "0a1b2c3d4e5f6071"
REMOTE_SYS = "aabbccddeeff0011"
OUR_FP = "1" * 64
REMOTE_FP = "ab" * 32
OUR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuH9wN9ZUgXshf6jc+vPfHTS4pKh0dKpeUn4UKb05fQ"
OUR_HOST = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKLt7XkMdLLYriLXFKCyPbcoF"
            "km+9wxAdvbe2H02bUGGwiVxycFS0s5xvtP64AD/tWqDdB5cXZ821wh9xeOSQgQ=")
PARTNER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPartnerKeyPartnerKeyPartnerKeyPartnerKey0"
PARTNER_HOST = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPartnerHostPartnerHostPartnerHostPartnerH"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOtherKeyOt"
P1 = "0123456789abcdef0123456789abcdef"
P2 = "fedcba9876543210fedcba9876543210"
R1 = "11111111111111111111111111111111"
R2 = "22222222222222222222222222222222"
GIB = 1 << 30


# =============================================================================================
# validate_address / validate_port
# =============================================================================================

@pytest.mark.parametrize("value, expected", [
    ("10.0.0.5", "10.0.0.5"), (" 10.0.0.5 ", "10.0.0.5"), ("partner.example.com", "partner.example.com"),
    ("Partner.Example.COM", "partner.example.com"), ("vsnap-b", "vsnap-b"), ("::1", "::1"),
    ("fd00:0:0::5", "fd00::5"),
])
def test_validate_address_accepts(value, expected):
    assert validate_address(value, "remote_addr") == expected


@pytest.mark.parametrize("value", [
    "-oProxyCommand=x", "-oProxyCommand=touch /tmp/x", "-p", "-", "--", "a b", "", " ", "\t", "all", "ALL",
    "10.0.0.0/24", "fe80::1/64", "fe80::1%eth0", "host;id", "$(id)", "`id`", "x\ny", "user@host",
    "host:22", "[::1]", "a" * 300, "-host", "host-", "1.2.3", "999.1.1.1", None, 5, True, b"10.0.0.1",
    ["10.0.0.1"],
])
def test_validate_address_refuses(value):
    with pytest.raises(ValidationError, match="remote_addr|allowed_hosts"):
        validate_address(value, "remote_addr")


@pytest.mark.parametrize("value", ["-oProxyCommand=x", "a b", "", "fe80::1%eth0"])
def test_validate_address_error_names_the_field(value):
    with pytest.raises(ValidationError) as info:
        validate_address(value, "remote_addr")
    assert "remote_addr" in info.value.message and "allowed_hosts" not in info.value.message


@pytest.mark.parametrize("value", [1, 22, 8922, 65535])
def test_validate_port_accepts(value):
    assert validate_port(value, "port") == value


@pytest.mark.parametrize("value", [0, 65536, -1, True, False, "22", "x", 22.0, None, [22]])
def test_validate_port_refuses(value):
    with pytest.raises(ValidationError, match="port"):
        validate_port(value, "port")


# =============================================================================================
# fakes
# =============================================================================================

class FakeCatalog:
    def __init__(self):
        self.volumes: dict[int, VolumeView] = {}
        self.snapshots: dict[int, SnapshotView] = {}
        self.loads = 0
        self.load_args: list = []

    def load(self, pool_id=None) -> CatalogView:
        self.loads += 1
        self.load_args.append(pool_id)
        return CatalogView({k: v for k, v in self.volumes.items() if pool_id is None or v.row.pool_id == pool_id},
                           {k: s for k, s in self.snapshots.items()
                            if pool_id is None or s.volume.row.pool_id == pool_id})


class FakeVolumes:
    def __init__(self, env):
        self.env = env
        self.refuse_volume_delete = Hooks()
        self.before_volume_delete = Hooks()
        self.before_volume_rename = Hooks()
        self.backings: dict[int, tuple[str, int]] = {}
        self.created: list[dict] = []
        self.deleted: list[int] = []

    def find(self, view, vol_id=None, name=None):
        return find_one(view.volumes, vol_id, name, "Volume", "in different pools")

    def backing(self, v, view):
        return self.backings[v.row.id]

    def create(self, *, name, volume_type=None, pool_id=None, size_total=None, size_block=None):
        self.created.append({"name": name, "volume_type": volume_type, "pool_id": pool_id,
                             "size_total": size_total, "size_block": size_block})
        pool = next(p for p in self.env.pool_rows if str(p.id) == str(pool_id))
        vol_id = self.env.volume(pool, name, volume_type)
        return {"id": str(vol_id), "name": name}

    def delete(self, vol_id) -> None:
        v = self.find(self.env.catalog.load(), vol_id)
        self.refuse_volume_delete.run(v.row.id)  # like the real one: the guards may refuse
        self.before_volume_delete.run(v.row.id)
        self.deleted.append(v.row.id)
        del self.env.catalog.volumes[v.row.id]
        with self.env.store.session() as s:
            s.delete(s.get(Volume, v.row.id))


class FakeSnapshots:
    def __init__(self, env):
        self.env = env
        self.created: list = []

    def create(self, vol_id, name=None):
        self.created.append(vol_id)
        snap_id = self.env.snapshot(int(vol_id), name or f"auto-{len(self.created)}")
        return self.get(snap_id=snap_id)

    def get(self, snap_id=None, name=None):
        snap = find_one(self.env.catalog.snapshots, snap_id, name, "Snapshot", "of different volumes")
        return {"id": str(snap.row.id), "name": snap.row.name, "parent_id": str(snap.volume.row.id)}


class FakePools:
    def __init__(self, env):
        self.env = env
        self.refuse_pool_delete = Hooks()
        self.before_pool_delete = Hooks()

    def live(self):
        return [(row, SimpleNamespace(name=row.name)) for row in self.env.pool_rows]


class FakeNetwork:
    def __init__(self):
        self.ifaces = [
            {"name": "eth0", "services": ["mgmt", "repl"], "ip4_addrs": ["10.0.0.1"]},
            {"name": "eth1", "services": ["nfs"], "ip4_addrs": ["10.1.0.1"]},
            {"name": "eth2", "services": ["repl"], "ip4_addrs": ["10.2.0.1", "10.2.0.9"]},
        ]

    def list(self):
        return self.ifaces


class FakeDs:
    send_argv = staticmethod(ZfsDatasetOps.send_argv)

    def __init__(self, env):
        self.env = env
        self.calls: list[tuple] = []
        self.receive_error: Exception | None = None
        self.unmount_error: Exception | None = None
        self.set_error: Exception | None = None
        self.has_zvols = True

    def unmount(self, name):
        self.calls.append(("unmount", name))
        if self.unmount_error:
            raise self.unmount_error

    def set(self, name, prop, value):
        self.calls.append(("set", name, prop, value))
        if self.set_error:
            raise self.set_error

    def mount(self, name):
        self.calls.append(("mount", name))

    def receive(self, target, *, full, stdin):
        self.calls.append(("receive", target, full, stdin))
        if self.receive_error:
            raise self.receive_error
        dataset, _, snap_name = target.partition("@")
        vol = next(v for v in self.env.catalog.volumes.values() if v.dataset == dataset)
        self.env.snapshot(vol.row.id, snap_name)  # what the catalog's reconcile would find


class FakeSsh:
    """Records the keys authorized and the host keys pinned, per partner id."""

    def __init__(self):
        self.authorized: dict[str, tuple[str, list[str]]] = {}
        self.pinned: dict[str, str] = {}
        self.log: list[tuple] = []

    def public_key(self):
        return OUR_KEY

    def host_key(self):
        return OUR_HOST

    def authorize(self, partner_id, key, command):
        self.log.append(("authorize", partner_id))
        self.authorized[partner_id] = (normalize_public_key(key), list(command))

    def deauthorize(self, partner_id):
        self.log.append(("deauthorize", partner_id))
        self.authorized.pop(partner_id, None)

    def pin_host_key(self, partner_id, key):
        self.log.append(("pin", partner_id))
        self.pinned[partner_id] = normalize_public_key(key)

    def unpin_host_key(self, partner_id):
        self.log.append(("unpin", partner_id))
        self.pinned.pop(partner_id, None)

    def command(self, partner_id, address, port, remote):
        return ["ssh-fake", partner_id, address, str(port), "--", *remote]


class FakeLink:
    """Stands in for PartnerLink. `answers[op]` is a dict, an exception, or a callable
    (partner, args, body) -> dict."""

    def __init__(self, ssh: FakeSsh):
        self.ssh = ssh
        self.calls: list[SimpleNamespace] = []
        self.answers: dict[str, object] = {}

    def call(self, partner, op, *args, body=None, address=None, timeout=None):
        self.calls.append(SimpleNamespace(partner_id=partner.id, address=partner.address, port=partner.ssh_port,
                                          op=op, args=list(args), body=body, via=address,
                                          pinned=self.ssh.pinned.get(partner.id)))
        if op == "prepare" and "prepare" not in self.answers:
            # The partner's `prepare` answers what `info` and `snapshots` would, in one request.
            merged = {}
            for part in ("info", "snapshots"):
                answer = self._answer(part, partner, args, body)
                if isinstance(answer, BaseException):
                    raise answer
                merged.update(answer)
            return json.loads(json.dumps(merged))
        answer = self._answer(op, partner, args, body)
        if isinstance(answer, BaseException):
            raise answer
        return json.loads(json.dumps(answer))

    def _answer(self, op, partner, args, body):
        answer = self.answers.get(op, {})
        return answer(partner, list(args), body) if callable(answer) else answer

    def ops(self) -> list[str]:
        return [c.op for c in self.calls]


class FakeApi:
    """Replaces PartnerApi: records each construction and post; answers `answer` or raises `error`."""

    def __init__(self):
        self.answer: object = None
        self.error: Exception | None = None
        self.posts: list[dict] = []

    def __call__(self, address, port, fingerprint, timeout=60):
        api = self

        class _Api:
            def post(self, path, body, auth):
                api.posts.append({"address": address, "port": port, "fingerprint": fingerprint, "path": path,
                                  "body": json.loads(json.dumps(body)), "auth": auth})
                if api.error is not None:
                    raise api.error
                return json.loads(json.dumps(api.answer))
        return _Api()


def good_answer(**over) -> dict:
    answer = {"system_id": REMOTE_SYS, "ssh_public_key": PARTNER_KEY + " vsnap-replication",
              "ssh_host_key": PARTNER_HOST + " root@vsnap-b", "ssh_port": 8922, "api_port": 8900}
    answer.update(over)
    return answer


def offer(**over) -> dict:
    body = {"id": P1, "system_id": REMOTE_SYS, "address": "10.0.0.2", "api_port": 8900, "ssh_port": 8922,
            "tls_fingerprint": REMOTE_FP, "ssh_public_key": PARTNER_KEY + " c", "ssh_host_key": PARTNER_HOST}
    body.update(over)
    return body


class Env:
    def __init__(self, store, tmp_path: Path, monkeypatch):
        self.store = store
        self.settings = Settings(state_dir=tmp_path, repl_stall_seconds=7.0, repl_cancel_wait=0.3)
        self.lock = SpyLock(tmp_path / "storage.lock")
        self.catalog = FakeCatalog()
        self.volumes = FakeVolumes(self)
        self.snapshots = FakeSnapshots(self)
        self.pools = FakePools(self)
        self.network = FakeNetwork()
        self.system = SimpleNamespace(id=OUR_SYS)
        self.ds = FakeDs(self)
        self.ssh = FakeSsh()
        self.pool_rows: list[Pool] = []
        self.link = FakeLink(self.ssh)
        monkeypatch.setattr(replication, "PartnerLink", lambda ssh, runner: self.link)  # every part's link
        self.svc = ReplicationService(self.settings, store, self.catalog, self.volumes, self.snapshots, self.pools,
                                      self.network, self.system, self.ds, self.ssh, runner=None, lock=self.lock)
        self.api = FakeApi()
        self.api.answer = good_answer()
        self.certs: dict[tuple[str, int], object] = {}
        self.cert_calls: list[tuple[str, int]] = []

        def certificate_fingerprint(address, port, timeout=10):
            self.cert_calls.append((address, port))
            found = self.certs.get((address, port), REMOTE_FP)
            if isinstance(found, Exception):
                raise found
            return found
        monkeypatch.setattr(partners_mod, "certificate_fingerprint", certificate_fingerprint)
        monkeypatch.setattr(partners_mod, "PartnerApi", self.api)
        monkeypatch.setattr(partners_mod, "file_fingerprint", lambda path: OUR_FP)

    # -- rows ---------------------------------------------------------------------------------
    def pool(self, name: str) -> Pool:
        with self.store.session() as s:
            row = Pool(name=name, guid=f"g-{name}", pool_type="raid0", state="ready")
            s.add(row)
            s.flush()
        self.pool_rows.append(row)
        return row

    def volume(self, pool: Pool, name: str, volume_type: str = "filesystem", size: int = GIB, **fields) -> int:
        with self.store.session() as s:
            row = Volume(pool_id=pool.id, name=name, volume_type=volume_type, guid=f"g-{pool.name}-{name}",
                         size_block=fields.pop("size_block", 8192 if volume_type == "lun" else None), **fields)
            s.add(row)
            s.flush()
        props = None if volume_type == "filebackedlun" else \
            {"type": "volume"} if volume_type == "lun" else {"mountpoint": f"/vsnap/{pool.name}/{name}"}
        self.catalog.volumes[row.id] = VolumeView(row, pool, pool.name, props)
        if volume_type == "lun":
            self.volumes.backings[row.id] = (f"/dev/zvol/{pool.name}/{name}", size)
        return row.id

    def snapshot(self, vol_id: int, name: str, guid: str | None = None, creation: int | None = None) -> int:
        with self.store.session() as s:
            row = Snapshot(volume_id=vol_id, name=name)
            s.add(row)
            s.flush()
        props = {"guid": guid or f"{9000 + row.id}", "creation": str(creation or 1_700_000_000 + row.id)}
        self.catalog.snapshots[row.id] = SnapshotView(row, self.catalog.volumes[vol_id], props)
        return row.id

    def partner(self, partner_id: str = P1, system_id: str = REMOTE_SYS, address: str = "10.0.0.2",
                ssh_port: int = 8922) -> str:
        with self.store.session() as s:
            s.add(Partner(id=partner_id, system_id=system_id, address=address, api_port=8900, ssh_port=ssh_port,
                          tls_fingerprint=REMOTE_FP, ssh_host_key=PARTNER_HOST, ssh_public_key=PARTNER_KEY))
        self.ssh.authorized[partner_id] = (PARTNER_KEY, self.svc.serve_command(partner_id))
        self.ssh.pinned[partner_id] = PARTNER_HOST
        return partner_id

    def relationship(self, vol_id: int, partner_id: str = P1, role: str = PRIMARY, rel_id: str | None = None,
                     remote_vol_id: str = "77") -> str:
        rel_id = rel_id or uuid.uuid4().hex
        with self.store.session() as s:
            s.add(Relationship(id=rel_id, partner_id=partner_id, local_role=role, local_vol_id=vol_id,
                               remote_pool_id="5", remote_vol_id=remote_vol_id, remote_vol_name="remote"))
        return rel_id

    def session(self, rel_id: str, snap_id: int | None = None, status: str = PENDING, owner: str | None = None,
                message: str | None = None) -> int:
        with self.store.session() as s:
            row = ReplicationSession(rel_id=rel_id, local_snap_id=snap_id, local_snap_name=f"s{snap_id}",
                                     remote_snap_name=f"s{snap_id}", status=status, owner=owner, message=message)
            s.add(row)
            s.flush()
        return row.id

    # -- reading back ---------------------------------------------------------------------------
    def partners(self) -> dict[str, Partner]:
        with self.store.session() as s:
            rows = s.query(Partner).all()
            s.expunge_all()
        return {r.id: r for r in rows}

    def rels(self) -> dict[str, Relationship]:
        with self.store.session() as s:
            rows = s.query(Relationship).all()
            s.expunge_all()
        return {r.id: r for r in rows}

    def sess(self, session_id: int) -> ReplicationSession:
        with self.store.session() as s:
            row = s.get(ReplicationSession, session_id)
            s.expunge_all()
        return row


@pytest.fixture
def env(store, workdir, monkeypatch):
    empty_tables(store)
    e = Env(store, Path(tempfile.mkdtemp(dir=workdir)), monkeypatch)
    e.p = e.pool("p")
    e.fs = e.volume(e.p, "fs")
    e.lun = e.volume(e.p, "lun1", "lun", size=3 * GIB)
    e.fb = e.volume(e.p, "fb", "filebackedlun", parent_id=e.fs, parent_path="fs/fb.img")
    yield e
    empty_tables(store)


def create(env, remote_addr="10.0.0.2", user="admin", password="pw", **kw):
    kw.setdefault("local_addr", "10.0.0.1")
    return env.svc.create_partner(remote_addr, user, password, **kw)


# =============================================================================================
# create_partner
# =============================================================================================

def test_create_partner_success(env):
    body = create(env, remote_addr="Partner.Example.COM", user="admin", password="s3cret")
    partner_id = body["id"]
    assert len(partner_id) == 32 and int(partner_id, 16) >= 0
    assert body == {"id": partner_id, "address": "partner.example.com", "api_port": "8900", "ssh_port": "8922",
                    "time_created": body["time_created"], "time_updated": body["time_updated"]}
    (row,) = env.partners().values()
    assert (row.id, row.system_id, row.address, row.api_port, row.ssh_port, row.tls_fingerprint) == \
        (partner_id, REMOTE_SYS, "partner.example.com", 8900, 8922, REMOTE_FP)
    assert row.ssh_public_key == PARTNER_KEY and row.ssh_host_key == PARTNER_HOST  # comments dropped
    # the partner's key goes in, forced onto the serve command for that partner
    assert env.ssh.authorized == {partner_id: (PARTNER_KEY, env.svc.serve_command(partner_id))}
    command = env.svc.serve_command(partner_id)
    assert command[1:3] == ["-m", "vsnap.worker.serve"]
    assert command[command.index("--partner") + 1] == partner_id
    assert command[command.index("--state") + 1] == str(env.settings.state_dir)
    assert env.ssh.pinned == {partner_id: PARTNER_HOST}
    # the offer went to the pinned certificate with the credentials
    assert env.cert_calls == [("partner.example.com", 8900)]
    (post,) = env.api.posts
    assert (post["address"], post["port"], post["fingerprint"], post["path"]) == \
        ("partner.example.com", 8900, REMOTE_FP, "/api/partner/accept")
    assert post["auth"] == ("admin", "s3cret")
    assert post["body"] == {"id": partner_id, "system_id": OUR_SYS, "address": "10.0.0.1",
                            "api_port": env.settings.port, "ssh_port": env.settings.ssh_port,
                            "ssh_public_key": OUR_KEY, "ssh_host_key": OUR_HOST, "tls_fingerprint": OUR_FP}
    assert env.link.calls == []  # nothing to undo
    assert env.lock.taken >= 1
    assert env.svc.get_partner(partner_id) == body
    assert env.svc.list_partners() == [body]


def test_create_partner_ports(env):
    create(env, remote_api_port=9443, local_api_port=8443, local_ssh_port=2222, remote_ssh_port=2200)
    (row,) = env.partners().values()
    assert (row.api_port, row.ssh_port) == (9443, 2200)  # remote_ssh_port wins over the answer's
    assert env.cert_calls == [("10.0.0.2", 9443)]
    post = env.api.posts[0]
    assert post["port"] == 9443
    assert (post["body"]["api_port"], post["body"]["ssh_port"]) == (8443, 2222)


def test_create_partner_default_local_address(env, monkeypatch):
    seen = []
    monkeypatch.setattr(env.svc.partners, "_local_address_towards", lambda remote: seen.append(remote) or "10.9.9.9")
    env.svc.create_partner("10.0.0.2", "admin", "pw")
    assert seen == ["10.0.0.2"]
    assert env.api.posts[0]["body"]["address"] == "10.9.9.9"


def test_local_address_towards_loopback():
    assert Partners._local_address_towards("127.0.0.1") == "127.0.0.1"


def _nothing_contacted_or_kept(env):
    assert env.cert_calls == [] and env.api.posts == []
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}
    assert env.link.calls == []


@pytest.mark.parametrize("remote_addr", ["-oProxyCommand=x", "a b", "", " ", "all", "10.0.0.0/8", None, 5,
                                         "host;id", "fe80::1%eth0"])
def test_create_partner_bad_remote_address(env, remote_addr):
    with pytest.raises(ValidationError):
        create(env, remote_addr=remote_addr)
    _nothing_contacted_or_kept(env)


@pytest.mark.parametrize("local_addr", ["-oProxyCommand=x", "a b", "", "all"])
def test_create_partner_bad_local_address(env, local_addr):
    with pytest.raises(ValidationError):
        create(env, local_addr=local_addr)
    _nothing_contacted_or_kept(env)


@pytest.mark.parametrize("arg", ["remote_api_port", "local_api_port", "local_ssh_port", "remote_ssh_port"])
@pytest.mark.parametrize("value", [0, 65536, True, "x", "22", -5])
def test_create_partner_bad_ports(env, arg, value):
    with pytest.raises(ValidationError, match=arg):
        create(env, **{arg: value})
    _nothing_contacted_or_kept(env)


@pytest.mark.parametrize("user, password", [("", "pw"), (None, "pw"), (5, "pw"), ("admin", None),
                                            ("admin", 5), (["admin"], "pw")])
def test_create_partner_needs_credentials(env, user, password):
    with pytest.raises(ValidationError):
        create(env, user=user, password=password)
    _nothing_contacted_or_kept(env)


def test_create_partner_unreachable_certificate(env):
    env.certs[("10.0.0.2", 8900)] = PartnerApiError("cannot reach 10.0.0.2:8900: refused")
    with pytest.raises(ValidationError, match="cannot be reached.*check remote_addr and remote_api_port"):
        create(env)
    assert env.api.posts == [] and env.partners() == {} and env.link.calls == []


@pytest.mark.parametrize("status, error", [(401, ValidationError), (403, ValidationError),
                                           (409, ConflictError), (400, ConflictError),
                                           (500, ServiceUnavailableError), (None, ServiceUnavailableError)])
def test_create_partner_refused_by_the_partner(env, status, error):
    env.api.error = PartnerApiError("nope", status)
    with pytest.raises(error) as info:
        create(env)
    assert type(info.value) is error
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}
    assert env.link.calls == []  # the partner did not accept: nothing to withdraw


def test_create_partner_credential_refusal_names_the_user(env):
    env.api.error = PartnerApiError("Invalid credentials", 401)
    with pytest.raises(ValidationError, match="admin"):
        create(env, user="admin")


BAD_ANSWERS = [
    ("bad public key", {"ssh_public_key": 'command="/bin/sh" ' + PARTNER_KEY}),
    ("dsa public key", {"ssh_public_key": "ssh-dss AAAAB3NzaC1kc3MAAACBAN"}),
    ("missing public key", {"ssh_public_key": None}),
    ("multiline-only key", {"ssh_public_key": "\n\n"}),
    ("bad host key", {"ssh_host_key": "@cert-authority * " + PARTNER_HOST}),
    ("missing host key", {"ssh_host_key": None}),
    ("bad system id", {"system_id": "XYZ"}),
    ("upper-case system id", {"system_id": REMOTE_SYS.upper()}),
    ("short system id", {"system_id": "abc"}),
    ("system id with newline", {"system_id": REMOTE_SYS + "\n"}),
    ("missing system id", {"system_id": None}),
    ("numeric system id", {"system_id": 12345678}),
    ("bad ssh port", {"ssh_port": 0}),
    ("ssh port as text", {"ssh_port": "22"}),
    ("missing ssh port", {"ssh_port": None}),
]


@pytest.mark.parametrize("what, change", BAD_ANSWERS, ids=[b[0] for b in BAD_ANSWERS])
def test_create_partner_unusable_answer(env, what, change):
    env.api.answer = good_answer(**change)
    with pytest.raises(ValidationError):
        create(env)
    assert env.partners() == {}
    assert env.ssh.authorized == {} and env.ssh.pinned == {}
    if what in ("bad host key", "missing host key", "bad ssh port", "ssh port as text", "missing ssh port"):
        assert env.link.calls == []  # the partner cannot be verified or reached: nothing is sent
        return
    (call,) = env.link.calls  # the partner trusts us already: withdrawing is attempted
    assert call.op == "unpartner" and call.partner_id == env.api.posts[0]["body"]["id"]
    assert call.address == "10.0.0.2"


def test_create_partner_unusable_answer_when_the_withdrawal_fails_too(env, caplog):
    env.api.answer = good_answer(ssh_public_key="garbage")
    env.link.answers["unpartner"] = RemoteError("partner 10.0.0.2:22 unreachable over SSH", unreachable=True)
    with caplog.at_level(logging.WARNING, logger="vsnap.services.replication"):
        with pytest.raises(ValidationError):
            create(env)
    assert env.partners() == {} and env.ssh.authorized == {}
    assert any("could not withdraw" in r.getMessage() for r in caplog.records)


def test_create_partner_answer_not_an_object(env):
    env.api.answer = ["not", "an", "object"]
    with pytest.raises(ValidationError):
        create(env)
    assert env.link.ops() == []  # no host key to verify the partner by: nothing is sent to it
    assert env.partners() == {} and env.ssh.pinned == {}


def test_partnering_again_keeps_the_id_and_updates_addresses_and_keys(env):
    old = create(env)["id"]
    env.api.answer = good_answer(ssh_public_key=OTHER_KEY, ssh_port=2222, id=old, renewed=True)
    new = create(env, remote_addr="10.0.0.3")["id"]  # found by its certificate: offered under its id
    assert new == old and env.api.posts[-1]["body"]["id"] == old
    (row,) = env.partners().values()
    assert (row.id, row.address, row.ssh_port, row.ssh_public_key) == (old, "10.0.0.3", 2222, OTHER_KEY)
    assert set(env.ssh.authorized) == {old} and set(env.ssh.pinned) == {old}
    assert env.ssh.authorized[old][0] == OTHER_KEY


def test_partnering_again_takes_the_id_the_partner_knows_us_by(env):
    # This appliance was rebuilt (it knows no partner); the partner still knows it as P2.
    env.api.answer = good_answer(id=P2, renewed=True)
    assert create(env)["id"] == P2
    assert set(env.partners()) == {P2} and set(env.ssh.authorized) == {P2}


def test_an_answer_naming_another_partnerships_id_is_refused_and_withdrawn(env):
    env.partner(P2, system_id="0f" * 8)
    env.svc.partners.remember_addresses(P2, ["10.9.0.2"])
    env.api.answer = good_answer(id=P2)  # a new partnership (not renewed), under P2's id
    with pytest.raises(ConflictError):
        create(env, remote_addr="10.0.0.9")
    assert env.partners()[P2].system_id == "0f" * 8 and env.svc.partners.remembered_addresses(P2) == ["10.9.0.2"]
    assert [c.op for c in env.link.calls] == ["unpartner"]
def test_partnering_again_while_relationships_use_it_keeps_them(env):
    old = create(env)["id"]
    rel = env.relationship(env.fs, old)
    env.api.answer = good_answer(id=old, renewed=True)
    assert create(env)["id"] == old
    assert set(env.partners()) == {old} and set(env.rels()) == {rel}
    assert env.link.calls == []  # nothing withdrawn
def test_withdrawal_can_verify_the_partner_host_key(env):
    env.api.answer = good_answer(ssh_public_key="garbage")  # unusable: this side refuses it
    with pytest.raises(ValidationError):
        create(env)
    (call,) = env.link.calls
    assert call.pinned == PARTNER_HOST, "no host key pinned for the partner when withdrawing"
def test_withdrawal_uses_the_partners_ssh_port(env):
    env.api.answer = good_answer(ssh_port=8922, ssh_public_key="garbage")
    with pytest.raises(ValidationError):
        create(env)
    (call,) = env.link.calls
    assert call.port == 8922


def test_a_renewed_partnership_is_not_withdrawn_when_this_side_fails(env):
    old = create(env)["id"]
    env.api.answer = good_answer(id=old, renewed=True, ssh_public_key="garbage")
    with pytest.raises(ValidationError):
        create(env)
    assert env.link.calls == [] and set(env.partners()) == {old} and set(env.ssh.authorized) == {old}
def _db_bytes(store) -> bytes:
    path = store.engine.url.database
    data = b""
    for suffix in ("", "-wal", "-journal"):
        if os.path.exists(path + suffix):
            with open(path + suffix, "rb") as f:
                data += f.read()
    return data


def test_password_is_never_stored_nor_logged(env, caplog):
    password = f"pw-{uuid.uuid4().hex}"
    user = f"user-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.DEBUG):
        # refused credentials, an unusable answer, a conflict, then a success
        env.api.error = PartnerApiError("Invalid credentials", 401)
        with pytest.raises(ValidationError) as refused:
            create(env, user=user, password=password)
        env.api.error = None
        env.api.answer = good_answer(system_id="nothex")
        with pytest.raises(ValidationError) as unusable:
            create(env, user=user, password=password)
        env.api.answer = good_answer()
        body = create(env, user=user, password=password)
        env.partner(P2, system_id="0f" * 8)
        env.api.answer = good_answer(id=P2, system_id="0e" * 8)  # names another partnership: refused
        with pytest.raises(ConflictError) as conflict:
            create(env, remote_addr="10.0.0.9", user=user, password=password)
        assert body["id"] != P2
    assert all(p["auth"] == (user, password) for p in env.api.posts)  # it was used...
    data = _db_bytes(env.store)
    assert REMOTE_SYS.encode() in data  # (the database file does hold what was written)
    assert password.encode() not in data  # ...and never stored
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        assert password not in text
    for exc in (refused.value, unusable.value, conflict.value):
        assert password not in str(exc) and password not in json.dumps(exc.to_dict())


# =============================================================================================
# accept_partner
# =============================================================================================

def test_accept_partner(env):
    answer = env.svc.accept_partner(offer())
    assert answer == {"id": P1, "renewed": False, "system_id": OUR_SYS, "ssh_public_key": OUR_KEY,
                      "ssh_host_key": OUR_HOST,
                      "ssh_port": env.settings.ssh_port, "api_port": env.settings.port}
    (row,) = env.partners().values()
    assert (row.id, row.system_id, row.address, row.api_port, row.ssh_port, row.tls_fingerprint) == \
        (P1, REMOTE_SYS, "10.0.0.2", 8900, 8922, REMOTE_FP)
    assert (row.ssh_public_key, row.ssh_host_key) == (PARTNER_KEY, PARTNER_HOST)
    assert env.ssh.authorized == {P1: (PARTNER_KEY, env.svc.serve_command(P1))}
    assert env.ssh.pinned == {P1: PARTNER_HOST}
    assert env.cert_calls == [("10.0.0.2", 8900)]  # the offering appliance is the one at that address


def test_accept_partner_refuses_itself(env):
    with pytest.raises(ValidationError, match="own partner"):
        env.svc.accept_partner(offer(system_id=OUR_SYS))
    assert env.partners() == {} and env.ssh.authorized == {} and env.cert_calls == []


def test_accept_partner_fingerprint_mismatch(env):
    env.certs[("10.0.0.2", 8900)] = "cd" * 32
    with pytest.raises(ValidationError, match="fingerprint"):
        env.svc.accept_partner(offer())
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}


def test_accept_partner_offering_appliance_unreachable(env):
    env.certs[("10.0.0.2", 8900)] = PartnerApiError("refused")
    with pytest.raises(ValidationError):
        env.svc.accept_partner(offer())
    assert env.partners() == {}


def test_accept_partner_duplicate_id(env):
    env.svc.accept_partner(offer())
    with pytest.raises(ConflictError) as info:
        env.svc.accept_partner(offer(system_id="0f" * 8, ssh_public_key=OTHER_KEY, address="10.0.0.7"))
    assert info.value.status == 409
    (row,) = env.partners().values()
    assert (row.system_id, row.address, row.ssh_public_key) == (REMOTE_SYS, "10.0.0.2", PARTNER_KEY)
    assert env.ssh.authorized[P1][0] == PARTNER_KEY


def test_accept_partner_again_from_the_same_appliance_keeps_its_id(env):
    env.svc.accept_partner(offer())
    answer = env.svc.accept_partner(offer(id=P2, ssh_public_key=OTHER_KEY, address="10.0.0.7"))
    assert (answer["id"], answer["renewed"]) == (P1, True)
    (row,) = env.partners().values()
    assert (row.id, row.address, row.ssh_public_key) == (P1, "10.0.0.7", OTHER_KEY)
    assert set(env.ssh.authorized) == {P1} and env.ssh.authorized[P1][0] == OTHER_KEY
def test_accept_partner_again_while_relationships_use_it_keeps_them(env):
    env.svc.accept_partner(offer())
    rel = env.relationship(env.fs, P1, REPLICA)
    assert env.svc.accept_partner(offer(id=P2))["id"] == P1
    assert set(env.partners()) == {P1} and set(env.rels()) == {rel} and set(env.ssh.authorized) == {P1}


def test_accept_partner_refuses_an_id_another_appliance_has(env):
    env.svc.accept_partner(offer())
    with pytest.raises(ConflictError):
        env.svc.accept_partner(offer(system_id="0f" * 8))
    assert env.partners()[P1].system_id == REMOTE_SYS
@pytest.mark.parametrize("change", [
    {"id": P1.upper()}, {"id": P1[:-1]}, {"id": None}, {"id": "../" + P1[3:]},
    {"system_id": "XYZ"}, {"system_id": None}, {"system_id": "abc"},
    {"address": "-oProxyCommand=x"}, {"address": "a b"}, {"address": ""}, {"address": None},
    {"api_port": 0}, {"api_port": "8900"}, {"ssh_port": 65536}, {"ssh_port": True},
    {"tls_fingerprint": REMOTE_FP.upper()}, {"tls_fingerprint": "ab" * 20}, {"tls_fingerprint": None},
    {"ssh_public_key": 'command="/bin/sh" ' + PARTNER_KEY}, {"ssh_public_key": None},
    {"ssh_host_key": "garbage"}, {"ssh_host_key": PARTNER_HOST.split()[1]},
])
def test_accept_partner_refuses_bad_offers(env, change):
    with pytest.raises(ValidationError):
        env.svc.accept_partner(offer(**change))
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_accept_partner_offer_must_be_an_object(env, body):
    with pytest.raises(ValidationError):
        env.svc.accept_partner(body)


# =============================================================================================
# delete_partner, get/list
# =============================================================================================

def test_delete_partner(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    env.svc.delete_partner(P1)
    assert set(env.partners()) == {P2}
    assert set(env.ssh.authorized) == {P2} and set(env.ssh.pinned) == {P2}
    (call,) = env.link.calls
    assert (call.op, call.partner_id, call.address, call.port) == ("unpartner", P1, "10.0.0.2", 8922)


def test_delete_partner_with_relationships(env):
    env.partner(P1)
    env.relationship(env.fs, P1)
    with pytest.raises(ConflictError) as info:
        env.svc.delete_partner(P1)
    assert info.value.status == 409
    assert set(env.partners()) == {P1} and env.link.calls == [] and P1 in env.ssh.authorized


def test_delete_partner_unreachable_removes_it_here(env, caplog):
    env.partner(P1)
    env.link.answers["unpartner"] = RemoteError("unreachable over SSH", unreachable=True)
    with caplog.at_level(logging.WARNING, logger="vsnap.services.replication"):
        env.svc.delete_partner(P1)
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}
    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_delete_partner_refused_by_the_partner(env):
    env.partner(P1)
    env.link.answers["unpartner"] = RemoteError("partner 10.0.0.2 refused unpartner: relationships exist")
    with pytest.raises(ConflictError, match="relationships exist"):
        env.svc.delete_partner(P1)
    assert set(env.partners()) == {P1} and P1 in env.ssh.authorized and P1 in env.ssh.pinned


def test_delete_partner_that_no_longer_knows_us_removes_it_here(env):
    env.partner(P1)
    env.link.answers["unpartner"] = RemoteError("This appliance no longer knows that partner", unknown=True)
    env.svc.delete_partner(P1)
    assert env.partners() == {} and env.ssh.authorized == {}


def test_delete_partner_first_tells_it_of_relationships_deleted_while_it_was_away(env):
    env.partner(P1)
    env.svc.partners.remember_notice(P1, R1)
    env.svc.delete_partner(P1)
    assert [(c.op, c.args) for c in env.link.calls] == [("delete-relationship", [R1, "1"]), ("unpartner", [])]
    with env.store.session() as s:
        assert s.get(Setting, env.svc.partners._notice_key(P1, R1)) is None


@pytest.mark.parametrize("error, trust", [(None, "OK"), (RemoteError("refused", untrusted=True), "REFUSED"),
                                          (RemoteError("gone", unknown=True), "REFUSED"),
                                          (RemoteError("no route", unreachable=True), "UNREACHABLE")])
def test_partner_details_say_whether_the_trust_works(env, error, trust):
    env.partner(P1)
    if error is not None:
        env.link.answers["info"] = error
    body = env.svc.get_partner(P1, check_trust=True)
    assert body["trust_status"] == trust and (body["trust_message"] is None) == (error is None)
    assert "trust_status" not in env.svc.get_partner(P1) and env.link.ops() == ["info"]


@pytest.mark.parametrize("partner_id", [P2, "nope", P1.upper() + "0", "", None, 5])
def test_unknown_partner(env, partner_id):
    env.partner(P1)
    with pytest.raises(NotFoundError):
        env.svc.get_partner(partner_id)
    with pytest.raises(NotFoundError):
        env.svc.delete_partner(partner_id)
    assert set(env.partners()) == {P1}


def test_get_partner_id_is_case_insensitive(env):
    env.partner(P1)
    assert env.svc.get_partner(P1.upper())["id"] == P1


def test_list_partners_render(env):
    env.partner(P1)
    (body,) = env.svc.list_partners()
    assert set(body) == {"id", "address", "api_port", "ssh_port", "time_created", "time_updated"}
    assert (body["id"], body["address"], body["api_port"], body["ssh_port"]) == (P1, "10.0.0.2", "8900", "8922")
    assert "ssh_public_key" not in body and "tls_fingerprint" not in body


# =============================================================================================
# relationships
# =============================================================================================

def replica_answer(vol_id="42", name="fs_replica", pool_id="5"):
    return lambda partner, args, body: {"vol_id": vol_id, "vol_name": name, "pool_id": pool_id}


def test_create_relationship_filesystem(env):
    env.partner(P1)
    env.link.answers["create-replica"] = replica_answer()
    body = env.svc.create_relationship(str(env.fs), P1, remote_pool_id="5", remote_vol_name="copy")
    (call,) = env.link.calls
    assert call.op == "create-replica" and call.partner_id == P1
    rel_id = call.body["rel_id"]
    assert call.body == {"rel_id": rel_id, "pool_id": "5", "name": "copy", "reuse": False,
                         "volume_type": "filesystem", "size_total": None, "size_block": None,
                         "primary_vol_id": str(env.fs), "primary_vol_name": "fs",
                         "primary_pool_id": str(env.p.id)}
    assert len(rel_id) == 32
    assert body == {
        "id": rel_id, "local_pool_id": str(env.p.id), "local_role": PRIMARY, "local_vol_id": str(env.fs),
        "local_vol_name": "fs", "partner_id": P1, "remote_pool_id": "5", "remote_vol_id": "42",
        "remote_vol_name": "fs_replica", "last_sync_status": None, "last_attempt_snap_id": None,
        "last_success_snap_id": None, "time_created": body["time_created"], "time_updated": body["time_updated"],
    }
    assert env.svc.get_relationship(rel_id) == body
    assert env.lock.taken >= 1


def test_create_relationship_lun_sends_its_size(env):
    env.partner(P1)
    env.link.answers["create-replica"] = replica_answer(name="lun1_replica")
    env.svc.create_relationship(env.lun, P1, reuse=True)
    body = env.link.calls[0].body
    assert (body["volume_type"], body["size_total"], body["size_block"], body["reuse"]) == ("lun", 3 * GIB, 8192, True)
    assert body["pool_id"] is None and body["name"] is None


def test_create_relationship_refuses_filebackedlun(env):
    env.partner(P1)
    with pytest.raises(ValidationError, match="filebackedlun"):
        env.svc.create_relationship(env.fb, P1)
    assert env.link.calls == [] and env.rels() == {}


def test_create_relationship_refuses_a_replica_as_source(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    env.relationship(env.fs, P2, REPLICA)
    with pytest.raises(ConflictError, match="replica"):
        env.svc.create_relationship(env.fs, P1)
    assert env.link.calls == [] and len(env.rels()) == 1


def test_create_relationship_one_per_partner(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    env.link.answers["create-replica"] = replica_answer()
    env.svc.create_relationship(env.fs, P1)
    with pytest.raises(ConflictError, match="already replicated"):
        env.svc.create_relationship(env.fs, P1)
    assert len(env.rels()) == 1 and len(env.link.calls) == 1
    env.svc.create_relationship(env.fs, P2)  # another partner is fine
    assert len(env.rels()) == 2


@pytest.mark.parametrize("vol_id, partner_id, error", [(999, P1, NotFoundError), ("abc", P1, NotFoundError),
                                                       (None, P2, NotFoundError), (None, "x", NotFoundError)])
def test_create_relationship_unknown(env, vol_id, partner_id, error):
    env.partner(P1)
    with pytest.raises(error):
        env.svc.create_relationship(vol_id if vol_id is not None else env.fs, partner_id)
    assert env.link.calls == [] and env.rels() == {}


@pytest.mark.parametrize("name", ["-x", "a/b", "a b", "", "x" * 300])
def test_create_relationship_bad_remote_name(env, name):
    env.partner(P1)
    with pytest.raises(ValidationError):
        env.svc.create_relationship(env.fs, P1, remote_vol_name=name)
    assert env.link.calls == []


def test_create_relationship_partner_unreachable(env):
    env.partner(P1)
    env.link.answers["create-replica"] = RemoteError("unreachable over SSH", unreachable=True)
    with pytest.raises(ServiceUnavailableError):
        env.svc.create_relationship(env.fs, P1)
    assert env.rels() == {}


def test_create_relationship_partner_refuses(env):
    env.partner(P1)
    env.link.answers["create-replica"] = RemoteError("partner refused create-replica: name taken")
    with pytest.raises(ConflictError, match="name taken"):
        env.svc.create_relationship(env.fs, P1)
    assert env.rels() == {}


def test_create_relationship_bad_answer_tells_the_partner(env):
    env.partner(P1)
    env.link.answers["create-replica"] = {"vol_id": "1"}  # no pool_id, no vol_name
    with pytest.raises(Exception):
        env.svc.create_relationship(env.fs, P1)
    assert env.rels() == {}
    assert env.link.ops() == ["create-replica", "delete-relationship"]
    assert env.link.calls[1].args == [env.link.calls[0].body["rel_id"], "0"]


def test_list_relationships(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    a = env.relationship(env.fs, P1, rel_id=R1)
    b = env.relationship(env.lun, P1, REPLICA, rel_id=R2)
    c = env.relationship(env.fs, P2)
    everything = env.svc.list_relationships()
    assert {r["id"] for r in everything} == {a, b, c}
    assert {r["id"] for r in env.svc.list_relationships(vol_id=env.fs)} == {a, c}
    assert {r["id"] for r in env.svc.list_relationships(vol_id=str(env.lun))} == {b}
    assert {r["id"] for r in env.svc.list_relationships(vol_name="lun1")} == {b}
    assert env.svc.list_relationships(vol_name="fb") == []
    roles = {r["id"]: r["local_role"] for r in everything}
    assert roles == {a: PRIMARY, b: REPLICA, c: PRIMARY}
    with pytest.raises(NotFoundError):
        env.svc.list_relationships(vol_id=999)
    with pytest.raises(NotFoundError):
        env.svc.list_relationships(vol_name="nope")


@pytest.mark.parametrize("rel_id", [R2, "x", "", None, R1 + "0"])
def test_get_relationship_unknown(env, rel_id):
    env.partner(P1)
    env.relationship(env.fs, P1, rel_id=R1)
    with pytest.raises(NotFoundError):
        env.svc.get_relationship(rel_id)


@pytest.mark.parametrize("preserve, flag", [(False, "0"), (True, "1")])
def test_delete_relationship_on_the_primary(env, preserve, flag):
    env.partner(P1)
    rel = env.relationship(env.fs, P1, rel_id=R1)
    snap = env.snapshot(env.fs, "s1")
    pending = env.session(rel, snap)
    env.svc.delete_relationship(rel, preserve_replica=preserve)
    (call,) = env.link.calls
    assert (call.op, call.partner_id, call.args) == ("delete-relationship", P1, [rel, flag])
    assert env.rels() == {}
    assert env.sess(pending) is None  # its sessions go with it
    assert env.volumes.deleted == []  # the primary volume stays


def test_delete_relationship_primary_partner_unreachable(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError("unreachable", unreachable=True)
    with pytest.raises(ServiceUnavailableError):
        env.svc.delete_relationship(rel)
    assert set(env.rels()) == {rel}


def test_delete_relationship_that_fails_leaves_the_queue(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    pending = env.session(rel, env.snapshot(env.fs, "s1"))
    env.link.answers["delete-relationship"] = RemoteError("unreachable", unreachable=True)
    with pytest.raises(ServiceUnavailableError):
        env.svc.delete_relationship(rel)
    assert env.sess(pending).status == PENDING


def test_delete_relationship_primary_partner_refuses(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError("partner refused delete-relationship: busy")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.delete_relationship(rel)
    assert set(env.rels()) == {rel}


def test_delete_relationship_primary_partner_no_longer_knows_it_names_the_choice(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError(f"partner refused: Relationship {rel} not found",
                                                          unknown=True)
    with pytest.raises(ConflictError) as info:
        env.svc.delete_relationship(rel)
    assert "preserve_replica=true" in info.value.message and "does not know" in info.value.message
    assert set(env.rels()) == {rel} and env.rels()[rel].state == "ready"
    env.svc.delete_relationship(rel, preserve_replica=True)
    assert env.rels() == {}


@pytest.mark.parametrize("error", [RemoteError("Permission denied (publickey)", untrusted=True),
                                   RemoteError("no route", unreachable=True)])
def test_delete_relationship_with_preserve_needs_no_partner(env, error):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = error
    with pytest.raises(ConflictError if error.untrusted else ServiceUnavailableError) as info:
        env.svc.delete_relationship(rel)
    assert "preserve_replica=true" in info.value.message
    assert set(env.rels()) == {rel}
    env.svc.delete_relationship(rel, preserve_replica=True)
    assert env.rels() == {}
    notices = env.svc.partners._notice_key(P1, rel)
    with env.store.session() as s:
        assert (s.get(Setting, notices) is not None) == (not error.untrusted)  # told when it answers
    env.link.answers["delete-relationship"] = {}
    env.svc.deliver_notices()
    assert env.link.calls[-1].op == "delete-relationship" and env.link.calls[-1].args == [rel, "1"] \
        or error.untrusted
    with env.store.session() as s:
        assert s.get(Setting, notices) is None


@pytest.mark.parametrize("error, kept", [
    (RemoteError("no route", unreachable=True), True),
    (RemoteError("the appliance's server stopped while answering", refused=False), True),
    (RemoteError("Permission denied (publickey)", untrusted=True), False),
    (RemoteError("Relationship not found", unknown=True), False),
    (RemoteError("refused"), False),
])
def test_a_notice_is_kept_until_the_partner_answers(env, error, kept):
    env.partner(P1)
    env.svc.partners.remember_notice(P1, R1)
    env.link.answers["delete-relationship"] = error
    env.svc.deliver_notices()
    with env.store.session() as s:
        assert (s.get(Setting, env.svc.partners._notice_key(P1, R1)) is not None) == kept


def test_an_interrupted_delete_whose_partner_side_went_is_finished(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    with env.store.session() as s:  # as a delete killed after the partner's side was deleted leaves it
        row = s.get(Relationship, rel)
        row.state, row.delete_preserve, row.owner = "deleting", False, "999999999:1"
    env.link.answers["delete-relationship"] = RemoteError(f"Relationship {rel} not found", unknown=True)
    env.svc.recover_deletes()
    assert env.rels() == {}


def test_a_partner_that_stops_while_deleting_leaves_the_delete_pending(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    env.link.answers["delete-relationship"] = RemoteError("the appliance's server stopped while answering",
                                                          refused=False)
    with pytest.raises(ServiceUnavailableError, match="finished when it answers"):
        env.svc.delete_relationship(rel)
    row = env.rels()[rel]
    assert (row.state, row.owner) == ("deleting", None)  # for the worker, or a retried DELETE
    env.link.answers["delete-relationship"] = RemoteError(f"Relationship {rel} not found", unknown=True)
    env.svc.recover_deletes()  # its side went: the delete is finished here
    assert env.rels() == {}


def test_an_interrupted_delete_the_partner_refuses_is_rolled_back(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    with env.store.session() as s:
        row = s.get(Relationship, rel)
        row.state, row.delete_preserve, row.owner = "deleting", False, "999999999:1"
    env.link.answers["delete-relationship"] = RemoteError("the replica volume has a clone")
    env.svc.recover_deletes()
    assert env.rels()[rel].state == "ready" and env.rels()[rel].owner is None


def test_a_relationship_being_deleted_takes_no_session(env):
    env.partner(P1)
    rel = env.relationship(env.fs, P1)
    pending = env.session(rel, env.snapshot(env.fs, "s1"))
    with env.store.session() as s:
        row = s.get(Relationship, rel)
        row.state, row.owner = "deleting", current_owner()
    assert env.svc.claim_next(set()) is None
    with pytest.raises(ConflictError):
        env.svc.start_session(rel)
    with pytest.raises(ConflictError, match="being deleted"):
        env.svc.delete_relationship(rel)
    assert env.sess(pending).status == PENDING


@pytest.mark.parametrize("preserve", [False, True])
def test_delete_relationship_on_the_replica(env, preserve):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    rel = env.relationship(replica, P1, REPLICA)
    env.svc.delete_relationship(rel, preserve_replica=preserve)
    assert env.rels() == {}
    assert env.volumes.deleted == ([] if preserve else [replica])
    (call,) = env.link.calls
    assert (call.op, call.args) == ("delete-relationship", [rel, "1"])  # the primary volume is kept


def test_delete_relationship_on_the_replica_partner_unreachable(env, caplog):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    rel = env.relationship(replica, P1, REPLICA)
    env.link.answers["delete-relationship"] = RemoteError("unreachable", unreachable=True)
    with caplog.at_level(logging.WARNING, logger="vsnap.services.replication"):
        env.svc.delete_relationship(rel)
    assert env.rels() == {} and env.volumes.deleted == [replica]
    assert any("told when it answers" in r.getMessage() for r in caplog.records)
    with env.store.session() as s:
        assert s.get(Setting, env.svc.partners._notice_key(P1, rel)) is not None


# =============================================================================================
# guards
# =============================================================================================

def test_volume_delete_guard(env):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    env.relationship(env.fs, P1)
    env.relationship(replica, P1, REPLICA)
    for vol_id in (env.fs, replica):
        with pytest.raises(ConflictError, match="delete the relationship first"):
            env.volumes.refuse_volume_delete.run(vol_id)
    env.volumes.refuse_volume_delete.run(env.lun)  # not replicated: fine


def test_rename_guard_only_for_replicas(env):
    env.partner(P1)
    replica = env.volume(env.p, "fs_replica")
    env.relationship(env.fs, P1)
    env.relationship(replica, P1, REPLICA)
    with pytest.raises(ConflictError, match="cannot be renamed"):
        env.volumes.before_volume_rename.run(replica)
    env.volumes.before_volume_rename.run(env.fs)
    env.volumes.before_volume_rename.run(env.lun)
    assert env.svc.is_replica(replica) and not env.svc.is_replica(env.fs)


def test_pool_delete_guard(env):
    env.partner(P1)
    q = env.pool("q")
    other = env.volume(q, "other")
    env.relationship(env.fs, P1)
    with pytest.raises(ConflictError, match="relationships"):
        env.pools.refuse_pool_delete.run(env.p.id, "p")
    env.pools.refuse_pool_delete.run(q.id, "q")
    env.relationship(other, P1, REPLICA)
    with pytest.raises(ConflictError):
        env.pools.refuse_pool_delete.run(q.id, "q")


# =============================================================================================
# sessions
# =============================================================================================

@pytest.fixture
def rel(env):
    env.partner(P1)
    return env.relationship(env.fs, P1, rel_id=R1)


def test_start_session_takes_a_snapshot(env, rel):
    body = env.svc.start_session(rel)
    assert env.snapshots.created == [env.fs]
    (snap_id,) = [k for k, v in env.catalog.snapshots.items()]
    name = env.catalog.snapshots[snap_id].row.name
    assert body["status"] == PENDING and body["rel_id"] == rel
    assert body["local_snap_id"] == str(snap_id)
    assert body["local_snap_name"] == name and body["remote_snap_name"] == name
    assert set(body) == {"id", "rel_id", "local_snap_id", "remote_snap_id", "local_snap_name", "remote_snap_name",
                         "repl_address", "size_sent", "status", "time_queued", "time_started", "time_ended",
                         "message"}
    assert body["time_started"] is None and body["time_ended"] is None and body["message"] is None
    assert env.svc.get_session(body["id"]) == body
    assert env.svc.list_sessions(rel) == [body]


def test_start_session_rings_the_queues_doorbell(env, rel):
    listener = Doorbell(env.settings.state_dir / "sessions.bell")
    try:
        assert listener.wait(0) is False  # listening, nothing rung yet
        env.svc.start_session(rel)
        assert listener.wait(0) is True
        with pytest.raises(ValidationError):
            env.svc.start_session(rel, remote_snap_name="a/b")
        assert listener.wait(0) is False  # nothing queued, nothing rung
    finally:
        listener.close()


def test_start_session_with_a_snapshot_and_remote_name(env, rel):
    snap = env.snapshot(env.fs, "daily")
    body = env.svc.start_session(rel, snap_id=str(snap), remote_snap_name="daily-copy")
    assert env.snapshots.created == []
    assert (body["local_snap_id"], body["local_snap_name"], body["remote_snap_name"]) == \
        (str(snap), "daily", "daily-copy")


def test_start_session_with_a_snapshot_of_another_volume(env, rel):
    snap = env.snapshot(env.lun, "other")
    with pytest.raises(ValidationError) as info:
        env.svc.start_session(rel, snap_id=snap)
    assert info.value.status == 400
    assert env.svc.list_sessions() == []


def test_start_session_only_on_the_primary(env, rel):
    replica = env.volume(env.p, "fs_replica")
    rrel = env.relationship(replica, P1, REPLICA)
    with pytest.raises(ConflictError) as info:
        env.svc.start_session(rrel)
    assert info.value.status == 409
    assert env.snapshots.created == [] and env.svc.list_sessions() == []


@pytest.mark.parametrize("name", ["-x", "a/b", "a@b", ""])
def test_start_session_bad_remote_name(env, rel, name):
    with pytest.raises(ValidationError):
        env.svc.start_session(rel, remote_snap_name=name)
    assert env.snapshots.created == []


def test_start_session_unknown(env, rel):
    with pytest.raises(NotFoundError):
        env.svc.start_session(R2)
    with pytest.raises(NotFoundError):
        env.svc.start_session(rel, snap_id=999)
    assert env.svc.list_sessions() == []


def test_cancel_a_queued_session(env, rel):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=PENDING)
    body = env.svc.cancel_session(str(sid))
    assert body["status"] == FAILED and body["message"] == CANCELED == "Canceled"
    assert body["time_ended"] is not None


def test_cancel_a_running_session_answers_how_it_ended(env, rel):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=ACTIVE, owner=current_owner())

    def transfer():  # the running transfer: sees the cancel, stops, ends the session
        while env.svc.sessions.still_active(sid) is None:
            time.sleep(0.02)
        env.svc.sessions.end(sid, FAILED, "zfs send failed: Broken pipe")

    worker = threading.Thread(target=transfer)
    worker.start()
    body = env.svc.cancel_session(str(sid), wait=10)
    worker.join(5)
    assert (body["status"], body["message"]) == (FAILED, CANCELED)  # never FAILED, then something else
    assert body["time_ended"] is not None


def test_cancel_of_a_session_that_does_not_stop_in_time_says_canceling(env, rel):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=ACTIVE, owner=current_owner())
    body = env.svc.cancel_session(str(sid), wait=0)
    assert (body["status"], body["message"]) == (ACTIVE, "Canceling")
    assert env.svc.sessions.still_active(sid) == CANCELED


@pytest.mark.parametrize("status", [COMPLETED, FAILED])
def test_cancel_ended_session(env, rel, status):
    sid = env.session(rel, env.snapshot(env.fs, "s"), status=status, message="done before")
    with pytest.raises(ConflictError) as info:
        env.svc.cancel_session(sid)
    assert info.value.status == 409
    row = env.sess(sid)
    assert (row.status, row.message) == (status, "done before")


@pytest.mark.parametrize("sid", ["999", "abc", "", "-1", "1.0", None])
def test_unknown_session(env, rel, sid):
    with pytest.raises(NotFoundError):
        env.svc.get_session(sid)
    with pytest.raises(NotFoundError):
        env.svc.cancel_session(sid)


def test_list_sessions_by_relationship(env, rel):
    env.partner(P2, system_id="0f" * 8)
    other = env.relationship(env.lun, P2, rel_id=R2)
    a = env.session(rel, 1)
    b = env.session(other, 2)
    c = env.session(rel, 3)
    assert [s["id"] for s in env.svc.list_sessions()] == [str(a), str(b), str(c)]
    assert [s["id"] for s in env.svc.list_sessions(rel)] == [str(a), str(c)]
    assert [s["id"] for s in env.svc.list_sessions(other)] == [str(b)]


# -- the queue ---------------------------------------------------------------------------------

@pytest.fixture
def two_rels(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    return env.relationship(env.fs, P1, rel_id=R1), env.relationship(env.lun, P2, rel_id=R2)


def test_claim_next_order_and_one_active_per_relationship(env, two_rels):
    a, b = two_rels
    a1, a2, b1 = env.session(a, 1), env.session(a, 2), env.session(b, 3)
    assert env.svc.claim_next(set()) == a1
    row = env.sess(a1)
    assert row.status == ACTIVE and row.owner == current_owner() and row.time_started is not None
    assert env.svc.claim_next(set()) == b1  # a has one ACTIVE: its next waits
    assert env.svc.claim_next(set()) is None
    assert env.sess(a2).status == PENDING
    env.svc.sessions.end(a1, COMPLETED, None)
    assert env.svc.claim_next(set()) == a2


def test_claim_next_respects_busy_relationships(env, two_rels):
    a, b = two_rels
    a1, b1 = env.session(a, 1), env.session(b, 2)
    assert env.svc.claim_next({a}) == b1
    assert env.svc.claim_next({a}) is None
    assert env.sess(a1).status == PENDING
    assert env.svc.claim_next(set()) == a1


def test_claim_next_skips_ended_sessions(env, two_rels):
    a, _ = two_rels
    env.session(a, 1, status=FAILED)
    env.session(a, 2, status=COMPLETED)
    assert env.svc.claim_next(set()) is None


def test_fail_interrupted(env, two_rels):
    a, b = two_rels
    dead = env.session(a, 1, status=ACTIVE, owner=f"{os.getpid()}:999999999999")  # same pid, other process
    nobody = env.session(b, 2, status=ACTIVE, owner=None)
    live = env.session(a, 3, status=ACTIVE, owner=current_owner())
    pending = env.session(b, 4, status=PENDING)
    env.svc.fail_interrupted()
    for sid in (dead, nobody):
        row = env.sess(sid)
        assert row.status == FAILED and "Interrupted" in row.message and row.time_ended is not None
    assert env.sess(live).status == ACTIVE
    assert env.sess(pending).status == PENDING


def test_end_completes_and_updates_the_relationship(env, rel):
    snap = env.snapshot(env.fs, "s1")
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    env.svc.sessions.end(sid, COMPLETED, None, remote_snap_id="88", size_sent=1234)
    row = env.sess(sid)
    assert (row.status, row.message, row.remote_snap_id, row.size_sent) == (COMPLETED, None, "88", 1234)
    assert row.time_ended is not None
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_attempt_snap_id, r.last_success_snap_id) == (COMPLETED, snap, snap)
    body = env.svc.get_relationship(rel)
    assert (body["last_sync_status"], body["last_attempt_snap_id"], body["last_success_snap_id"]) == \
        (COMPLETED, str(snap), str(snap))


def test_end_never_overwrites_a_canceled_session(env, rel):
    good = env.snapshot(env.fs, "s1")
    first = env.session(rel, good, status=ACTIVE)
    env.svc.sessions.end(first, COMPLETED, None, remote_snap_id="1", size_sent=10)
    snap = env.snapshot(env.fs, "s2")
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    env.svc.cancel_session(sid)
    env.svc.sessions.end(sid, FAILED, "later failure")
    assert (env.sess(sid).status, env.sess(sid).message) == (FAILED, CANCELED)
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_attempt_snap_id, r.last_success_snap_id) == (FAILED, snap, good)


def test_a_session_whose_snapshot_arrived_is_completed_though_a_cancel_came_first(env, rel):
    snap = env.snapshot(env.fs, "s2")
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    env.svc.cancel_session(sid, wait=0)
    env.svc.sessions.end(sid, COMPLETED, None, remote_snap_id="99", size_sent=5)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id) == (COMPLETED, "99") and "when the cancel came" in row.message
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_success_snap_id) == (COMPLETED, snap)


def test_end_failed_keeps_the_last_success(env, rel):
    good, bad = env.snapshot(env.fs, "s1"), env.snapshot(env.fs, "s2")
    env.svc.sessions.end(env.session(rel, good, status=ACTIVE), COMPLETED, None)
    sid = env.session(rel, bad, status=ACTIVE)
    env.svc.sessions.end(sid, FAILED, "zfs send failed: boom")
    row = env.sess(sid)
    assert (row.status, row.message) == (FAILED, "zfs send failed: boom")
    r = env.rels()[rel]
    assert (r.last_sync_status, r.last_attempt_snap_id, r.last_success_snap_id) == (FAILED, bad, good)


# -- run_session / _transfer -------------------------------------------------------------------

class FakePipeline:
    def __init__(self, result=None, error=None, moves=()):
        self.result = result or PipelineResult(4096, 0, "", 0, json.dumps({"snap_id": "55"}), "")
        self.error = error
        self.moves = moves
        self.calls: list[dict] = []
        self.results: list = []  # one per call, first to last (a result or an exception), then `result`

    def __call__(self, producer, consumer, *, progress=None, should_stop=None, stall_seconds=60.0, tick=0.5):
        self.calls.append({"producer": producer, "consumer": consumer, "stall_seconds": stall_seconds,
                           "stop": should_stop()})
        for moved in self.moves:
            progress(moved)
        if self.error:
            raise self.error
        if self.results:
            result = self.results.pop(0)
            if isinstance(result, BaseException):
                raise result
            return result
        return self.result


@pytest.fixture
def sending(env, rel, monkeypatch):
    pipe = FakePipeline()
    monkeypatch.setattr(sender_mod, "run_pipeline", pipe)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": []}
    env.link.answers["snapshots"] = {"snapshots": []}
    return pipe


def _claimed(env, rel, snap):
    sid = env.session(rel, snap)
    assert env.svc.claim_next(set()) == sid
    return sid


def test_run_session_full_send(env, rel, sending):
    snap = env.snapshot(env.fs, "s1", guid="111")
    sid = _claimed(env, rel, snap)
    sending.moves = (100, 4096)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent, row.repl_address) == (COMPLETED, "55", 4096, "10.0.0.2")
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "p/fs@s1"]
    assert call["consumer"] == ["ssh-fake", P1, "10.0.0.2", "8922", "--", "recv", rel, "s1", "full"]
    assert call["stall_seconds"] == 7.0 and call["stop"] is None
    assert [(c.op, c.args, c.via) for c in env.link.calls] == [("prepare", [rel], None)]
    assert env.rels()[rel].last_success_snap_id == snap


def test_run_session_incremental_from_the_newest_common_snapshot(env, rel, sending):
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.snapshot(env.fs, "s3", guid="333", creation=300)
    s4 = env.snapshot(env.fs, "s4", guid="444", creation=400)
    env.snapshot(env.fs, "s5", guid="555", creation=500)  # newer than the one sent: never a base
    env.link.answers["snapshots"] = {"snapshots": [{"id": "1", "name": "s1", "guid": "111"},
                                                   {"id": "2", "name": "s2", "guid": "222"},
                                                   {"id": "5", "name": "s5", "guid": "555"}]}
    sid = _claimed(env, rel, s4)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-i", "p/fs@s2", "p/fs@s4"]
    assert call["consumer"][-4:] == ["recv", rel, "s4", "incremental"]
    assert env.rels()[rel].last_success_snap_id == s4 and s1 < s2 < s4


def test_run_session_already_on_the_replica(env, rel, sending):
    snap = env.snapshot(env.fs, "s1", guid="111")
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    sid = _claimed(env, rel, snap)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent) == (COMPLETED, "31", 0)
    assert sending.calls == []


def test_run_session_no_common_base(env, rel, sending):
    snap = env.snapshot(env.fs, "s1", guid="111")
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "x", "guid": "999"}]}
    sid = _claimed(env, rel, snap)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "none in common" in row.message
    assert sending.calls == []


def test_run_session_uses_a_replication_address(env, rel, sending):
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.5.0.2", "10.5.0.3"]}
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).repl_address == "10.5.0.2"
    assert sending.calls[0]["consumer"][2] == "10.5.0.2"


def test_run_session_refuses_an_option_like_replication_address(env, rel, sending):
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["-oProxyCommand=x"]}
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).status == FAILED
    assert sending.calls == []


@pytest.mark.parametrize("result, message", [
    (PipelineResult(10, 0, "", 255, "", "ssh: connect to host 10.0.0.2 port 8922: Connection refused\n"),
     "Connection refused"),
    (PipelineResult(10, 1, "cannot open 'p/fs@s1': dataset does not exist\n", -9, "", ""), "zfs send failed"),
    (PipelineResult(10, 0, "", 1, json.dumps({"error": "The replica already has a snapshot named s1"}), ""),
     "already has a snapshot"),
    (PipelineResult(10, 0, "", 0, "not json", ""), "could not receive"),
])
def test_run_session_failures(env, rel, sending, result, message):
    sending.result = result
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and message in row.message
    assert env.rels()[rel].last_sync_status == FAILED


def test_run_session_partner_unreachable(env, rel, sending):
    env.link.answers["info"] = RemoteError("partner 10.0.0.2:8922 unreachable over SSH: timeout", unreachable=True)
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "unreachable" in row.message


def test_run_session_stall(env, rel, sending):
    sending.error = PipelineStopped("stalled: no data moved for 7 s")
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.message) == (FAILED, "stalled: no data moved for 7 s")


def test_run_session_canceled_during_the_transfer(env, rel, sending, monkeypatch):
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))

    def cancel_then_stop(*args, **kwargs):
        env.svc.cancel_session(sid)
        reason = kwargs["should_stop"]()
        raise PipelineStopped(reason)
    monkeypatch.setattr(sender_mod, "run_pipeline", cancel_then_stop)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.message) == (FAILED, CANCELED)


def test_run_session_snapshot_gone(env, rel, sending):
    snap = env.snapshot(env.fs, "s1")
    sid = _claimed(env, rel, snap)
    del env.catalog.snapshots[snap]
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "no longer exists" in row.message
    assert env.link.calls == []


def test_run_session_unexpected_error_still_ends_it(env, rel, sending):
    sending.error = KeyError("bug")
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and row.message.startswith("Internal error")


def test_progress_is_recorded(env, rel, sending, monkeypatch):
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    seen = []

    def pipeline(producer, consumer, *, progress, should_stop, stall_seconds):
        progress(1000)
        seen.append(env.sess(sid).size_sent)
        progress(3000)
        seen.append(env.sess(sid).size_sent)
        return PipelineResult(3000, 0, "", 0, json.dumps({"snap_id": "9"}), "")
    monkeypatch.setattr(sender_mod, "run_pipeline", pipeline)
    env.svc.run_session(sid)
    assert seen == [1000, 3000]
    assert env.sess(sid).size_sent == 3000


# -- after a completed session: the stream goes at once, the partner asked only if it refuses ----

def _completed(env, rel, snap, address="10.5.0.2", remote_id="31"):
    """A session of `snap` that completed through `address`, as sessions.end leaves it."""
    sid = env.session(rel, snap, status=ACTIVE, owner=current_owner())
    with env.store.session() as s:
        s.get(ReplicationSession, sid).repl_address = address
    env.svc.sessions.end(sid, COMPLETED, None, remote_snap_id=remote_id, size_sent=100)
    return sid


def _refused(message):
    return PipelineResult(10, -9, "", 1, json.dumps({"error": message}), "", producer_killed=True)


@pytest.fixture
def replicated(env, rel, sending):
    """s1 on the replica, sent by a completed session through 10.5.0.2; s2 newer, to send."""
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    _completed(env, rel, s1)
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.5.0.2"]}
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    return SimpleNamespace(s1=s1, s2=s2)


def test_incremental_after_a_completed_session_asks_the_partner_nothing(env, rel, sending, replicated):
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.repl_address) == (COMPLETED, "55", "10.5.0.2")
    assert env.link.calls == []
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-i", "p/fs@s1", "p/fs@s2"]
    assert call["consumer"] == ["ssh-fake", P1, "10.5.0.2", "8922", "--", "recv", rel, "s2", "incremental"]


def test_a_refused_stream_asks_the_partner_and_sends_from_the_base_it_has(env, rel, sending, replicated):
    # The replica lost s1 (destroyed by hand there) but has s0: the receive refuses the
    # difference from s1; the partner's answer gives the base.
    s0 = env.snapshot(env.fs, "s0", guid="100", creation=50)
    env.link.answers["snapshots"] = {"snapshots": [{"id": "30", "name": "s0", "guid": "100"}]}
    sending.results = [_refused("cannot receive incremental stream: most recent snapshot does not match")]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED, env.sess(sid).message
    assert [c.op for c in env.link.calls] == ["prepare"]
    assert [c["producer"] for c in sending.calls] == [["zfs", "send", "-i", "p/fs@s1", "p/fs@s2"],
                                                      ["zfs", "send", "-i", "p/fs@s0", "p/fs@s2"]]
    assert env.rels()[rel].last_success_snap_id == replicated.s2 and s0


def test_a_refusal_that_asking_cannot_change_is_not_sent_twice(env, rel, sending, replicated):
    # The partner confirms s1 and the address: the same stream would be refused the same way.
    sending.results = [_refused("destination vbenchrb/fs_replica has been modified since most recent snapshot")]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "modified" in row.message
    assert [c.op for c in env.link.calls] == ["prepare"] and len(sending.calls) == 1


def test_an_address_gone_since_the_last_session_asks_the_partner(env, rel, sending, replicated):
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.6.0.2"]}
    sending.results = [PipelineResult(0, -9, "", 255, "", "ssh: connect to host 10.5.0.2 port 8922: No route\n",
                                      producer_killed=True)]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.repl_address) == (COMPLETED, "10.6.0.2")
    assert [c["consumer"][2] for c in sending.calls] == ["10.5.0.2", "10.6.0.2"]


def test_an_unreachable_partner_is_still_unreachable(env, rel, sending, replicated):
    sending.results = [PipelineResult(0, -9, "", 255, "", "ssh: connect to host 10.5.0.2: Connection refused\n",
                                      producer_killed=True)]
    env.link.answers["info"] = RemoteError("partner 10.0.0.2:8922 unreachable over SSH: refused", unreachable=True)
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "unreachable" in row.message and len(sending.calls) == 1


def test_a_snapshot_the_replica_has_already_completes_after_asking(env, rel, sending, replicated):
    # A retried session: the partner refuses the name, its answer shows the snapshot is there.
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"},
                                                   {"id": "32", "name": "s2", "guid": "222"}]}
    sending.results = [_refused("The replica already has a snapshot named s2")]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent) == (COMPLETED, "32", 0)
    assert len(sending.calls) == 1


def test_a_cancel_during_the_stream_asks_nothing_more(env, rel, sending, replicated):
    sending.results = [PipelineStopped(CANCELED)]
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    assert (env.sess(sid).status, env.sess(sid).message) == (FAILED, CANCELED)
    # Only whether the stream arrived all the same (once the partner's receive ended): it did not.
    assert [(c.op, c.args) for c in env.link.calls] == [("snapshots", [rel, "settled"])]
    assert len(sending.calls) == 1


def test_a_stopped_stream_that_arrived_whole_completes_the_session(env, rel, sending, replicated):
    sending.results = [PipelineStopped(CANCELED, 4096)]
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"},
                                                   {"id": "32", "name": "s2", "guid": "222"}]}
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.remote_snap_id, row.size_sent) == (COMPLETED, "32", 4096)
    assert "received the whole snapshot" in row.message


def test_after_a_session_that_did_not_complete_the_partner_is_asked_first(env, rel, sending, replicated):
    # The failed session's snapshot (s2) arrived all the same: the next one sends from it.
    failed = env.session(rel, replicated.s2, status=FAILED)
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"},
                                                   {"id": "32", "name": "s2", "guid": "222"}]}
    s3 = env.snapshot(env.fs, "s3", guid="333", creation=300)
    sid = _claimed(env, rel, s3)
    assert sid != failed
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    assert env.link.ops() == ["prepare"]
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "-i", "p/fs@s2", "p/fs@s3"]


def test_the_partner_is_asked_when_the_last_sent_snapshot_is_gone_here(env, rel, sending, replicated):
    del env.catalog.snapshots[replicated.s1]  # destroyed on the primary since
    env.snapshot(env.fs, "s0", guid="100", creation=50)
    env.link.answers["snapshots"] = {"snapshots": [{"id": "30", "name": "s0", "guid": "100"},
                                                   {"id": "31", "name": "s1", "guid": "111"}]}
    sid = _claimed(env, rel, replicated.s2)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    assert [c.op for c in env.link.calls] == ["prepare"]
    assert [c["producer"] for c in sending.calls] == [["zfs", "send", "-i", "p/fs@s0", "p/fs@s2"]]


def test_the_partner_is_asked_when_sending_an_older_snapshot_than_the_last(env, rel, sending, replicated):
    s05 = env.snapshot(env.fs, "s05", guid="105", creation=60)  # older than s1, the last sent
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    sid = _claimed(env, rel, s05)
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert row.status == FAILED and "none in common" in row.message
    assert [c.op for c in env.link.calls] == ["prepare"] and sending.calls == []


def test_only_a_completed_session_tells_where_the_replica_stands(env, rel, sending):
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    env.session(rel, s1, status=FAILED, message="stalled")
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    sid = _claimed(env, rel, s2)
    env.svc.run_session(sid)
    assert [c.op for c in env.link.calls] == ["prepare"]
    assert sending.calls[0]["producer"] == ["zfs", "send", "p/fs@s2"]


# -- a first session: the replica's addresses, as the partner gave them, spare the round trip -----

def _new_relationship(env, addresses):
    """A relationship of the filesystem volume with P1 (partnered by the `rel` fixture of
    `sending`), made through the service, the partner's answer giving `addresses`."""
    env.svc.delete_relationship(R1)  # the fixture's own, of the same volume
    answer = replica_answer()
    if addresses is not None:
        def answer(partner, args, body, plain=answer(None, [], None)):
            return {**plain, "repl_addresses": addresses}
    env.link.answers["create-replica"] = answer
    rel_id = env.svc.create_relationship(str(env.fs), P1)["id"]
    env.link.calls.clear()
    return rel_id


def test_a_first_session_streams_at_once_to_the_address_given_with_the_replica(env, sending):
    rel = _new_relationship(env, ["10.7.0.2", "10.7.0.3"])
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1", guid="111"))
    env.svc.run_session(sid)
    row = env.sess(sid)
    assert (row.status, row.repl_address) == (COMPLETED, "10.7.0.2")
    assert env.link.calls == []
    (call,) = sending.calls
    assert call["producer"] == ["zfs", "send", "p/fs@s1"]
    assert call["consumer"][2] == "10.7.0.2" and call["consumer"][-1] == "full"


def test_a_first_session_uses_the_partners_address_when_it_carries_replication(env, sending):
    rel = _new_relationship(env, ["10.0.0.2", "10.7.0.2"])
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).repl_address == "10.0.0.2" and env.link.calls == []


def test_a_first_session_without_known_addresses_asks(env, sending):
    rel = _new_relationship(env, None)  # a partner that does not give them
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED and [c.op for c in env.link.calls] == ["prepare"]


def test_an_adopted_replica_refuses_the_full_stream_and_gets_the_incremental(env, sending):
    rel = _new_relationship(env, ["10.7.0.2"])
    s1 = env.snapshot(env.fs, "s1", guid="111", creation=100)
    s2 = env.snapshot(env.fs, "s2", guid="222", creation=200)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.7.0.2"]}
    env.link.answers["snapshots"] = {"snapshots": [{"id": "31", "name": "s1", "guid": "111"}]}
    sending.results = [_refused("The replica already has snapshots: only an incremental stream can follow")]
    sid = _claimed(env, rel, s2)
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED
    assert [c["producer"] for c in sending.calls] == [["zfs", "send", "p/fs@s2"],
                                                      ["zfs", "send", "-i", "p/fs@s1", "p/fs@s2"]]
    assert s1


def test_asking_refreshes_the_addresses_for_the_next_first_session(env, sending):
    rel = _new_relationship(env, None)
    env.link.answers["info"] = {"system_id": REMOTE_SYS, "repl_addresses": ["10.8.0.2"]}
    env.svc.run_session(_claimed(env, rel, env.snapshot(env.fs, "s1")))
    assert env.svc.partners.remembered_addresses(P1) == ["10.8.0.2"]
    env.link.answers["create-replica"] = replica_answer()  # (no addresses: an older partner)
    other = env.svc.create_relationship(str(env.lun), P1)["id"]
    env.link.calls.clear()
    sid = _claimed(env, other, env.snapshot(env.lun, "l1"))
    env.svc.run_session(sid)
    assert env.sess(sid).repl_address == "10.8.0.2" and env.link.calls == []


def test_the_addresses_go_with_the_partner(env, sending):
    rel = _new_relationship(env, ["10.7.0.2"])
    env.svc.delete_relationship(rel)
    assert env.svc.partners.remembered_addresses(P1) == ["10.7.0.2"]
    env.svc.delete_partner(P1)
    assert env.svc.partners.remembered_addresses(P1) is None
    with env.store.session() as s:
        assert s.get(Setting, f"partner-repl-addresses:{P1}") is None


def test_partnering_again_keeps_the_partnerships_addresses(env):
    env.partner(P2, system_id=REMOTE_SYS)
    env.svc.partners.remember_addresses(P2, ["10.9.0.2"])
    assert create(env)["id"] == P2  # the same appliance again: the same partnership
    assert env.svc.partners.remembered_addresses(P2) == ["10.9.0.2"]
# =============================================================================================
# serve(): the requests a partner makes over SSH
# =============================================================================================

@pytest.fixture
def replica(env):
    """This appliance as the replica side: partner P1 replicates its volume 77 into fs_replica."""
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    vol = env.volume(env.p, "fs_replica")
    env.replica_vol = vol
    return env.relationship(vol, P1, REPLICA, rel_id=R1)


@pytest.fixture
def stream(tmp_path):
    f = open(tmp_path / "stream", "w+b")
    yield f
    f.close()


def test_serve_unknown_partner(env, replica, stream):
    with pytest.raises(NotFoundError):
        env.svc.serve("9" * 32, ["info"], stream)


def test_serve_info(env, replica, stream):
    assert env.svc.serve(P1, ["info"], stream) == {"system_id": OUR_SYS,
                                                   "repl_addresses": ["10.0.0.1", "10.2.0.1", "10.2.0.9"]}


@pytest.mark.parametrize("words", [
    [], [""], ["rm", "-rf", "/"], ["INFO"], ["snapshots"], ["snapshots", R1, "x"],
    ["recv", R1, "s1"], ["recv", R1, "s1", "both"], ["recv", R1, "s1", "full", "x"],
    ["delete-relationship", R1], ["delete-relationship", R1, "2"], ["delete-relationship", R1, "1", "x"],
    ["delete-relationship", R1, "true"],
])
def test_serve_refuses_unknown_requests(env, replica, stream, words):
    with pytest.raises(ValidationError):
        env.svc.serve(P1, words, stream)
    assert set(env.rels()) == {R1} and env.ds.calls == []


def test_serve_snapshots(env, replica, stream):
    a = env.snapshot(env.replica_vol, "s1", guid="111")
    env.snapshot(env.fs, "other", guid="999")
    assert env.svc.serve(P1, ["snapshots", R1], stream) == {"snapshots": [{"id": str(a), "name": "s1",
                                                                           "guid": "111"}]}


def test_serve_relationship_of_another_partner(env, replica, stream):
    for words in (["snapshots", R1], ["recv", R1, "s1", "full"], ["delete-relationship", R1, "0"]):
        with pytest.raises(NotFoundError):
            env.svc.serve(P2, words, stream)
    assert set(env.rels()) == {R1} and env.ds.calls == [] and env.volumes.deleted == []


@pytest.mark.parametrize("rel_id", [R2, "x", "../" + R1[3:], R1[:-1]])
def test_serve_unknown_relationship(env, replica, stream, rel_id):
    with pytest.raises(NotFoundError):
        env.svc.serve(P1, ["snapshots", rel_id], stream)


def test_serve_only_a_replica_receives(env, replica, stream):
    primary = env.relationship(env.fs, P1, PRIMARY, rel_id=R2)
    for words in (["snapshots", primary], ["recv", primary, "s1", "full"]):
        with pytest.raises(NotFoundError):
            env.svc.serve(P1, words, stream)
    assert env.ds.calls == []


def test_serve_full_receive(env, replica, stream):
    answer = env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    (snap,) = [s for s in env.catalog.snapshots.values() if s.volume.row.id == env.replica_vol]
    assert answer == {"snap_id": str(snap.row.id)}
    assert env.ds.calls == [("unmount", "p/fs_replica"), ("receive", "p/fs_replica@s1", True, stream.fileno()),
                            ("mount", "p/fs_replica")]


def test_serve_reads_only_the_replicas_pool(env, replica, stream):
    other = env.pool("q")
    env.volume(other, "elsewhere")
    env.snapshot(env.replica_vol, "s1", guid="111")
    env.catalog.load_args.clear()
    env.svc.serve(P1, ["prepare", R1], stream)
    env.svc.serve(P1, ["recv", R1, "s2", "incremental"], stream)
    assert env.catalog.load_args and set(env.catalog.load_args) == {env.p.id}


def test_session_reads_only_the_primarys_pool(env, rel, sending):
    env.volume(env.pool("q"), "elsewhere")
    sid = _claimed(env, rel, env.snapshot(env.fs, "s1"))
    env.catalog.load_args.clear()
    env.svc.run_session(sid)
    assert env.sess(sid).status == COMPLETED and env.catalog.load_args == [env.p.id]


def test_serve_incremental_receive(env, replica, stream):
    env.snapshot(env.replica_vol, "s1")
    answer = env.svc.serve(P1, ["recv", R1, "s2", "incremental"], stream)
    assert env.ds.calls == [("unmount", "p/fs_replica"), ("receive", "p/fs_replica@s2", False, stream.fileno()),
                            ("mount", "p/fs_replica")]
    assert answer["snap_id"] == str(max(env.catalog.snapshots))


def test_serve_receive_into_a_zvol_neither_unmounts_nor_mounts(env, replica, stream):
    lun = env.volume(env.p, "lun_replica", "lun")
    env.relationship(lun, P1, REPLICA, rel_id=R2)
    env.svc.serve(P1, ["recv", R2, "s1", "full"], stream)
    assert env.ds.calls == [("receive", "p/lun_replica@s1", True, stream.fileno())]


def test_serve_incremental_receive_into_a_busy_replica(env, replica, stream):
    # A replica in use (e.g. shared) cannot be unmounted: an incremental is received anyway.
    env.snapshot(env.replica_vol, "s1")
    env.ds.unmount_error = CommandError(["zfs", "unmount"], 1, "", "cannot unmount: pool or dataset is busy")
    env.svc.serve(P1, ["recv", R1, "s2", "incremental"], stream)
    assert [c[0] for c in env.ds.calls] == ["unmount", "receive", "mount"]


def test_serve_full_receive_needs_the_unmount(env, replica, stream):
    env.ds.unmount_error = CommandError(["zfs", "unmount"], 1, "", "cannot unmount: pool or dataset is busy")
    with pytest.raises(ConflictError, match="busy"):
        env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    assert [c[0] for c in env.ds.calls] == ["unmount"]


def test_serve_receive_existing_snapshot_name(env, replica, stream):
    env.snapshot(env.replica_vol, "s1")
    with pytest.raises(ConflictError, match="already has a snapshot named s1"):
        env.svc.serve(P1, ["recv", R1, "s1", "incremental"], stream)
    assert env.ds.calls == []


def test_serve_full_stream_onto_a_replica_with_snapshots(env, replica, stream):
    env.snapshot(env.replica_vol, "s1")
    with pytest.raises(ConflictError, match="only an incremental"):
        env.svc.serve(P1, ["recv", R1, "s2", "full"], stream)
    assert env.ds.calls == []


def test_serve_receive_failure_remounts(env, replica, stream):
    env.ds.receive_error = CommandError(["zfs", "receive"], 1, "", "cannot receive: invalid stream")
    with pytest.raises(ConflictError, match="invalid stream"):
        env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)
    assert env.ds.calls[-1] == ("mount", "p/fs_replica")


@pytest.mark.parametrize("name", ["-F", "a/b", "a@b", "x y", "$(id)"])
def test_serve_receive_bad_snapshot_name(env, replica, stream, name):
    with pytest.raises(ValidationError):
        env.svc.serve(P1, ["recv", R1, name, "full"], stream)
    assert env.ds.calls == []


def test_serve_receive_replica_volume_gone(env, replica, stream):
    del env.catalog.volumes[env.replica_vol]
    with pytest.raises(NotFoundError):
        env.svc.serve(P1, ["recv", R1, "s1", "full"], stream)


@pytest.mark.parametrize("flag, deleted", [("0", True), ("1", False)])
def test_serve_delete_relationship_replica(env, replica, stream, flag, deleted):
    assert env.svc.serve(P1, ["delete-relationship", R1, flag], stream) == {}
    assert env.rels() == {}
    assert env.volumes.deleted == ([env.replica_vol] if deleted else [])
    assert env.link.calls == []  # the partner asked: nothing to tell it


def test_serve_delete_relationship_primary_keeps_the_volume(env, replica, stream):
    primary = env.relationship(env.fs, P1, PRIMARY, rel_id=R2)
    sid = env.session(primary, env.snapshot(env.fs, "s1"))
    env.svc.serve(P1, ["delete-relationship", primary, "0"], stream)
    assert set(env.rels()) == {R1} and env.volumes.deleted == []
    assert env.sess(sid) is None


def test_serve_unpartner(env, replica, stream):
    with pytest.raises(ConflictError):
        env.svc.serve(P1, ["unpartner"], stream)
    assert set(env.partners()) == {P1, P2}
    assert env.svc.serve(P2, ["unpartner"], stream) == {}
    assert set(env.partners()) == {P1}
    assert P2 not in env.ssh.authorized and P2 not in env.ssh.pinned


def _create_replica(env, stream, partner=P1, **over):
    req = {"rel_id": R2, "volume_type": "filesystem", "primary_vol_name": "data", "primary_vol_id": "7",
           "primary_pool_id": "3"}
    req.update(over)
    stream.seek(0)
    stream.truncate()
    stream.write(json.dumps(req).encode())
    stream.seek(0)
    return env.svc.serve(partner, ["create-replica"], stream)


def test_serve_create_replica(env, replica, stream):
    answer = _create_replica(env, stream)
    vol = env.volumes.created[-1]
    assert vol == {"name": "data_replica", "volume_type": "filesystem", "pool_id": str(env.p.id),
                   "size_total": None, "size_block": None}
    # clients must not change a replica: read-only, and no atime updates
    assert ("set", "p/data_replica", "readonly", "on") in env.ds.calls
    assert ("set", "p/data_replica", "atime", "off") in env.ds.calls
    assert answer["vol_name"] == "data_replica" and answer["pool_id"] == str(env.p.id)
    assert answer["repl_addresses"] == ["10.0.0.1", "10.2.0.1", "10.2.0.9"]  # its first stream goes there
    r = env.rels()[R2]
    assert (r.partner_id, r.local_role, str(r.local_vol_id), r.remote_vol_id, r.remote_pool_id,
            r.remote_vol_name) == (P1, REPLICA, answer["vol_id"], "7", "3", "data")


def test_serve_create_replica_without_its_addresses(env, replica, stream, caplog):
    def broken():
        raise CommandError(["ip", "-j", "addr", "show"], 1, "", "ip: cannot open netlink socket")
    env.network.list = broken
    with caplog.at_level(logging.WARNING):
        answer = _create_replica(env, stream)
    assert "repl_addresses" not in answer and answer["vol_name"] == "data_replica"
    assert R2 in env.rels() and "netlink" in caplog.text


def test_serve_create_replica_lun(env, replica, stream):
    _create_replica(env, stream, volume_type="lun", size_total=GIB, size_block=4096, name="copy")
    vol = env.volumes.created[-1]
    assert (vol["name"], vol["volume_type"], vol["size_total"], vol["size_block"]) == ("copy", "lun", GIB, 4096)
    # A zvol has no access times (OpenZFS refuses atime on it): read-only is what keeps it unchanged.
    assert ("set", "p/copy", "readonly", "on") in env.ds.calls
    assert not [c for c in env.ds.calls if c[:3] == ("set", "p/copy", "atime")]


def test_serve_create_replica_lun_without_zvols_is_a_filesystem_with_atime_off(env, replica, stream):
    env.ds.has_zvols = False  # zfs-fuse: the LUN's image lives in a filesystem of its own
    _create_replica(env, stream, volume_type="lun", size_total=GIB, name="copy")
    assert ("set", "p/copy", "atime", "off") in env.ds.calls


def test_serve_create_replica_that_zfs_refuses_leaves_no_replica(env, replica, stream):
    env.ds.set_error = CommandError(["zfs", "set", "readonly=on", "p/data_replica"], 1, "", "cannot set property")
    with pytest.raises(CommandError):
        _create_replica(env, stream)
    made = env.volumes.created[-1]["name"]
    assert made == "data_replica" and env.volumes.deleted  # the volume it made went again
    assert R2 not in env.rels()


def test_serve_create_replica_existing_name(env, replica, stream):
    env.volume(env.p, "data_replica")
    with pytest.raises(ConflictError, match="reuse"):
        _create_replica(env, stream)
    assert R2 not in env.rels() and env.volumes.created == []


def test_serve_create_replica_reuse(env, replica, stream):
    vol = env.volume(env.p, "data_replica")
    answer = _create_replica(env, stream, reuse=True)
    assert answer["vol_id"] == str(vol) and env.volumes.created == []
    assert env.rels()[R2].local_vol_id == vol


def test_serve_create_replica_reuse_of_a_different_type(env, replica, stream):
    env.volume(env.p, "data_replica", "lun")
    with pytest.raises(ConflictError, match="not a filesystem"):
        _create_replica(env, stream, reuse=True)
    assert R2 not in env.rels()


def test_serve_create_replica_reuse_of_a_volume_in_another_relationship(env, replica, stream):
    with pytest.raises(ConflictError, match="belongs to relationship"):
        _create_replica(env, stream, name="fs_replica", reuse=True)
    assert set(env.rels()) == {R1}


def test_serve_create_replica_pools(env, replica, stream):
    q = env.pool("q")
    with pytest.raises(ValidationError, match="2 pools"):
        _create_replica(env, stream)
    with pytest.raises(NotFoundError):
        _create_replica(env, stream, pool_id="999")
    answer = _create_replica(env, stream, pool_id=str(q.id))
    assert answer["pool_id"] == str(q.id)


@pytest.mark.parametrize("change", [{"rel_id": "x"}, {"rel_id": None}, {"volume_type": "filebackedlun"},
                                    {"volume_type": None}, {"primary_vol_name": "-x"}, {"name": "a/b"}])
def test_serve_create_replica_bad_requests(env, replica, stream, change):
    with pytest.raises(ValidationError):
        _create_replica(env, stream, **change)
    assert env.volumes.created == [] and R2 not in env.rels()


# =============================================================================================
# PartnerLink over a FakeRunner
# =============================================================================================

@pytest.fixture
def link(fake_runner):
    return PartnerLink(FakeSsh(), fake_runner, timeout=33), fake_runner


PARTNER = Partner(id=P1, address="10.0.0.2", ssh_port=8922)


def test_link_call(link):
    lk, runner = link
    runner.on(["ssh-fake"], stdout=json.dumps({"ok": True}))
    assert lk.call(PARTNER, "snapshots", R1, body={"x": 1}) == {"ok": True}
    (call,) = runner.calls
    assert call["argv"] == ["ssh-fake", P1, "10.0.0.2", "8922", "--", "snapshots", R1]
    assert json.loads(call["input"]) == {"x": 1}
    assert call["check"] is False and call["timeout"] == 33


def test_link_call_to_another_address(link):
    lk, runner = link
    runner.on(["ssh-fake"], stdout="{}")
    lk.call(PARTNER, "info", address="10.5.0.2")
    assert runner.calls[0]["argv"][2] == "10.5.0.2"
    assert json.loads(runner.calls[0]["input"]) == {}


@pytest.mark.parametrize("stderr, reason", [
    ("ssh: connect to host 10.0.0.2 port 8922: Connection refused\n", "Connection refused"),
    ("Warning\nHost key verification failed.\n", "Host key verification failed."),
    ("", "ssh failed"),
])
def test_link_ssh_failure_is_unreachable(link, stderr, reason):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=255, stderr=stderr)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "info")
    assert info.value.unreachable is True and reason in str(info.value)


def test_link_timeout_is_unreachable(link):
    lk, runner = link
    runner.on(["ssh-fake"], raises=CommandTimeout(["ssh-fake"], 33))
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "info")
    assert info.value.unreachable is True and "33" in str(info.value)


@pytest.mark.parametrize("rc, stdout, stderr, text", [
    (1, json.dumps({"error": "Relationship x not found", "type": "NotFoundError"}), "", "not found"),
    (0, json.dumps({"error": "odd"}), "", "odd"),
    (1, "", "Traceback: boom\n", "Traceback: boom"),
    (0, "not json", "", "not json"),
    (3, "", "", "exit status 3"),
])
def test_link_refusals_are_not_unreachable(link, rc, stdout, stderr, text):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=rc, stdout=stdout, stderr=stderr)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "delete-relationship", R1, "0")
    assert info.value.unreachable is False and text in str(info.value)


@pytest.mark.parametrize("stderr, untrusted", [
    ("root@10.0.0.2: Permission denied (publickey).\n", True),
    ("Warning\nHost key verification failed.\n", True),
    ("ssh: connect to host 10.0.0.2 port 8922: Connection refused\n", False),
])
def test_link_tells_refused_trust_from_no_connection(link, stderr, untrusted):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=255, stderr=stderr)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "info")
    assert (info.value.untrusted, info.value.unreachable, info.value.refused) == (untrusted, True, False)
    assert ("no longer accepts this appliance" in str(info.value)) == untrusted


@pytest.mark.parametrize("stdout, unknown, refused", [
    (json.dumps({"error": "Relationship x not found", "type": "NotFoundError"}), True, False),
    (json.dumps({"error": "The replica volume has clones", "type": "ConflictError"}), False, True),
    # the partner's server stopped while answering: how the request ended there is not known
    (json.dumps({"error": "the appliance's server stopped while answering"}), False, False),
])
def test_link_tells_what_a_partner_answered(link, stdout, unknown, refused):
    lk, runner = link
    runner.on(["ssh-fake"], returncode=1, stdout=stdout)
    with pytest.raises(RemoteError) as info:
        lk.call(PARTNER, "delete-relationship", R1, "0")
    assert (info.value.unknown, info.value.refused, info.value.unreachable) == (unknown, refused, False)
    assert info.value.reason == json.loads(stdout)["error"]
