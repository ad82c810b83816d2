"""Volumes: filesystems, LUNs (zvols, or image files where ZFS has no zvols), file-backed
LUNs, and clones of snapshots."""
from __future__ import annotations

import builtins
import logging
import os
import re
import uuid
from types import EllipsisType

from ..drivers.lunfile import LunFileDriver
from ..drivers.runner import CommandError, describe
from ..drivers.zfs import ZfsDatasetOps
from ..errors import ConflictError, NotFoundError, ValidationError
from ..store.db import Store
from ..store.models import Volume, now
from .attachments import Attachments
from .catalog import (
    CREATING,
    DELETING,
    FILEBACKED,
    PROP_SERIAL,
    PROP_TYPE,
    PROP_VOL_ID,
    PROP_VOLSIZE,
    READY,
    RECEIVING,
    ApiId,
    Catalog,
    CatalogView,
    VolumeView,
    find_one,
    parse_id,
)
from .locking import StorageLock
from .owner import current_owner, is_current, owner_alive

log = logging.getLogger(__name__)

VOLUME_TYPES = ("filesystem", "lun", FILEBACKED)
MAX_NAME = 200  # leaves room for the pool's name and a snapshot's within ZFS's 255
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MIN_SIZE = 1 << 20
MAX_SIZE = 1 << 60
DEFAULT_BLOCK = 65536


def validate_name(name: object, what: str = "Volume") -> str:
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{what} name is required")
    if len(name) > MAX_NAME:
        raise ValidationError(f"{what} name is too long: at most {MAX_NAME} characters")
    if not _NAME_RE.fullmatch(name):
        raise ValidationError(f"{what} name must start with a letter or digit and contain only "
                              "letters, digits, '_', '-' and '.'")
    return name


def validate_block_size(size_block: int) -> int:
    if size_block < 512 or size_block > 131072 or size_block & (size_block - 1):
        raise ValidationError("size_block must be a power of two from 512 to 131072")
    return size_block


def validate_size(size: int, what: str = "size_total") -> int:
    if size < MIN_SIZE or size > MAX_SIZE:
        raise ValidationError(f"{what} must be between {MIN_SIZE} and {MAX_SIZE} bytes")
    return size


def resolve_inside(root: str, relative: object) -> str:
    """A path relative to a filesystem's root, refused when it could leave that filesystem:
    absolute paths, '..', and symlinks that point outside are all errors. `relative` is
    checked to be a string, too: it comes from requests (and nullable rows)."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise ValidationError("parent_path is required")
    if os.path.isabs(relative) or ".." in relative.split("/"):
        raise ValidationError("parent_path must be relative to the filesystem and stay inside it")
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, target]) != real_root or target == real_root:
        raise ValidationError("parent_path leaves the parent filesystem")
    if not os.path.isfile(target):
        raise ValidationError(f"parent_path {relative} is not an existing file in the parent filesystem")
    return os.path.relpath(target, real_root)


class VolumeService:
    def __init__(self, store: Store, ds: ZfsDatasetOps, lunfiles: LunFileDriver, catalog: Catalog,
                 pools, lock: StorageLock, attachments: Attachments | None = None):
        self.store = store
        self.ds = ds
        self.lunfiles = lunfiles
        self.catalog = catalog
        self.pools = pools
        self.lock = lock
        # What holds the volume (a share, LUN mappings) or guards it (replication): asked
        # before a delete or rename, told after it, and asked to describe it (attachments.py).
        self.attachments = attachments if attachments is not None else Attachments()

    # -- reading ----------------------------------------------------------------------------
    def find(self, view: CatalogView, vol_id=None, name=None) -> VolumeView:
        return find_one(view.volumes, vol_id, name, "Volume", "in different pools")

    def _sizes(self, v: VolumeView) -> tuple[str | None, str | None, str | None]:
        p = v.props
        if p is None:
            return None, None, None
        used, referenced = _number(p.get("used")) or 0, _number(p.get("referenced")) or 0
        if v.row.volume_type == "filesystem":
            quota = _number(p.get("quota"))
            return (str(quota) if quota else None), p["available"], str(used)
        if p.get("type") == "volume":
            total = _number(p.get("volsize")) or 0
        else:
            total = _number(p.get(PROP_VOLSIZE)) or self.lunfiles.size(p["mountpoint"]) or 0
        return str(total), str(max(total - referenced, 0)), str(used)

    def render(self, v: VolumeView, view: CatalogView, detail: bool) -> dict:
        total, free, used = self._sizes(v)
        row = v.row
        body = {
            "id": str(row.id),
            "name": row.name,
            "volume_type": row.volume_type,
            "is_clone": bool(row.is_clone),
            "pool_id": str(row.pool_id),
            "size_total": total,
            "size_free": free,
            "size_used": used,
            "time_created": str(int(v.props["creation"]) if v.props else row.time_created),
            "time_updated": str(row.time_updated),
        }
        if not detail:
            return body
        origin = view.origin_snapshot_id(v)
        body.update({
            "serial": row.serial,
            "pool_name": v.pool_name,
            "parent_id": str(row.parent_id) if row.parent_id else None,
            "parent_path": row.parent_path,
            "snapshot_id": str(origin) if origin else None,
            "share_id": None,
            "host_ids": [],
        })
        self.attachments.describe_volume(row, body)
        return body

    def list(self, *, volume_type: str | None = None, pool_id: str | None = None) -> list[dict]:
        view = self.catalog.load()

        def render_list():
            vols = sorted(view.volumes.values(), key=lambda v: v.row.id)
            return [self.render(v, view, False) for v in vols
                    if (volume_type is None or v.row.volume_type == volume_type)
                    and (pool_id is None or str(v.row.pool_id) == str(pool_id))]
        return view.memo(("volumes", volume_type, pool_id), render_list)

    def get(self, vol_id: ApiId | None = None, name: str | None = None) -> dict:
        view = self.catalog.load()
        return self.render(self.find(view, vol_id, name), view, True)

    def view(self, vol_id: ApiId) -> tuple[VolumeView, CatalogView]:
        view = self.catalog.load()
        return self.find(view, vol_id), view

    # -- creating ---------------------------------------------------------------------------
    def create(self, *, name: str, volume_type: str | None = None, pool_id: ApiId | None = None,
               size_total: int | None = None, size_block: int | None = None, parent_id: ApiId | None = None,
               parent_path: str | None = None, snapshot_id: ApiId | None = None) -> dict:
        validate_name(name)
        if snapshot_id is not None:
            return self._clone(name, snapshot_id)
        if volume_type not in VOLUME_TYPES:
            raise ValidationError(f"volume_type must be one of: {', '.join(VOLUME_TYPES)} "
                                  "(or give snapshot_id to clone)")
        if volume_type == FILEBACKED:
            return self._create_filebacked(name, parent_id, parent_path)
        if pool_id is None:
            raise ValidationError(f"pool_id is required for a {volume_type} volume")
        if volume_type == "lun":
            if size_total is None:
                raise ValidationError("size_total is required for a lun")
            validate_size(size_total)
            validate_block_size(size_block or DEFAULT_BLOCK)
        elif size_total is not None:
            validate_size(size_total)
        if size_block is not None and volume_type != "lun":
            raise ValidationError("size_block applies to lun volumes only")
        with self.lock.held():
            pool_row, summary = self.pools.find(pool_id)
            self._check_free(summary.name, name)
            row_id = self._begin(pool_row.id, name, volume_type,
                                 serial=str(uuid.uuid4()) if volume_type == "lun" else None,
                                 size_block=(size_block or DEFAULT_BLOCK) if volume_type == "lun" else None)
            dataset = f"{summary.name}/{name}"
            props = {PROP_VOL_ID: str(row_id), PROP_TYPE: volume_type}
            try:
                if volume_type == "filesystem":
                    if size_total:
                        props["quota"] = str(size_total)
                    self.ds.create_filesystem(dataset, props)
                else:
                    assert size_total is not None  # a lun: required above
                    self._create_lun(dataset, props, size_total, size_block or DEFAULT_BLOCK, row_id)
            except (CommandError, OSError) as exc:
                self._undo_create(row_id, dataset)
                raise ValidationError(f"ZFS refused to create {dataset}: {describe(exc)}") from exc
            self._finish_create(row_id, dataset)
        return self.get(vol_id=row_id)

    def _create_lun(self, dataset: str, props: dict, size: int, block: int, row_id: int) -> None:
        with self.store.session() as s:
            props[PROP_SERIAL] = s.get(Volume, row_id).serial
        props[PROP_VOLSIZE] = str(size)
        if self.ds.has_zvols:
            self.ds.create_zvol(dataset, size, block, props)
            return
        # No zvols: the LUN is an image file alone in its own dataset; the dataset's record
        # size is the LUN's block size.
        props["recordsize"] = str(block)
        self.ds.create_filesystem(dataset, props)
        self.lunfiles.create(self.ds.get(dataset, ["mountpoint"])["mountpoint"], size)

    def _check_free(self, pool: str, name: str) -> None:
        """Unique per pool: no dataset of that name (ours or not) and no file-backed LUN."""
        taken = self.dataset_exists(f"{pool}/{name}")
        if not taken:
            pool_row = self.pools.find(name=pool)[0]
            with self.store.session() as s:
                taken = s.query(Volume).filter(Volume.pool_id == pool_row.id, Volume.name == name).first() is not None
        if taken:
            raise ConflictError(f"Pool {pool} already has a volume named {name}")

    def dataset_exists(self, dataset: str) -> bool:
        try:
            self.ds.get(dataset, ["type"])
            return True
        except CommandError:
            return False

    def _begin(self, pool_id: int, name: str, volume_type: str, **fields) -> int:
        with self.store.session() as s:
            row = Volume(pool_id=pool_id, name=name, volume_type=volume_type, state=CREATING,
                         owner=current_owner(), **fields)
            s.add(row)
            s.flush()
            return row.id

    def _finish_create(self, row_id: int, dataset: str) -> None:
        guid = self.ds.get(dataset, ["guid"])["guid"]
        with self.store.session() as s:
            row = s.get(Volume, row_id)
            row.guid, row.state, row.owner = guid, READY, None

    def _undo_create(self, row_id: int, dataset: str | None) -> None:
        if dataset and self.dataset_exists(dataset):
            try:
                self.ds.destroy(dataset, recursive=True)
            except CommandError as exc:
                log.error("could not remove half-made %s: %s", dataset, exc)
                return  # the row stays in state creating; the next start finishes the job
        with self.store.session() as s:
            row = s.get(Volume, row_id)
            if row is not None:
                s.delete(row)

    def _clone(self, name: str, snapshot_id) -> dict:
        with self.lock.held():
            view = self.catalog.load()
            snap_key = parse_id(snapshot_id)
            snap = view.snapshots.get(snap_key) if snap_key is not None else None
            if snap is None:
                raise NotFoundError(f"Snapshot {snapshot_id} not found")
            source = snap.volume
            self._check_free(source.pool_name, name)
            kind = source.row.volume_type
            row_id = self._begin(source.row.pool_id, name, kind, is_clone=True,
                                 serial=str(uuid.uuid4()) if kind == "lun" else None,
                                 size_block=source.row.size_block)
            dataset = f"{source.pool_name}/{name}"
            props = {PROP_VOL_ID: str(row_id), PROP_TYPE: kind}
            if kind == "lun":
                with self.store.session() as s:
                    props[PROP_SERIAL] = s.get(Volume, row_id).serial  # a new LUN, a new serial
                size = _number((source.props or {}).get(PROP_VOLSIZE))
                if size:  # user properties come from the parent dataset, not the origin
                    props[PROP_VOLSIZE] = str(size)
            try:
                self.ds.clone(snap.zfs_name, dataset, props)
            except CommandError as exc:
                self._undo_create(row_id, dataset)
                raise ValidationError(f"ZFS refused to clone {snap.zfs_name}: {describe(exc)}") from exc
            self._finish_create(row_id, dataset)
        return self.get(vol_id=row_id)

    def _create_filebacked(self, name: str, parent_id, parent_path) -> dict:
        if parent_id is None or parent_path is None:
            raise ValidationError("parent_id and parent_path are required for a filebackedlun")
        with self.lock.held():
            view = self.catalog.load()
            parent = self.find(view, parent_id)
            if parent.row.volume_type != "filesystem":
                raise ValidationError("parent_id must be a filesystem volume")
            relative = resolve_inside(parent.zfs_props["mountpoint"], parent_path)
            self._check_free(parent.pool_name, name)
            with self.store.session() as s:
                row = Volume(pool_id=parent.row.pool_id, name=name, volume_type=FILEBACKED,
                             serial=str(uuid.uuid4()), parent_id=parent.row.id, parent_path=relative,
                             state=READY)
                s.add(row)
                s.flush()
                row_id = row.id
        return self.get(vol_id=row_id)

    def backing(self, v: VolumeView, view: CatalogView) -> tuple[str, int]:
        """The file or device an iSCSI target serves for a LUN volume, and its size in bytes."""
        if v.row.volume_type == FILEBACKED:
            parent_id = v.row.parent_id
            parent = view.volumes.get(parent_id) if parent_id is not None else None
            if parent is None or parent.props is None:
                raise ValidationError(f"The parent filesystem of {v.row.name} is not available")
            root = parent.props["mountpoint"]
            # Checked again at use: a symlink planted since creation must not lead outside.
            path = os.path.join(os.path.realpath(root), resolve_inside(root, v.row.parent_path))
            return path, os.path.getsize(path)
        if v.row.volume_type != "lun":
            raise ValidationError(f"Volume {v.row.name} is a {v.row.volume_type}, not a LUN")
        if v.props is None:
            raise ValidationError(f"Volume {v.row.name} is not available in ZFS")
        size = int(self._sizes(v)[0] or 0)
        if v.props.get("type") == "volume":
            return f"/dev/zvol/{v.dataset}", size
        return self.lunfiles.path(v.props["mountpoint"]), size

    # -- updating ---------------------------------------------------------------------------
    def update(self, vol_id: ApiId, *, name: str | None = None,
               size_total: int | None | EllipsisType = ...) -> dict:
        """All or nothing. Every check runs before the first change. The rename runs first
        (ZFS may still refuse it: a mount in use), the resize after it; a resize that fails
        renames the volume back. While ZFS changes, the row records the update (`pending`),
        so a start after a crash finishes it (the rename was done, or none was asked) or rolls
        it back (see _recover_update)."""
        if name is not None:
            validate_name(name)
        with self.lock.held():
            v, view = self.view(vol_id)
            new_name = name if name is not None and name != v.row.name else None
            resizing = size_total is not ...
            if resizing:
                self._check_resize(v, size_total)
            if new_name is not None:
                self._check_rename(v, view, new_name)
            if new_name is not None and v.row.volume_type == FILEBACKED:
                with self.store.session() as s:  # a row change only: no file moves
                    s.get(Volume, v.row.id).name = new_name
            elif new_name is not None or resizing:
                self._update_dataset(v, new_name, size_total if resizing else ...)
            with self.store.session() as s:
                s.get(Volume, v.row.id).time_updated = now()
            if resizing:
                self.attachments.volume_resized(v.row.id)
        return self.get(vol_id=vol_id)

    def _check_resize(self, v: VolumeView, size_total) -> None:
        kind = v.row.volume_type
        if kind == FILEBACKED:
            raise ValidationError("A filebackedlun's size is its file's size")
        if size_total is None:
            if kind != "filesystem":
                raise ValidationError("A lun needs a size_total")
            return
        validate_size(size_total)
        p = v.zfs_props  # not a file-backed LUN (refused above)
        used = int(p["used"] if kind == "filesystem" else p["referenced"])
        if size_total < used:
            raise ValidationError(f"size_total {size_total} is below what volume {v.row.name} "
                                  f"already uses ({used} bytes)")
        block = _number(p.get("volblocksize")) if p.get("type") == "volume" else None
        if block and size_total % block:
            raise ValidationError(f"size_total of lun {v.row.name} must be a multiple of its block "
                                  f"size ({block} bytes)")

    def _check_rename(self, v: VolumeView, view: CatalogView, name: str) -> None:
        if v.row.volume_type == FILEBACKED:
            with self.store.session() as s:
                if s.query(Volume).filter(Volume.pool_id == v.row.pool_id, Volume.name == name).first():
                    raise ConflictError(f"Pool {v.pool_name} already has a volume named {name}")
            return
        self._check_free(v.pool_name, name)
        # ZFS renames a filesystem's snapshots with it, and must unmount their clones for that:
        # zfs-fuse refuses outright ('dataset is busy') while a clone is mounted, and the
        # appliance keeps every clone mounted (OpenZFS would unmount them under their users).
        clones = self._clone_names(v, view)
        if clones and v.zfs_props.get("type") == "filesystem":  # (a file-backed LUN returned above)
            raise ConflictError(f"Volume {v.row.name} cannot be renamed while snapshots of it have "
                                f"clones: {', '.join(clones)}; ZFS would have to unmount them. "
                                "Delete the clones first")

    @staticmethod
    def _clone_names(v: VolumeView, view: CatalogView) -> builtins.list[str]:
        return sorted({c.split("/", 1)[1] for snap in view.snapshots.values()
                       if snap.volume.row.id == v.row.id for c in snap.clones})

    def _size_setting(self, v: VolumeView) -> int | None:
        """The volume's size as _set_size takes it: a filesystem's quota (None: no quota), a
        LUN's size. Not for a file-backed LUN: it has no size to set."""
        p = v.zfs_props
        if v.row.volume_type == "filesystem":
            return _number(p.get("quota")) or None
        if p.get("type") == "volume":
            return _number(p.get("volsize"))
        return _number(p.get(PROP_VOLSIZE)) or self.lunfiles.size(p["mountpoint"])

    def _set_size(self, kind: str, dataset: str, size: int | None, before: int | None) -> None:
        """Sets a size checked by _check_resize (idempotent: recovery sets it again). An image
        LUN's file is put back to `before` if its recorded size cannot follow."""
        if kind == "filesystem":
            self.ds.set(dataset, "quota", str(size) if size else "none")
            return
        assert size is not None, "a LUN always has a size (_check_resize refuses none)"
        found = self.ds.get(dataset, ["type", "mountpoint"])
        if found.get("type") == "volume":
            self.ds.set(dataset, "volsize", str(size))
            return
        self.lunfiles.resize(found["mountpoint"], size)
        try:
            self.ds.set(dataset, PROP_VOLSIZE, str(size))
        except CommandError:
            if before:
                self.lunfiles.resize(found["mountpoint"], before)
            raise

    def _update_dataset(self, v: VolumeView, name: str | None, size_total) -> None:
        resizing = size_total is not ...
        before = self._size_setting(v) if resizing else None
        pending = {"name": [v.row.name, name] if name else None,
                   "size_total": [before, size_total] if resizing else None}
        self._set_pending(v.row.id, pending, current_owner())
        try:
            dataset = v.dataset
            if name:
                self._rename_dataset(v.row.id, dataset, f"{v.pool_name}/{name}")
                dataset = f"{v.pool_name}/{name}"
            if not resizing:
                return
            try:
                self._set_size(v.row.volume_type, dataset, size_total, before)
            except (CommandError, OSError) as exc:
                message = f"ZFS refused to resize {v.row.name}: {describe(exc)}"
                if name:
                    message += self._rename_back(v, dataset)
                raise ValidationError(message) from exc
        finally:
            self._set_pending(v.row.id, None, None)

    def _rename_back(self, v: VolumeView, dataset: str) -> str:
        """Undoes the rename of a failed update; says so in the error if it could not."""
        try:
            self._rename_dataset(v.row.id, dataset, v.dataset)
            return ""
        except Exception as exc:  # the update's own error is the one to report
            log.error("volume %s: could not rename %s back to %s: %s", v.row.id, dataset, v.dataset, exc)
            return f"; it stays renamed to {dataset.split('/', 1)[1]} (the rename back failed: {exc})"

    def _rename_dataset(self, vol_id: int, old: str, new: str) -> None:
        self.attachments.refuse_volume_rename(vol_id)
        undo = self.attachments.volume_renaming(vol_id)  # servers holding the mount let go
        try:
            self.ds.rename(old, new)
        except CommandError as exc:
            undo()
            raise ConflictError(f"ZFS refused to rename {old}: {describe(exc)}") from exc
        with self.store.session() as s:
            s.get(Volume, vol_id).name = new.split("/", 1)[1]
        self.attachments.volume_renamed(vol_id, old, new)

    def _set_pending(self, vol_id: int, pending: dict | None, owner) -> None:
        with self.store.session() as s:
            row = s.get(Volume, vol_id)
            row.pending, row.owner = pending, owner

    # -- deleting ---------------------------------------------------------------------------
    def delete(self, vol_id: ApiId) -> None:
        with self.lock.held():
            v, view = self.view(vol_id)
            clones = self._clone_names(v, view)
            if clones:
                raise ConflictError(f"Volume {v.row.name} has snapshots with clones: "
                                    f"{', '.join(clones)}; delete the clones first")
            dependents = sorted(o.row.name for o in view.volumes.values() if o.row.parent_id == v.row.id)
            if dependents:
                raise ConflictError(f"Volume {v.row.name} holds the files of file-backed LUNs: "
                                    f"{', '.join(dependents)}; delete them first")
            self.attachments.refuse_volume_delete(v.row.id)
            self._set_state(v.row.id, DELETING, current_owner())
            # If a hook fails, the volume is READY again before the others are undone: the
            # target service serves only READY volumes.
            undo = self.attachments.volume_going(
                v.row.id, before_undo=lambda: self._set_state(v.row.id, READY, None))
            try:
                if v.props is not None:
                    self.ds.destroy(v.dataset, recursive=True)
            except CommandError as exc:
                self._set_state(v.row.id, READY, None)
                undo()
                raise ConflictError(f"Volume {v.row.name} could not be destroyed: {describe(exc)}") from exc
            with self.store.session() as s:
                s.delete(s.get(Volume, v.row.id))

    def _set_state(self, vol_id: int, state: str, owner) -> None:
        with self.store.session() as s:
            row = s.get(Volume, vol_id)
            row.state, row.owner = state, owner

    # -- a replica's placeholder replaced by a received dataset --------------------------------
    # ZFS receives a raw (encrypted) full stream, or any full stream under an encrypted parent,
    # only as a new dataset: never over an existing one, even with -F. The replica's empty
    # dataset (its placeholder, made with the relationship) is destroyed and the stream received
    # in its place, under the same name and with the same stamps (receive -o). The row is in
    # state `receiving` meanwhile, with what remakes the placeholder in `pending`: a failed
    # receive remakes it at once; a crash is settled at the next start (or the next request for
    # the replica): the received dataset kept, or the placeholder made again.
    PLACEHOLDER_PROPS = (PROP_VOL_ID, PROP_TYPE, PROP_SERIAL, PROP_VOLSIZE)

    def begin_replacement(self, vol_id: int, dataset: str) -> dict[str, str]:
        """Destroys the replica's (empty) dataset, recording how to make it again; returns the
        properties the received dataset is to carry (its stamps, readonly)."""
        with self.lock.held():
            found = self.ds.get(dataset, [*self.PLACEHOLDER_PROPS, "type", "volsize", "volblocksize"])
            props = {p: found[p] for p in self.PLACEHOLDER_PROPS if found.get(p) not in (None, "", "-")}
            props[PROP_VOL_ID] = str(vol_id)
            props["readonly"] = "on"
            zvol = found.get("type") == "volume"
            if not zvol:
                props["atime"] = "off"
            placeholder = {"zvol": zvol, "size": _number(found.get("volsize")),
                           "block": _number(found.get("volblocksize")), "props": props}
            with self.store.session() as s:
                row = s.get(Volume, vol_id)
                row.state, row.owner, row.pending = RECEIVING, current_owner(), {"placeholder": placeholder}
            try:
                self.ds.destroy(dataset)
            except CommandError:
                self._set_state(vol_id, READY, None)
                with self.store.session() as s:
                    s.get(Volume, vol_id).pending = None
                raise
        return dict(props)

    def end_replacement(self, vol_id: int, dataset: str, *, settling: bool = False) -> bool | None:
        """After the receive (or, `settling`, for one whose process died): the received dataset
        is the replica's now; where there is none, the placeholder is made again. True when
        received, False when made again; None when settling finds a receive still running (a
        `zfs receive` its dead process left: ZFS marks its dataset inconsistent until it ends),
        which a later request or start settles."""
        with self.lock.held():
            with self.store.session() as s:
                row = s.get(Volume, vol_id)
                placeholder = (row.pending or {}).get("placeholder") or {}
            try:  # one command: the receive's peer waits for this answer
                found = self.ds.get(dataset, [PROP_VOL_ID, "guid", "inconsistent"])
            except CommandError:
                found = {}
            if settling and found.get("inconsistent") == "1":
                return None
            received = found.get(PROP_VOL_ID) == str(vol_id)
            if not received:
                if found:  # not ours: never touched; the row goes
                    log.error("volume %s: %s is not the replica received for it; the row is dropped",
                              vol_id, dataset)
                    with self.store.session() as s:
                        s.delete(s.get(Volume, vol_id))
                    return False
                props = dict(placeholder.get("props") or {PROP_VOL_ID: str(vol_id), "readonly": "on"})
                if placeholder.get("zvol"):
                    self.ds.create_zvol(dataset, int(placeholder.get("size") or MIN_SIZE),
                                        int(placeholder.get("block") or DEFAULT_BLOCK), props)
                else:
                    self.ds.create_filesystem(dataset, props)
                    if props.get(PROP_TYPE) == "lun":  # zfs-fuse: a LUN's image file in its dataset
                        self.lunfiles.create(self.ds.get(dataset, ["mountpoint"])["mountpoint"],
                                             int(props.get(PROP_VOLSIZE) or MIN_SIZE))
                log.info("volume %s: its placeholder %s was made again", vol_id, dataset)
                found = self.ds.get(dataset, ["guid"])
            with self.store.session() as s:
                row = s.get(Volume, vol_id)
                row.guid, row.state, row.owner, row.pending = found["guid"], READY, None, None
        return received

    def settle_replacement(self, vol_id: int) -> None:
        """A replacement whose process died (the receive was killed): settled now."""
        with self.store.session() as s:
            row = s.get(Volume, vol_id)
            if row is None or row.state != RECEIVING or owner_alive(row.owner):
                return
            s.expunge(row)
        _, summary = self.pools.find(row.pool_id)
        kept = self.end_replacement(row.id, f"{summary.name}/{row.name}", settling=True)
        if kept is None:
            log.info("volume %s: a receive in place of its placeholder is still running; settled later", row.name)
            return
        log.info("volume %s: interrupted receive in place of its placeholder settled (%s)", row.name,
                 "the received replica kept" if kept else "placeholder made again")

    # -- recovery ---------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish or roll back volume changes a crash interrupted."""
        with self.lock.held():
            self._remount_volumes()
            with self.store.session() as s:
                rows = [r for r in s.query(Volume).filter(
                            (Volume.state != READY) | Volume.pending.isnot(None)).all()
                        if is_current(r.owner) or not owner_alive(r.owner)]
            for row in rows:
                try:
                    if row.state == READY:
                        self._recover_update(row)
                    else:
                        self._recover_row(row)
                except NotFoundError:
                    log.warning("volume %s (%s): its pool is not imported; the interrupted change is "
                                "finished at a start that finds the pool", row.id, row.name)
                except (CommandError, OSError) as exc:
                    log.error("volume %s (%s): recovery failed: %s", row.id, row.name, exc)

    def _remount_volumes(self) -> None:
        """Volumes always mount at their inherited place; a rename that a crash interrupted on
        a ZFS that renames only unmounted filesystems may have left one at mountpoint=none."""
        for _, summary in self.pools.live():
            for name, props in self.ds.tree(summary.name, []).items():
                if name.count("/") == 1 and "@" not in name and props.get("type") == "filesystem" \
                        and props.get("mountpoint") == "none":
                    try:
                        self.ds.inherit(name, "mountpoint")
                        log.info("volume dataset %s mounted again", name)
                    except CommandError as exc:
                        log.error("could not mount %s again: %s", name, describe(exc))

    def _recover_update(self, row: Volume) -> None:
        """An update a crash interrupted. Its rename is the point of no return: done (or none
        asked), the update is finished (the size set again); not done, it is rolled back (the
        size put back: the resize comes after the rename, so this only repeats what is)."""
        pending = row.pending
        assert pending is not None, "called for a ready row with an update in flight"
        _, summary = self.pools.find(row.pool_id)
        names, sizes = pending.get("name"), pending.get("size_total")

        def ours(name: str) -> bool:
            dataset = f"{summary.name}/{name}"
            return self.dataset_exists(dataset) and self.ds.get(dataset, [PROP_VOL_ID])[PROP_VOL_ID] == str(row.id)

        finished = names is None or ours(names[1])
        name = row.name if names is None else names[1] if finished else names[0]
        if not ours(name):
            log.warning("volume %s (%s): its dataset is gone; the interrupted update is dropped",
                        row.id, row.name)
        elif sizes is not None:
            self._set_size(row.volume_type, f"{summary.name}/{name}", sizes[1] if finished else sizes[0],
                           sizes[0])
        with self.store.session() as s:
            r = s.get(Volume, row.id)
            r.name, r.pending, r.owner = name, None, None
        log.info("volume %s: interrupted update %s", name, "finished" if finished else "rolled back")

    def _recover_row(self, row: Volume) -> None:
        if row.state == RECEIVING:
            self.settle_replacement(row.id)
            return
        pool_row, summary = self.pools.find(row.pool_id)
        dataset = f"{summary.name}/{row.name}"
        stamped = self.ds.get(dataset, [PROP_VOL_ID, "guid", "mountpoint", "type", PROP_VOLSIZE]) \
            if self.dataset_exists(dataset) else {}
        if row.state == DELETING:
            self.attachments.volume_going(row.id)  # shares and mappings the crash left behind
            self.attachments.volume_released(row.id)
            if stamped.get(PROP_VOL_ID) == str(row.id):
                self.ds.destroy(dataset, recursive=True)
            with self.store.session() as s:
                s.delete(s.get(Volume, row.id))
            log.info("volume %s: interrupted delete finished", row.name)
            return
        if stamped.get(PROP_VOL_ID) != str(row.id):
            with self.store.session() as s:
                s.delete(s.get(Volume, row.id))
            log.info("volume %s: creation never reached ZFS; rolled back", row.name)
            return
        if row.volume_type == "lun" and stamped.get("type") == "filesystem" \
                and self.lunfiles.size(stamped["mountpoint"]) is None:
            self.lunfiles.create(stamped["mountpoint"], int(stamped.get(PROP_VOLSIZE) or MIN_SIZE))
        self._finish_create(row.id, dataset)
        log.info("volume %s: creation had finished in ZFS; kept", row.name)


def _number(value: str | None) -> int | None:
    """A ZFS property value as a number; '-' (not set, not applicable) is None."""
    return int(value) if value and value.isdigit() else None
