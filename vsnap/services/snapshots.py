"""Snapshots of volumes: each backup is one; a restore clones one."""
from __future__ import annotations

import logging
import secrets
import time

from ..drivers.runner import CommandError, describe
from ..drivers.zfs import ZfsDatasetOps
from ..errors import ConflictError, NotFoundError, ValidationError
from ..store.db import Store
from ..store.models import Pool, Snapshot, Volume
from .catalog import (
    CREATING,
    DELETING,
    FILEBACKED,
    PROP_SNAP_ID,
    PROP_VOL_ID,
    READY,
    ApiId,
    Catalog,
    CatalogView,
    SnapshotView,
    VolumeView,
    find_one,
    parse_id,
)
from .locking import StorageLock
from .owner import current_owner, is_current, owner_alive
from .volumes import validate_name

log = logging.getLogger(__name__)


def generated_name() -> str:
    return f"snap_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}_{secrets.token_hex(4)}"


class SnapshotService:
    def __init__(self, store: Store, ds: ZfsDatasetOps, catalog: Catalog, volumes, lock: StorageLock):
        self.store = store
        self.ds = ds
        self.catalog = catalog
        self.volumes = volumes
        self.lock = lock

    @staticmethod
    def render(snap: SnapshotView, detail: bool) -> dict:
        body: dict[str, object] = {"id": str(snap.row.id), "name": snap.row.name,
                                   "parent_id": str(snap.volume.row.id)}
        if detail:
            body.update({
                "parent_name": snap.volume.row.name,
                "pool_id": str(snap.volume.row.pool_id),
                "pool_name": snap.volume.pool_name,
                "has_clones": bool(snap.clones),
                "size_used": snap.props.get("used"),
                "version_id": snap.props.get("guid"),
            })
        body["time_created"] = str(int(snap.props.get("creation") or snap.row.time_created))
        body["time_updated"] = str(snap.row.time_updated)
        return body

    def _find(self, view: CatalogView, snap_id: ApiId | None = None, name: str | None = None) -> SnapshotView:
        return find_one(view.snapshots, snap_id, name, "Snapshot", "of different volumes")

    def list(self, parent_id: ApiId | None = None) -> list[dict]:
        view = self.catalog.load()
        if parent_id is not None:
            self.volumes.find(view, parent_id)  # 404 for an unknown volume

        def render_list():
            snaps = sorted(view.snapshots.values(), key=lambda s: s.row.id)
            return [self.render(s, False) for s in snaps if parent is None or s.volume.row.id == parent]
        parent = parse_id(parent_id) if parent_id is not None else None  # "01" is volume 1
        return view.memo(("snapshots", parent), render_list)

    def get(self, snap_id: ApiId | None = None, name: str | None = None) -> dict:
        return self.render(self._find(self.catalog.load(), snap_id, name), True)

    def create(self, vol_id: ApiId, name: str | None = None) -> dict:
        """Takes a snapshot with two ZFS commands: `zfs snapshot` stamping the id in the same
        step, and one read of what the answer needs (guid, size, time), which also proves the
        dataset is still the volume's (its inherited volume id). No full catalog read: backup
        software takes snapshots of one volume after another."""
        if name is not None:
            validate_name(name, "Snapshot")
        with self.lock.held():
            with self.store.session() as s:  # one transaction: the volume, the names, the new row
                volume, pool = self._volume_rows(s, vol_id)
                # In-flight rows count too: their snapshots are theirs.
                taken = {n for (n,) in s.query(Snapshot.name).filter(Snapshot.volume_id == volume.id)}
                if name is None:
                    name = generated_name()
                    while name in taken:
                        name = generated_name()
                elif name in taken:
                    raise ConflictError(f"Volume {volume.name} already has a snapshot named {name}")
                row = Snapshot(volume_id=volume.id, name=name, state=CREATING, owner=current_owner())
                s.add(row)
                s.flush()
                snap_id = row.id
            dataset = f"{pool.name}/{volume.name}"
            zfs_name = f"{dataset}@{name}"
            try:
                self.ds.snapshot(zfs_name, {PROP_SNAP_ID: str(snap_id)})
                props = self.ds.get(zfs_name, ["guid", "used", "creation", PROP_VOL_ID])
            except CommandError as exc:
                self._drop_row(snap_id)
                if "already exists" in exc.reason:
                    raise ConflictError(f"Volume {volume.name} already has a snapshot named {name}") from exc
                self.volumes.view(vol_id)  # 404 when the volume is gone from ZFS (read afresh)
                raise ConflictError(f"ZFS refused to snapshot {dataset}: {describe(exc)}") from exc
            if props.get(PROP_VOL_ID, "-") not in ("-", str(volume.id)):
                # Another dataset took the volume's name outside the API: not ours to snapshot.
                self.ds.destroy(zfs_name)
                self._drop_row(snap_id)
                raise NotFoundError(f"Volume {vol_id} not found")
            row = self._finish(snap_id, props["guid"])
        return self.render(SnapshotView(row, VolumeView(volume, pool, pool.name, None), props), True)

    @staticmethod
    def _volume_rows(s, vol_id) -> tuple[Volume, Pool]:
        volume = s.get(Volume, parse_id(vol_id) or 0)
        pool = s.get(Pool, volume.pool_id) if volume is not None else None
        if volume is None or volume.state != READY or pool is None or pool.state != READY:
            raise NotFoundError(f"Volume {vol_id} not found")
        if volume.volume_type == FILEBACKED:
            raise ValidationError("A filebackedlun has no dataset of its own: snapshot its "
                                  "parent filesystem")
        return volume, pool

    def _drop_row(self, snap_id: int) -> None:
        with self.store.session() as s:
            s.delete(s.get(Snapshot, snap_id))

    def _finish(self, snap_id: int, guid: str) -> Snapshot:
        with self.store.session() as s:
            row = s.get(Snapshot, snap_id)
            row.guid, row.state, row.owner = guid, READY, None
        return row

    def delete(self, snap_id: ApiId) -> None:
        with self.lock.held():
            snap = self._find(self.catalog.load(), snap_id)
            if snap.clones:
                names = ", ".join(sorted(c.split("/", 1)[1] for c in snap.clones))
                raise ConflictError(f"Snapshot {snap.row.name} has clones: {names}; delete them first")
            with self.store.session() as s:
                row = s.get(Snapshot, snap.row.id)
                row.state, row.owner = DELETING, current_owner()
            try:
                self.ds.destroy(snap.zfs_name)
            except CommandError as exc:
                with self.store.session() as s:
                    row = s.get(Snapshot, snap.row.id)
                    row.state, row.owner = READY, None
                holds = self.ds.holds(snap.zfs_name)  # e.g. a replication session's, while it sends
                if holds:
                    raise ConflictError(f"Snapshot {snap.row.name} is held ({', '.join(holds)}: in use by a "
                                        "replication session); try again when it ends") from exc
                raise ConflictError(f"Snapshot {snap.row.name} could not be destroyed: {describe(exc)}") from exc
            with self.store.session() as s:
                s.delete(s.get(Snapshot, snap.row.id))

    def recover(self) -> None:
        with self.lock.held():
            with self.store.session() as s:
                rows = [(r, s.get(Volume, r.volume_id)) for r in
                        s.query(Snapshot).filter(Snapshot.state != READY).all()
                        if is_current(r.owner) or not owner_alive(r.owner)]
            for row, volume in rows:
                try:
                    self._recover_row(row, volume)
                except Exception:  # one snapshot's trouble must not stop the rest
                    log.exception("snapshot %s (%s): recovery failed", row.id, row.name)

    def _recover_row(self, row: Snapshot, volume: Volume) -> None:
        summary = self.volumes.pools.find(volume.pool_id)[1]
        zfs_name = f"{summary.name}/{volume.name}@{row.name}"
        found = self.ds.get(zfs_name, [PROP_SNAP_ID, "guid"]) if self.volumes.dataset_exists(zfs_name) else {}
        exists = bool(found)
        stamp = found.get(PROP_SNAP_ID, "-")
        with self.store.session() as s:
            claimed = s.query(Snapshot).filter(Snapshot.guid == found.get("guid"), Snapshot.volume_id == row.volume_id,
                                               Snapshot.id != row.id).first()
        if row.state == CREATING and exists and stamp in ("-", str(row.id)) and not claimed:
            if stamp == "-":
                self.ds.set(zfs_name, PROP_SNAP_ID, str(row.id))
            self._finish(row.id, found["guid"])  # taken under this row
            log.info("snapshot %s: creation had finished in ZFS; kept", zfs_name)
            return
        if row.state == DELETING and exists and found.get("guid") == row.guid:
            self.ds.destroy(zfs_name)
        with self.store.session() as s:
            s.delete(s.get(Snapshot, row.id))
        log.info("snapshot %s: interrupted %s settled", zfs_name, row.state)
