"""The index of volumes and snapshots, reconciled with ZFS on every read.

ZFS is the truth: one `zfs get -r` per pool gives every dataset and snapshot with its
properties. Datasets and snapshots made outside the API (by hand, or by a replication
receive) get rows and new IDs; rows whose dataset was destroyed outside the API go away.
Rows are matched by ZFS guid, which survives renames. Changes to the index happen under the
storage lock, so a reconcile never races a create in flight.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from ..drivers.runner import CommandError
from ..drivers.zfs import ZfsDatasetOps
from ..errors import ConflictError, NotFoundError
from ..store.db import Store
from ..store.models import Pool, Snapshot, Volume, now
from .locking import StorageLock

log = logging.getLogger(__name__)

PROP_VOL_ID = "com.vsnap:vol_id"
PROP_SNAP_ID = "com.vsnap:snap_id"
PROP_TYPE = "com.vsnap:type"
PROP_SERIAL = "com.vsnap:serial"
PROP_VOLSIZE = "com.vsnap:volsize"
USER_PROPS = [PROP_VOL_ID, PROP_SNAP_ID, PROP_TYPE, PROP_SERIAL, PROP_VOLSIZE]
READY, CREATING, DELETING = "ready", "creating", "deleting"
FILEBACKED = "filebackedlun"


@dataclass
class VolumeView:
    row: Volume
    pool_row: Pool
    pool_name: str
    props: dict[str, str] | None  # None for a file-backed LUN (no dataset of its own)

    @property
    def dataset(self) -> str:
        return f"{self.pool_name}/{self.row.name}"


@dataclass
class SnapshotView:
    row: Snapshot
    volume: VolumeView
    props: dict[str, str]
    clones: list[str] = field(default_factory=list)  # dataset names of clones

    @property
    def zfs_name(self) -> str:
        return f"{self.volume.dataset}@{self.row.name}"


@dataclass
class CatalogView:
    volumes: dict[int, VolumeView]
    snapshots: dict[int, SnapshotView]

    def origin_snapshot_id(self, volume: VolumeView) -> int | None:
        origin = (volume.props or {}).get("origin", "-")
        for snap in self.snapshots.values():
            if snap.zfs_name == origin:
                return snap.row.id
        return None


def parse_id(value) -> int | None:
    """A decimal API id as a number; None for anything else ('²' is a digit to str.isdigit(),
    not to int(); 19 digits would overflow SQLite's integers)."""
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def find_one(objects: dict, obj_id, name, what: str, scope: str):
    """One volume or snapshot of a view by API id, or by name when the name is unambiguous."""
    if obj_id is not None:
        found = objects.get(parse_id(obj_id))
        if found:
            return found
        raise NotFoundError(f"{what} {obj_id} not found")
    matches = [o for o in objects.values() if o.row.name == name]
    if not matches:
        raise NotFoundError(f"{what} {name} not found")
    if len(matches) > 1:
        raise ConflictError(f"Several {what.lower()}s are named {name} ({scope}); use ?id=")
    return matches[0]


def _split(tree: dict[str, dict[str, str]], pool: str):
    """Volume datasets (directly under the pool) and their snapshots."""
    datasets, snapshots = {}, {}
    for name, props in tree.items():
        base, _, snap = name.partition("@")
        if base.count("/") != 1 or not base.startswith(pool + "/"):
            continue
        if snap:
            snapshots[name] = props
        else:
            datasets[name] = props
    return datasets, snapshots


def _stamped_id(value: str | None) -> int | None:
    return parse_id(value) if value else None


class Catalog:
    def __init__(self, store: Store, ds: ZfsDatasetOps, pools, lock: StorageLock):
        self.store = store
        self.ds = ds
        self.pools = pools
        self.lock = lock

    def load(self, pool_id: int | None = None) -> CatalogView:
        view = CatalogView({}, {})
        for pool_row, summary in self.pools._live():
            if pool_id is not None and pool_row.id != pool_id:
                continue
            tree = self.ds.tree(summary.name, USER_PROPS)
            if self._reconcile(pool_row, summary.name, tree, apply=False):
                with self.lock.held():
                    tree = self.ds.tree(summary.name, USER_PROPS)
                    self._reconcile(pool_row, summary.name, tree, apply=True)
            self._build(view, pool_row, summary.name, tree)
        return view

    # -- reconciling ------------------------------------------------------------------------
    def _reconcile(self, pool_row: Pool, pool: str, tree, *, apply: bool) -> bool:
        """Brings the pool's rows in line with ZFS. With apply=False only says whether any
        change is needed."""
        datasets, snapshots = _split(tree, pool)
        changed = False
        with self.store.session() as s:
            volumes = s.query(Volume).filter(Volume.pool_id == pool_row.id).all()
            by_guid = {v.guid: v for v in volumes if v.guid}
            ds_guids = {props.get("guid"): name for name, props in datasets.items()}
            in_flight = {v.id for v in volumes if v.state != READY}
            gone = {v.id for v in volumes if v.state == READY and v.volume_type != FILEBACKED
                    and v.guid not in ds_guids}
            for vol in volumes:
                if vol.state != READY:
                    continue
                if vol.volume_type == FILEBACKED:
                    parent = s.get(Volume, vol.parent_id) if vol.parent_id else None
                    if parent is None or parent.id in gone:
                        changed = True
                        if apply:
                            s.delete(vol)
                    continue
                name = ds_guids.get(vol.guid)
                if name is None:  # destroyed outside the API
                    changed = True
                    if apply:
                        log.info("volume %s (%s) no longer exists in ZFS; removed", vol.id, vol.name)
                        s.delete(vol)
                elif name.split("/", 1)[1] != vol.name:  # renamed outside the API
                    changed = True
                    if apply:
                        vol.name = name.split("/", 1)[1]
            for name, props in datasets.items():
                guid = props.get("guid")
                if guid in by_guid or _stamped_id(props.get(PROP_VOL_ID)) in in_flight:
                    continue
                changed = True
                if apply:
                    self._adopt_volume(s, pool_row, name, props)
            if changed and apply:
                s.flush()
            changed |= self._reconcile_snapshots(s, pool_row, pool, snapshots, apply)
        return changed

    def _adopt_volume(self, s, pool_row: Pool, name: str, props: dict[str, str]) -> None:
        stamped = _stamped_id(props.get(PROP_VOL_ID))
        vol_id = stamped if stamped is not None and s.get(Volume, stamped) is None else None
        kind = props.get(PROP_TYPE)
        if kind not in ("filesystem", "lun"):
            kind = "lun" if props.get("type") == "volume" else "filesystem"
        serial = props.get(PROP_SERIAL)
        serial = serial if serial and serial != "-" else (str(uuid.uuid4()) if kind == "lun" else None)
        row = Volume(id=vol_id, pool_id=pool_row.id, name=name.split("/", 1)[1], volume_type=kind,
                     guid=props.get("guid"), is_clone=props.get("origin", "-") != "-", serial=serial,
                     state=READY, time_created=int(props.get("creation") or 0) or now())
        s.add(row)
        s.flush()
        try:
            if str(row.id) != props.get(PROP_VOL_ID):
                self.ds.set(name, PROP_VOL_ID, str(row.id))
            if serial and serial != props.get(PROP_SERIAL):
                self.ds.set(name, PROP_SERIAL, serial)
        except CommandError as exc:
            log.warning("could not stamp %s: %s", name, exc)
        log.info("picked up volume %s as id %s", name, row.id)

    def _reconcile_snapshots(self, s, pool_row: Pool, pool: str, snapshots, apply: bool) -> bool:
        """Snapshots are matched by (volume, guid): a received snapshot keeps its source's guid,
        so one appliance can hold the same guid under several datasets (replicas)."""
        changed = False
        volumes = {v.name: v for v in s.query(Volume).filter(Volume.pool_id == pool_row.id).all()}
        rows = s.query(Snapshot).join(Volume).filter(Volume.pool_id == pool_row.id).all()
        by_key = {(r.volume_id, r.guid): r for r in rows if r.guid}
        zfs_keys = {}
        for name, props in snapshots.items():
            volume = volumes.get(name.split("@", 1)[0].split("/", 1)[1])
            if volume is not None:
                zfs_keys[(volume.id, props.get("guid"))] = name
        in_flight = {r.id for r in rows if r.state != READY}
        # A snapshot is stamped with its id only after it is taken: one whose name an in-flight
        # row holds is that row's, for it (or the next start) to finish.
        in_flight_names = {(r.volume_id, r.name) for r in rows if r.state != READY}
        for row in rows:
            if row.state != READY:
                continue
            name = zfs_keys.get((row.volume_id, row.guid))
            if name is None:
                changed = True
                if apply:
                    s.delete(row)
            elif name.split("@", 1)[1] != row.name:
                changed = True
                if apply:
                    row.name = name.split("@", 1)[1]
        for name, props in snapshots.items():
            guid = props.get("guid")
            volume = volumes.get(name.split("@", 1)[0].split("/", 1)[1])
            if volume is None or volume.state != READY:
                continue  # its volume is picked up first, on this pass or the next
            if (volume.id, guid) in by_key or _stamped_id(props.get(PROP_SNAP_ID)) in in_flight:
                continue
            if (volume.id, name.split("@", 1)[1]) in in_flight_names:
                continue
            changed = True
            if apply:
                stamped = _stamped_id(props.get(PROP_SNAP_ID))
                snap_id = stamped if stamped is not None and s.get(Snapshot, stamped) is None else None
                row = Snapshot(id=snap_id, volume_id=volume.id, name=name.split("@", 1)[1], guid=guid,
                               state=READY, time_created=int(props.get("creation") or 0) or now())
                s.add(row)
                s.flush()
                if str(row.id) != props.get(PROP_SNAP_ID):
                    try:
                        self.ds.set(name, PROP_SNAP_ID, str(row.id))
                    except CommandError as exc:
                        log.warning("could not stamp %s: %s", name, exc)
        return changed

    # -- building views ---------------------------------------------------------------------
    def _build(self, view: CatalogView, pool_row: Pool, pool: str, tree) -> None:
        datasets, snapshots = _split(tree, pool)
        by_guid = {props.get("guid"): (name, props) for name, props in {**datasets, **snapshots}.items()}
        clones: dict[str, list[str]] = {}
        for name, props in datasets.items():
            if props.get("origin", "-") != "-":
                clones.setdefault(props["origin"], []).append(name)
        with self.store.session() as s:
            for vol in s.query(Volume).filter(Volume.pool_id == pool_row.id, Volume.state == READY).all():
                if vol.volume_type == FILEBACKED:
                    view.volumes[vol.id] = VolumeView(vol, pool_row, pool, None)
                elif vol.guid in by_guid:
                    view.volumes[vol.id] = VolumeView(vol, pool_row, pool, by_guid[vol.guid][1])
            snaps_by_key = {(name.split("@", 1)[0], props.get("guid")): (name, props)
                            for name, props in snapshots.items()}
            for snap in s.query(Snapshot).join(Volume).filter(
                    Volume.pool_id == pool_row.id, Snapshot.state == READY).all():
                volume = view.volumes.get(snap.volume_id)
                found = snaps_by_key.get((volume.dataset, snap.guid)) if volume is not None else None
                if found is None:
                    continue
                name, props = found
                view.snapshots[snap.id] = SnapshotView(snap, volume, props, clones.get(name, []))
