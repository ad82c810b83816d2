"""The receiving side: answers the requests a partner makes over SSH (serve, run by
vsnap.worker.serve for that partner only) about the replicas it keeps here: made, listed,
received into and deleted. A receive into a replica holds a lock (in any process), so that a
delete, or the question whether a stream arrived, waits for the one in flight."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from typing import BinaryIO

from ...config import Settings
from ...drivers.runner import CommandError, describe
from ...drivers.zfs import ZfsDatasetOps
from ...errors import ConflictError, NotFoundError, ValidationError
from ...store.db import Store
from ...store.models import Partner, Relationship, Volume
from ..catalog import RECEIVING, Catalog
from ..locking import StorageLock
from ..volumes import validate_name
from .bookmarks import Bookmarks
from .common import _HEX32, REPLICA, Request, hex_id, receive_lock_path
from .partners import Partners
from .relationships import Relationships
from .sessions import Sessions

log = logging.getLogger(__name__)


class Receiver:
    def __init__(self, settings: Settings, store: Store, catalog: Catalog, volumes, pools, network, system,
                 ds: ZfsDatasetOps, lock: StorageLock, partners: Partners, relationships: Relationships,
                 sessions: Sessions, bookmarks: Bookmarks):
        self.bookmarks = bookmarks
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.volumes = volumes
        self.pools = pools
        self.network = network
        self.system = system
        self.ds = ds
        self.lock = lock
        self.partners = partners
        self.relationships = relationships
        self.sessions = sessions

    def serve(self, partner_id: str, words: list[str], stdin: BinaryIO) -> dict:
        with self.store.session() as s:
            partner = s.get(Partner, partner_id)
            if partner is None:
                raise NotFoundError("This appliance no longer knows that partner")
            s.expunge(partner)
        op, args = (words[0], words[1:]) if words else ("", [])
        if op == Request.INFO:
            return {"system_id": self.system.id, "repl_addresses": self._repl_addresses(),
                    "stream_features": self._stream_features()}
        if op == Request.UNPARTNER:
            return self._serve_unpartner(partner)
        if op == Request.CREATE_REPLICA:
            return self._serve_create_replica(partner, json.load(stdin))
        if op == Request.SNAPSHOTS and len(args) == 1:
            return self._serve_snapshots(partner, args[0])
        if op == Request.SNAPSHOTS and len(args) == 2 and args[1] == Request.SETTLED:
            with self._receiving(hex_id(args[0], "Relationship"), wait=self.settings.repl_stall_seconds * 2):
                return self._serve_snapshots(partner, args[0])
        if op == Request.PREPARE and len(args) == 1:
            return {"repl_addresses": self._repl_addresses(), "stream_features": self._stream_features(),
                    **self._serve_snapshots(partner, args[0])}
        if op == Request.RECEIVE and len(args) == 3 and args[2] in (Request.FULL, Request.FULL_RAW,
                                                                    Request.INCREMENTAL, Request.RESUME):
            return self._serve_receive(partner, args[0], validate_name(args[1], "Snapshot"), args[2], stdin.fileno())
        if op == Request.RECEIVE and len(args) in (5, 7) and args[2] == Request.INCREMENTAL:
            options = dict(zip(args[3::2], args[4::2], strict=True))
            if len(options) * 2 == len(args) - 3 and set(options) <= {Request.FROM, Request.ROLLBACK_TO}:
                base = options.get(Request.FROM)
                if base is not None and not base.isdigit():
                    raise ValidationError("The stream's base is not a snapshot guid")
                rollback_to = options.get(Request.ROLLBACK_TO)
                return self._serve_receive(partner, args[0], validate_name(args[1], "Snapshot"), args[2],
                                           stdin.fileno(), base_guid=base,
                                           rollback_to=validate_name(rollback_to, "Snapshot") if rollback_to else None)
        if op == Request.DELETE_RELATIONSHIP and len(args) == 2 \
                and args[1] in (Request.DELETE_REPLICA, Request.PRESERVE_REPLICA):
            return self._serve_delete_relationship(partner, args[0], args[1] == Request.PRESERVE_REPLICA)
        raise ValidationError(f"Unknown replication request: {' '.join(words)[:100]!r}")

    def _stream_features(self) -> list[str]:
        """What streams this appliance's ZFS can receive (the sender picks its flags by them).
        ZFS takes a stream with embedded data (send -e) into an encrypted dataset only raw
        ("incompatible embedded data stream feature with encrypted receive"): while this
        appliance has an encrypted pool, where a replica may be, it takes no such stream."""
        features = set(self.ds.zfs.stream_features())
        if "embedded_data" in features and any(self.ds.encrypted(pool.name) for _, pool in self.pools.live()):
            features.discard("embedded_data")
        return sorted(features)

    def _repl_addresses(self) -> list[str]:
        return [a for iface in self.network.list() if "repl" in iface["services"] for a in iface["ip4_addrs"]]

    def _serve_unpartner(self, partner: Partner) -> dict:
        with self.store.session() as s:
            if s.query(Relationship).filter(Relationship.partner_id == partner.id).first():
                raise ConflictError("Relationships with this partner exist here")
        with self.lock.held():
            self.partners.forget_partner(partner.id)
        return {}

    def _partner_relationship(self, partner: Partner, rel_id: str, role: str | None = None) -> Relationship:
        with self.store.session() as s:
            rel = s.get(Relationship, hex_id(rel_id, "Relationship"))
            if rel is None or rel.partner_id != partner.id or (role and rel.local_role != role):
                raise NotFoundError(f"Relationship {rel_id} not found")
            s.expunge(rel)
            return rel

    def _serve_create_replica(self, partner: Partner, req: dict) -> dict:
        rel_id = req.get("rel_id")
        if not isinstance(rel_id, str) or not _HEX32.fullmatch(rel_id):
            raise ValidationError("rel_id is not valid")
        kind = req.get("volume_type")
        if kind not in ("filesystem", "lun"):
            raise ValidationError("Only filesystem and lun volumes are replicated")
        primary_name = validate_name(req.get("primary_vol_name"))
        name = validate_name(req.get("name") or f"{primary_name}_replica")
        live = self.pools.live()
        if req.get("pool_id") is not None:
            matches = [(r, p) for r, p in live if str(r.id) == str(req["pool_id"])]
            if not matches:
                raise NotFoundError(f"Pool {req['pool_id']} not found on the partner")
        elif len(live) != 1:
            raise ValidationError(f"The partner has {len(live)} pools: give remote_pool_id")
        else:
            matches = live
        pool_row, summary = matches[0]
        view = self.catalog.load(pool_row.id)
        existing = [v for v in view.volumes.values() if v.row.name == name]
        if existing:
            if not req.get("reuse"):
                raise ConflictError(f"The partner's pool {summary.name} already has a volume named {name} "
                                    "(reuse: true adopts it)")
            volume = existing[0]
            if volume.row.volume_type != kind:
                raise ConflictError(f"{name} on the partner is a {volume.row.volume_type}, not a {kind}")
            with self.store.session() as s:
                for rel in s.query(Relationship).filter(Relationship.local_vol_id == volume.row.id):
                    if rel.partner_id == partner.id and rel.remote_vol_id == str(req.get("primary_vol_id")):
                        s.delete(rel)  # a stale replica of the same volume from the same partner
                    else:
                        raise ConflictError(f"{name} on the partner belongs to relationship {rel.id}")
            vol_id, made_here = volume.row.id, False
        else:
            size = req.get("size_total") if kind == "lun" else None
            made = self.volumes.create(name=name, volume_type=kind, pool_id=str(pool_row.id), size_total=size,
                                       size_block=req.get("size_block") if kind == "lun" else None)
            vol_id, made_here = int(made["id"]), True
        # Clients must not change a replica (a changed replica refuses the next incremental):
        # read-only, and no access-time updates, which ZFS would count as a change (a LUN's
        # zvol has no access times; on zfs-fuse a LUN is a filesystem holding its image).
        dataset = f"{summary.name}/{name}"
        try:
            if kind == "filesystem" or not self.ds.has_zvols:
                self.ds.set(dataset, "atime", "off")
            self.ds.set(dataset, "readonly", "on")
        except (CommandError, OSError):
            if made_here:  # the request failed: the replica it made goes with it
                self.volumes.delete(str(vol_id))
            raise
        with self.store.session() as s:
            s.add(Relationship(id=rel_id, partner_id=partner.id, local_role=REPLICA, local_vol_id=vol_id,
                               remote_pool_id=str(req.get("primary_pool_id")),
                               remote_vol_id=str(req.get("primary_vol_id")), remote_vol_name=primary_name))
        answer: dict[str, object] = {"vol_id": str(vol_id), "vol_name": name, "pool_id": str(pool_row.id)}
        try:  # where its first stream should go; without them the primary asks before it
            answer["repl_addresses"] = self._repl_addresses()
            answer["stream_features"] = self._stream_features()
        except Exception as exc:  # the replica and its relationship stand: the answer is only a hint
            log.warning("replica %s made; its replication addresses are unknown: %s", name, describe(exc))
        return answer

    def _replica_snapshots(self, rel: Relationship):
        with self.store.session() as s:
            row = s.get(Volume, rel.local_vol_id)
            pool_id = row.pool_id if row is not None else None
            settle = row is not None and row.state == RECEIVING
        if settle:  # a receive in place of the placeholder whose process died: settled first
            self.volumes.settle_replacement(rel.local_vol_id)
        if pool_id is None:
            raise NotFoundError("The replica volume no longer exists")
        view = self.catalog.load(pool_id)  # the replica's pool only: not every pool's datasets
        volume = view.volumes.get(rel.local_vol_id)
        if volume is None:
            raise NotFoundError("The replica volume no longer exists")
        return volume, [v for v in view.snapshots.values() if v.volume.row.id == volume.row.id]

    def _serve_snapshots(self, partner: Partner, rel_id: str) -> dict:
        rel = self._partner_relationship(partner, rel_id, REPLICA)
        volume, snaps = self._replica_snapshots(rel)
        # Oldest first, with when each was taken: the sender's base is the newest it shares.
        txgs = self.ds.snapshot_numbers(volume.dataset, "createtxg") if snaps else {}
        answer: dict[str, object] = {"snapshots": [
            {"id": str(v.row.id), "name": v.row.name, "guid": v.props.get("guid"), "createtxg": txg}
            for txg, v in sorted(((txgs.get(v.row.name, 0), v) for v in snaps), key=lambda p: (p[0], p[1].row.id))]}
        if self._resumable():  # what an interrupted stream left: the sender may go on from there
            answer["resume_token"] = self.ds.resume_token(volume.dataset)
        return answer

    def _refuse_diverged(self, volume, snaps: list, base_guid: str) -> None:
        """An incremental follows only the replica's newest snapshot, its base (OpenZFS checks
        this itself; zfs-fuse would receive it after snapshots the primary never sent)."""
        base = next((v.row.name for v in snaps if v.props.get("guid") == base_guid), None)
        if base is None:
            raise ConflictError("The replica does not hold the stream's base snapshot")
        txgs = self.ds.snapshot_numbers(volume.dataset, "createtxg")  # ZFS's own list: one made a moment ago too
        newer = sorted((txg, name) for name, txg in txgs.items() if base in txgs and txg > txgs[base])
        if newer:
            raise ConflictError(f"The replica has snapshots newer than the stream's base {base}: "
                                f"{', '.join(name for _, name in newer)} (a session with rollback_replica true "
                                "rolls it back, destroying them)")

    def _resumable(self) -> bool:
        return "resumable" in self.ds.zfs.stream_features()

    def _serve_receive(self, partner: Partner, rel_id: str, snap_name: str, mode: str, stdin: int,
                       base_guid: str | None = None, rollback_to: str | None = None) -> dict:
        rel = self._partner_relationship(partner, rel_id, REPLICA)
        volume, snaps = self._replica_snapshots(rel)
        if any(v.row.name == snap_name for v in snaps):
            raise ConflictError(f"The replica already has a snapshot named {snap_name}")
        if mode in (Request.FULL, Request.FULL_RAW) and snaps:
            raise ConflictError("The replica already has snapshots: only an incremental stream can follow")
        if rollback_to is not None and not any(v.row.name == rollback_to for v in snaps):
            raise ConflictError(f"The replica has no snapshot {rollback_to} to roll back to")
        target = f"{volume.dataset}@{snap_name}"
        # The rest of a full stream replaces the (empty) replica as its start would (-F).
        full = mode in (Request.FULL, Request.FULL_RAW) or (mode == Request.RESUME and not snaps)
        resumable = self._resumable()
        with self._receiving(rel.id, wait=0):
            kept = self.ds.resume_token(volume.dataset) if resumable else None
            if mode == Request.RESUME and kept is None:
                raise ConflictError("The replica holds no interrupted transfer to resume")
            if mode != Request.RESUME and kept is not None:
                # A stream from the start: what an interrupted one left is dropped first, as
                # ZFS refuses any other stream while it is there.
                log.info("replica %s: dropping the partial state of an interrupted transfer", volume.dataset)
                self.ds.abort_resumable(volume.dataset)
            if rollback_to is not None:  # asked for: the replica's later snapshots are destroyed
                log.info("replica %s: rolling back to %s as the primary asked", volume.dataset, rollback_to)
                try:
                    with self.lock.held():
                        self.ds.rollback(f"{volume.dataset}@{rollback_to}")
                except CommandError as exc:
                    raise ConflictError(f"The replica could not be rolled back to {rollback_to}: "
                                        f"{describe(exc)}") from exc
            elif base_guid is not None:
                self._refuse_diverged(volume, snaps, base_guid)
            # ZFS takes a raw (encrypted) full stream, or any full stream under an encrypted
            # parent, only as a new dataset: the empty replica makes way for it.
            if mode == Request.FULL_RAW or (mode == Request.FULL and self.ds.encrypted(volume.dataset)):
                answer = self._receive_in_place(volume, target, snap_name, stdin)
            else:
                answer = self._receive_into(volume, target, snap_name, full, stdin, resumable)
            self.bookmarks.remember_common(rel.id, None, snap_name, answer.pop("guid", None))
            return answer

    def _receive_in_place(self, volume, target: str, snap_name: str, stdin: int) -> dict:
        """A full stream received as a new dataset in place of the replica's empty one (see
        VolumeService.begin_replacement): not resumable; a failed one leaves the placeholder
        as it was, a crash is settled at the next start or request."""
        try:
            props = self.volumes.begin_replacement(volume.row.id, volume.dataset)
        except CommandError as exc:
            raise ConflictError(f"The replica's empty dataset could not make way for the stream: "
                                f"{describe(exc)}") from exc
        try:
            self.ds.receive_new(target, stdin=stdin, props=props)
        except CommandError as exc:
            raise ConflictError(describe(exc)) from exc
        finally:  # the received dataset is the replica's, or the placeholder is made again
            self.volumes.end_replacement(volume.row.id, volume.dataset)
        return self._received(volume, snap_name)

    def _receive_into(self, volume, target: str, snap_name: str, full: bool, stdin: int,
                      resumable: bool = False) -> dict:
        # A zvol (a LUN on OpenZFS) is never mounted: it is received as it is.
        mounted = (volume.props or {}).get("type") != "volume"
        try:
            # Received unmounted: zfs-fuse fails a forced receive onto a mounted dataset, and
            # does not drop the kernel's cached pages of files a receive changed. A replica in
            # use (e.g. shared) still takes an incremental while mounted.
            if mounted:
                try:
                    self.ds.unmount(volume.dataset)
                except CommandError:
                    if full:
                        raise
            try:
                self.ds.receive(target, full=full, stdin=stdin, resumable=resumable)
            finally:
                if mounted:
                    self.ds.mount(volume.dataset)
        except CommandError as exc:
            raise ConflictError(describe(exc)) from exc
        return self._received(volume, snap_name)

    def _received(self, volume, snap_name: str) -> dict:
        with self.lock.held():
            view = self.catalog.load(volume.row.pool_id)
        for snap in view.snapshots.values():
            if snap.volume.row.id == volume.row.id and snap.row.name == snap_name:
                return {"snap_id": str(snap.row.id), "guid": snap.props.get("guid")}
        raise ConflictError(f"The received snapshot {snap_name} is not in the catalog")


    @contextlib.contextmanager
    def _receiving(self, rel_id: str, wait: float):
        """Held while a stream into the relationship's replica is received (in any process);
        `wait` seconds at most to get it (0: a receive already running is a conflict)."""
        path = receive_lock_path(self.settings.state_dir, rel_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ConflictError("A stream into this replica is being received") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # and the lock with it

    def _serve_delete_relationship(self, partner: Partner, rel_id: str, preserve: bool) -> dict:
        rel = self._partner_relationship(partner, rel_id)
        if rel.local_role == REPLICA:
            # A receive the primary just stopped ends first; then refused whole, or done whole.
            with self._receiving(rel.id, wait=self.settings.repl_stall_seconds):
                self.relationships.drop_replica_side(rel.id, preserve)
        else:
            self.sessions.stop_sessions(rel.id, "Canceled: the relationship was deleted on the partner")
            self.relationships.drop_relationship(rel.id)  # the primary volume is never deleted
        return {}
