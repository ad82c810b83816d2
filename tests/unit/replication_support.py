"""What the replication unit tests (test_replication_*.py) share: ReplicationService with the real
Store and StorageLock; fakes for the catalog, volumes, snapshots, pools, network, datasets and SSH
driver, and a fake PartnerLink (svc.link, every part's) that records every request to a partner
and answers what a test set (or raises RemoteError). The TLS side of partnering
(certificate_fingerprint, PartnerApi, file_fingerprint) is monkeypatched. A test module binds
the fixtures it takes (`env`, `rel`) from here."""
from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FakeRunner

import vsnap.services.replication as replication
import vsnap.services.replication.partners as partners_mod
from vsnap.config import Settings
from vsnap.drivers.ssh import normalize_public_key
from vsnap.drivers.zfs import ZfsDatasetOps
from vsnap.services.attachments import Attachments
from vsnap.services.catalog import CatalogView, SnapshotView, VolumeView, find_one
from vsnap.services.replication import PENDING, PRIMARY, ReplicationService
from vsnap.store.models import Partner, Pool, Relationship, ReplicationSession, Snapshot, Volume

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

    # A replica's placeholder replaced by a received dataset (VolumeService's own are tested in
    # test_services_volumes.py): recorded in `replacements`.
    def begin_replacement(self, vol_id, dataset):
        self.env.replacements.append(("begin", vol_id, dataset))
        if self.env.begin_error:
            raise self.env.begin_error
        return {"com.vsnap:vol_id": str(vol_id), "readonly": "on", "atime": "off"}

    def end_replacement(self, vol_id, dataset):
        self.env.replacements.append(("end", vol_id, dataset))
        return True

    def settle_replacement(self, vol_id):
        self.env.replacements.append(("settle", vol_id))

    def delete(self, vol_id) -> None:
        v = self.find(self.env.catalog.load(), vol_id)
        self.env.attachments.refuse_volume_delete(v.row.id)  # like the real one: the guards may refuse
        self.env.attachments.volume_going(v.row.id)
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
    send_resume_argv = staticmethod(ZfsDatasetOps.send_resume_argv)

    def __init__(self, env):
        self.env = env
        self.calls: list[tuple] = []
        self.receive_error: Exception | None = None
        self.unmount_error: Exception | None = None
        self.set_error: Exception | None = None
        self.has_zvols = True
        self.zfs = SimpleNamespace(features=frozenset())  # zfs-fuse's: none; tests give OpenZFS's
        self.zfs.stream_features = lambda: self.zfs.features
        self.encrypted_datasets: set[str] = set()
        self.tokens: dict[str, str] = {}  # dataset -> the resume token an interrupted receive left
        self.targets: dict[str, tuple[str, int]] = {}  # token -> (its snapshot's guid, bytes kept): the sender's

        self.bookmarked: dict[str, dict[str, tuple[str, int]]] = {}  # dataset -> {name: (guid, createtxg)}
        self.held: dict[str, set[str]] = {}  # snapshot -> hold tags

    def _snap(self, zfs_name):
        return next(v for v in self.env.catalog.snapshots.values() if v.zfs_name == zfs_name)

    def get(self, name, props):
        return {"createtxg": self._snap(name).props["creation"]} if props == ["createtxg"] else {}

    def bookmark(self, snapshot, bookmark):
        self.calls.append(("bookmark", snapshot, bookmark))
        snap = self._snap(snapshot)
        dataset, name = bookmark.split("#")
        self.bookmarked.setdefault(dataset, {})[name] = (snap.props["guid"], int(snap.props["creation"]))

    def bookmarks(self, dataset):
        return dict(self.bookmarked.get(dataset, {}))

    def destroy_bookmark(self, bookmark):
        self.calls.append(("destroy-bookmark", bookmark))
        dataset, name = bookmark.split("#")
        self.bookmarked.get(dataset, {}).pop(name, None)

    def hold(self, tag, snapshot):
        self.calls.append(("hold", tag, snapshot))
        self.held.setdefault(snapshot, set()).add(tag)

    def release(self, tag, snapshot):
        self.calls.append(("release", tag, snapshot))
        self.held.get(snapshot, set()).discard(tag)

    def snapshot_numbers(self, dataset, prop):
        snaps = [v for v in self.env.catalog.snapshots.values() if v.volume.dataset == dataset]
        if prop == "userrefs":
            return {v.row.name: len(self.held.get(v.zfs_name, ())) for v in snaps}
        return {v.row.name: int(v.props["creation"]) for v in snaps}

    def rollback(self, snapshot):
        self.calls.append(("rollback", snapshot))
        to = self._snap(snapshot)
        for key, v in list(self.env.catalog.snapshots.items()):
            if v.volume is to.volume and int(v.props["creation"]) > int(to.props["creation"]):
                del self.env.catalog.snapshots[key]

    def resume_token(self, dataset):
        return self.tokens.get(dataset)

    def abort_resumable(self, dataset):
        self.calls.append(("abort", dataset))
        self.tokens.pop(dataset, None)

    def resume_target(self, token):
        return self.targets.get(token)

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

    def encrypted(self, name):
        return name in self.encrypted_datasets

    def receive_new(self, target, *, stdin, props):
        self.calls.append(("receive_new", target, stdin, dict(props)))
        if self.receive_error:
            raise self.receive_error
        dataset, _, snap_name = target.partition("@")
        vol = next(v for v in self.env.catalog.volumes.values() if v.dataset == dataset)
        self.env.snapshot(vol.row.id, snap_name)

    def receive(self, target, *, full, stdin, resumable=False):
        self.calls.append(("receive", target, full, stdin) + (("resumable",) if resumable else ()))
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
        self.replacements: list[tuple] = []
        self.begin_error: Exception | None = None
        self.ssh = FakeSsh()
        self.pool_rows: list[Pool] = []
        self.link = FakeLink(self.ssh)
        monkeypatch.setattr(replication, "PartnerLink", lambda ssh, runner: self.link)  # every part's link
        self.svc = ReplicationService(self.settings, store, self.catalog, self.volumes, self.snapshots, self.pools,
                                      self.network, self.system, self.ds, self.ssh, runner=FakeRunner(),
                                      lock=self.lock)
        self.attachments = Attachments(self.svc.relationships)  # as Services.build registers it
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


@pytest.fixture
def rel(env):
    env.partner(P1)
    return env.relationship(env.fs, P1, rel_id=R1)


def replica_answer(vol_id="42", name="fs_replica", pool_id="5"):
    return lambda partner, args, body: {"vol_id": vol_id, "vol_name": name, "pool_id": pool_id}
