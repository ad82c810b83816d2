"""The index of volumes and snapshots, reconciled with ZFS when it is read.

ZFS is the truth: one `zfs get -r` per pool gives every dataset and snapshot with its
properties. Datasets and snapshots made outside the API (by hand, or by a replication
receive) get rows and new IDs; rows whose dataset was destroyed outside the API go away.
Rows are matched by ZFS guid, which survives renames. Changes to the index happen under the
storage lock, so a reconcile never races a create in flight.

A read is kept and shared by the threads of a process while the storage generation (see
store/generation.py) stays the one it was read at: every change made through the appliance,
in any process, is seen at the next read. Changes made outside the appliance (zfs by hand,
data written by clients changing sizes) are seen within `max_age` seconds, or ten times what
the last full read took, so keeping up costs at most a tenth of a core; a reader that needs
them now asks for a fresh read (the API: `Cache-Control: no-cache`). A read that expired a
moment ago (up to three lifetimes) is still served while one thread reads anew in the
background, so no request of a busy server waits for it; an older one is read anew at once.
"""
from __future__ import annotations

import contextvars
import ctypes
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

from sqlalchemy import select

from ..drivers.runner import CommandError
from ..drivers.zfs import ZfsDatasetOps
from ..errors import ConflictError, NotFoundError
from ..logs import request_id_var
from ..store.db import Store
from ..store.generation import Generation
from ..store.models import Pool, Snapshot, Volume, now
from .locking import StorageLock

log = logging.getLogger(__name__)

PROP_VOL_ID = "com.vsnap:vol_id"
PROP_SNAP_ID = "com.vsnap:snap_id"
PROP_TYPE = "com.vsnap:type"
PROP_SERIAL = "com.vsnap:serial"
PROP_VOLSIZE = "com.vsnap:volsize"
USER_PROPS = [PROP_VOL_ID, PROP_SNAP_ID, PROP_TYPE, PROP_SERIAL, PROP_VOLSIZE]
# What a snapshot's view needs (a read of 10,000 snapshots keeps only these).
SNAPSHOT_PROPS = {"type", "guid", "used", "referenced", "creation", PROP_SNAP_ID}
READY, CREATING, DELETING = "ready", "creating", "deleting"
# A replica's empty dataset being replaced by a full stream received as a new dataset (an
# encrypted one: ZFS receives it over no existing dataset); see VolumeService.begin_replacement.
RECEIVING = "receiving"
FILEBACKED = "filebackedlun"

# An object's id as the services take it: the API's decimal string, or the number itself
# when one service calls another (parse_id reads either).
ApiId = str | int
T = TypeVar("T")
V = TypeVar("V", "VolumeView", "SnapshotView")  # what find_one looks up


@dataclass
class VolumeView:
    row: Volume
    pool_row: Pool
    pool_name: str
    props: dict[str, str] | None  # None for a file-backed LUN (no dataset of its own)

    @property
    def dataset(self) -> str:
        return f"{self.pool_name}/{self.row.name}"

    @property
    def zfs_props(self) -> dict[str, str]:
        """`props` of a volume known to have a dataset of its own (any but a file-backed LUN)."""
        assert self.props is not None, f"volume {self.row.name} is a file-backed LUN: no dataset"
        return self.props


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
    _memo: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)

    MEMO_SIZE = 16

    def memo(self, key: Hashable, build: Callable[[], T]) -> T:
        """What `build()` derives from this view (which never changes), computed once per key:
        a listing asked for many times between two changes is rendered once. The same object
        is handed out each time, so callers must not change it."""
        try:
            return self._memo[key]
        except KeyError:
            pass
        value = build()
        self._memo[key] = value
        while len(self._memo) > self.MEMO_SIZE:
            try:
                self._memo.popitem(last=False)
            except KeyError:  # another thread emptied it meanwhile
                break
        return value

    @cached_property
    def _snapshot_ids_by_name(self) -> dict[str, int]:
        return {snap.zfs_name: snap.row.id for snap in self.snapshots.values()}

    def origin_snapshot_id(self, volume: VolumeView) -> int | None:
        return self._snapshot_ids_by_name.get((volume.props or {}).get("origin", "-"))

    def unstamped(self) -> list[tuple[str, int]]:
        """Snapshots not (yet) carrying their id as a ZFS property: (zfs name, id)."""
        return [(snap.zfs_name, snap.row.id) for snap in self.snapshots.values()
                if snap.props.get(PROP_SNAP_ID) != str(snap.row.id)]

    def of_pool(self, pool_id: int) -> "CatalogView":
        return CatalogView({i: v for i, v in self.volumes.items() if v.row.pool_id == pool_id},
                           {i: s for i, s in self.snapshots.items() if s.volume.row.pool_id == pool_id})


def _load_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()


def _give_back_freed_memory() -> None:
    """A full read of a large pool briefly holds the command's output, its lines and two
    views; glibc keeps what Python freed for reuse, so the server's resident memory stays at
    that peak. Handing it back after each read keeps it at what the kept view needs."""
    if _malloc_trim is not None:
        _malloc_trim(0)


# Set by the API for a request that asked for a fresh read (Cache-Control: no-cache).
fresh_reads: contextvars.ContextVar[bool] = contextvars.ContextVar("vsnap_fresh_reads", default=False)


@dataclass
class _Kept:
    token: bytes  # the storage generation before the read began
    view: CatalogView
    started: float
    cost: float  # seconds the read took
    settled: bool = True  # rows brought in line with what was read (see _read)


def parse_id(value: object) -> int | None:
    """A decimal API id as a number; None for anything else ('²' is a digit to str.isdigit(),
    not to int(); 19 digits would overflow SQLite's integers)."""
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def find_one(objects: dict[int, V], obj_id: ApiId | None, name: str | None, what: str, scope: str) -> V:
    """One volume or snapshot of a view by API id, or by name when the name is unambiguous."""
    if obj_id is not None:
        key = parse_id(obj_id)
        found = objects.get(key) if key is not None else None
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
    """Volume datasets (directly under the pool) and their snapshots; bookmarks (dataset#name,
    which `zfs get -r` lists too) are the appliance's own and no volume."""
    datasets, snapshots = {}, {}
    for name, props in tree.items():
        if "#" in name:
            continue
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
    def __init__(self, store: Store, ds: ZfsDatasetOps, pools, lock: StorageLock, *,
                 generation: Generation | None = None, max_age: float = 2.0, clock=time.monotonic):
        self.store = store
        self.ds = ds
        self.pools = pools
        self.lock = lock
        self.generation = generation  # None: no keeping, every load reads ZFS
        self.max_age = max_age
        self.clock = clock
        self._kept: _Kept | None = None
        self._reading = threading.Lock()  # one full read at a time per process
        self._refreshing = threading.Lock()  # held by the background refresh while it runs
        self._stamped: set[tuple[str, int]] = set()  # see stamp_missing

    def load(self, pool_id: int | None = None, *, fresh: bool = False) -> CatalogView:
        """Every volume and snapshot that exists, with its row and ZFS properties. The view is
        shared: callers must not change it."""
        view = self._current(fresh or fresh_reads.get())
        return view if pool_id is None else view.of_pool(pool_id)

    def _current(self, fresh: bool) -> CatalogView:
        if self.generation is None or self.max_age <= 0:
            return self._read()[0]
        kept = rejected = self._kept
        if not fresh and kept is not None and kept.token == self.generation.read():
            age, lifetime = self.clock() - kept.started, max(self.max_age, 10 * kept.cost)
            if age <= lifetime:
                return kept.view
            if age <= 3 * lifetime:  # expired a moment ago: served while a thread reads anew
                self._refresh_in_background()
                return kept.view
            # Long expired (an idle server, or reads failing): this request reads for itself.
        asked = self.clock()
        with self._reading:  # a read another thread finished meanwhile may do (not the one refused)
            kept = self._kept
            if kept is not None and kept is not rejected and kept.token == self.generation.read() \
                    and (not fresh or kept.started >= asked):
                return kept.view
            kept = self._read_and_keep()
        return kept.view if kept.settled else self._read_settling().view

    def _read_and_keep(self) -> _Kept:
        generation = self.generation
        assert generation is not None, "reads are kept only with a generation (see _current)"
        started = self.clock()
        token = generation.read()
        view, settled = self._read(wait_for_lock=False)
        kept = _Kept(token, view, started, self.clock() - started, settled)
        if settled:  # else not kept: it lacks what is still to be settled
            self._kept = kept
            _give_back_freed_memory()
        return kept

    def _read_settling(self) -> _Kept:
        """A read that found outside changes to settle while the storage lock was taken: again,
        holding the storage lock first, then the read lock (the order every writer takes them
        in, so this wait cannot close a circle)."""
        with self.lock.held(), self._reading:
            return self._read_and_keep()

    def _refresh_in_background(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # one is running

        def refresh():
            request_id_var.set("catalog")
            try:
                with self._reading:
                    kept = self._kept
                    if kept is None or self.clock() - kept.started > self.max_age:
                        kept = self._read_and_keep()
                if not kept.settled:
                    self._read_settling()
            except Exception:  # the next request reads for itself
                log.exception("catalog: background read failed")
            finally:
                self._refreshing.release()
        try:
            threading.Thread(target=refresh, name="vsnap-catalog", daemon=True).start()
        except RuntimeError:  # no thread to be had: the next request tries again
            self._refreshing.release()
            log.exception("catalog: could not start a background read")

    def _read(self, wait_for_lock: bool = True) -> tuple[CatalogView, bool]:
        """The view, and whether the rows were settled with ZFS. Settling takes the storage
        lock; a kept read (which holds `_reading`) must not wait for it, since the lock's
        holder may be waiting for `_reading` in its own load: it builds the view from what
        it read and says it is unsettled, and the caller reads again taking the storage lock
        first (_read_settling)."""
        view, settled = CatalogView({}, {}), True
        for pool_row, summary in self.pools.live():
            tree = self.ds.tree(summary.name, USER_PROPS, SNAPSHOT_PROPS)
            if self._reconcile(pool_row, summary.name, tree, apply=False):
                with (self.lock.held() if wait_for_lock else self.lock.held_if_free()) as got:
                    if got is False:
                        settled = False
                    else:
                        tree = self.ds.tree(summary.name, USER_PROPS, SNAPSHOT_PROPS)
                        self._reconcile(pool_row, summary.name, tree, apply=True)
            self._build(view, pool_row, summary.name, tree)
        return view, settled

    def stamp_missing(self) -> int:
        """Stamps snapshots picked up from outside the API with their ids (one `zfs set`
        each, so in the background, not in the read that found them). A stamp changes nothing
        a client sees, so readers are not told (their kept reads stay good); what this process
        stamped is remembered until its reads show the stamps, so a later pass over a view
        read before them does not stamp again. Returns how many were stamped."""
        todo = self.load().unstamped()
        self._stamped &= set(todo)  # what the view shows stamped is forgotten
        done = 0
        for name, snap_id in todo:
            if (name, snap_id) in self._stamped:
                continue
            with self.lock.held():
                try:
                    self.ds.stamp(name, PROP_SNAP_ID, str(snap_id))
                except CommandError as exc:  # destroyed or renamed meanwhile
                    log.warning("could not stamp %s: %s", name, exc)
                    continue
            self._stamped.add((name, snap_id))
            done += 1
        if done:
            log.info("stamped %s snapshots picked up from outside the API", done)
        return done

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
            # A dataset of a row's name while that row's change is in flight is that change's
            # (e.g. a replica being received in place of its placeholder, not stamped yet).
            in_flight_names = {v.name for v in volumes if v.state != READY}
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
                if guid in by_guid or _stamped_id(props.get(PROP_VOL_ID)) in in_flight \
                        or name.split("/", 1)[1] in in_flight_names:
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
                s.add(row)  # stamped later, in the background: see stamp_missing
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
            # Plain rows (attribute access like the model's, a tenth of the memory): a view
            # of 10,000 snapshots is kept in every server process.
            for snap in s.execute(select(*Snapshot.__table__.columns).join(Volume).where(
                    Volume.pool_id == pool_row.id, Snapshot.state == READY)):
                volume = view.volumes.get(snap.volume_id)
                if volume is None:
                    continue
                found = snaps_by_key.get((volume.dataset, snap.guid))
                if found is None:
                    continue
                name, props = found
                view.snapshots[snap.id] = SnapshotView(snap, volume, props, clones.get(name, []))
