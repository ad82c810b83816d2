"""Storage pools: real ZFS pools, indexed by API id, stamped with this appliance's id.

ZFS is the truth for what exists. Each pool carries user properties naming the appliance and
its API id, so a lost database can adopt its own pools again and pools of others are never
touched. A pool row in a state other than `ready` is a change in flight; `recover` finishes or
rolls it back after a crash.
"""
from __future__ import annotations

import builtins
import logging
import os
import re
from pathlib import Path

from ..config import Settings
from ..drivers.disks import BlockDevice, DiskDriver
from ..drivers.keys import CIPHER, KeyFiles
from ..drivers.runner import CommandError, describe
from ..drivers.zfs import (
    SCANNING,
    PoolStatus,
    PoolSummary,
    ScanStatus,
    VdevNode,
    ZfsDriver,
    ZfsPoolOps,
    device_path,
    format_ratio,
    parse_ratio,
)
from ..errors import ConflictError, InvalidCandidateError, NotFoundError, ValidationError
from ..store.db import Store
from ..store.models import Pool, now
from .attachments import Attachments
from .catalog import parse_id
from .disks import UNUSED, DiskService
from .locking import StorageLock
from .owner import current_owner, is_current, owner_alive
from .system import ApplianceIdentity

log = logging.getLogger(__name__)

POOL_TYPES = {"raid0": None, "raid5": "raidz1", "raid6": "raidz2"}
# Fewest disks per group: raidz1 with 3 and raidz2 with 4 keep data and parity apart.
MIN_GROUP = {"raid0": 1, "raid5": 3, "raid6": 4}
DEFAULT_GROUP_SIZE = 8
MAX_NAME = 255  # ZFS's limit (256 bytes with the terminating NUL)
PROP_SYSTEM = "com.vsnap:system"
PROP_POOL_ID = "com.vsnap:pool_id"
PROP_POOL_TYPE = "com.vsnap:pool_type"
PROP_GROUP_SIZE = "com.vsnap:diskgroup_size"
READY, CREATING, RENAMING, DELETING = "ready", "creating", "renaming", "deleting"
HEALTHY_DEVICE_STATES = {"ONLINE", "AVAIL", "INUSE"}
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_RESERVED_PREFIXES = ("mirror", "raidz", "draid", "spare")
_RESERVED_NAMES = {"log", "logs", "cache", "spares", "special", "dedup"}


def validate_pool_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValidationError("Pool name is required")
    if len(name) > MAX_NAME:
        raise ValidationError(f"Pool name is too long: at most {MAX_NAME} characters")
    if not _NAME_RE.fullmatch(name):
        raise ValidationError(
            "Pool name must start with a letter and contain only letters, digits, '_', '-' and '.'")
    if name.startswith(_RESERVED_PREFIXES) or name in _RESERVED_NAMES or re.match(r"c[0-9]", name):
        raise ValidationError(f"Pool name {name!r} is reserved by ZFS")
    return name


def split_groups(count: int, group_size: int) -> list[int]:
    """Sizes of the fewest groups of at most `group_size` disks, as even as possible, larger
    first: 15 disks in groups of 8 -> [8, 7]; 17 -> [6, 6, 5]."""
    if count <= 0:
        return []
    groups = -(-count // group_size)
    base, extra = divmod(count, groups)
    return [base + 1] * extra + [base] * (groups - extra)


def plan_vdevs(pool_type: str, paths: list[str], group_size: int) -> list[str]:
    """zpool vdev arguments for the disks: stripes for raid0, raidz groups otherwise."""
    kind = POOL_TYPES[pool_type]
    if kind is None:
        return list(paths)
    sizes = split_groups(len(paths), group_size)
    if not sizes or min(sizes) < MIN_GROUP[pool_type]:
        raise InvalidCandidateError(
            f"{pool_type} needs at least {MIN_GROUP[pool_type]} disks per group of at most "
            f"{group_size}; {len(paths)} disk(s) given")
    args, start = [], 0
    for size in sizes:
        args += [kind, *paths[start:start + size]]
        start += size
    return args


class PoolService:
    def __init__(self, settings: Settings, store: Store, zfs: ZfsDriver, ops: ZfsPoolOps,
                 disks: DiskService, disk_driver: DiskDriver, system: ApplianceIdentity,
                 lock: StorageLock, attachments: Attachments | None = None, keys: KeyFiles | None = None):
        self.settings = settings
        self.store = store
        self.zfs = zfs
        self.ops = ops
        self.disks = disks
        self.disk_driver = disk_driver
        self.system = system
        self.lock = lock
        # What holds the pool's volumes (shares, LUN mappings) or guards them (replication):
        # asked before a delete or rename, told after it (attachments.py).
        self.attachments = attachments if attachments is not None else Attachments()
        # Wrapping keys of encrypted pools, root-only files in the state directory.
        self.keys = keys if keys is not None else KeyFiles(settings.state_dir)

    def mountpoint(self, name: str) -> str:
        return str(Path(self.settings.mount_root) / name)

    # -- finding pools ----------------------------------------------------------------------
    def live(self) -> list[tuple[Pool, PoolSummary]]:
        """Rows of pools that exist now, with ZFS's summary of each."""
        imported = {p.guid: p for p in self.ops.list()}
        with self.store.session() as s:
            rows = s.query(Pool).filter(Pool.state == READY).order_by(Pool.id).all()
        return [(row, imported[row.guid]) for row in rows if row.guid in imported]

    def find(self, pool_id: str | None = None, name: str | None = None) -> tuple[Pool, PoolSummary]:
        for row, summary in self.live():
            if (pool_id is not None and str(row.id) == str(pool_id)) or \
                    (name is not None and summary.name == name):
                return row, summary
        raise NotFoundError(f"Pool {pool_id if pool_id is not None else name} not found")

    # -- rendering --------------------------------------------------------------------------
    def _summary(self, row: Pool, summary: PoolSummary, props: dict[str, str],
                 status: PoolStatus | None) -> dict:
        used, available = int(props["used"]), int(props["available"])
        return {
            "id": str(row.id),
            "name": summary.name,
            "pool_type": row.pool_type,
            "size_total": str(used + available),
            "size_free": str(available),
            "size_used": str(used),
            "status": summary.health,
            "health": str(self._health(summary, status)),
            "time_created": props["creation"],
            "time_updated": str(row.time_updated),
            # Read from ZFS (never kept in the database): where ZFS has no encryption, never.
            "encryption": {"enabled": props.get("encryption", "off") not in ("off", "-", "")},
            # Beyond the spec: the scrub or resilver running, or the last one.
            "scan": self._scan_view(status.scan if status is not None else None),
        }

    @staticmethod
    def _scan_view(scan: ScanStatus | None) -> dict | None:
        """A scan as the pool view shows it; times as epoch seconds, as the view's other
        times. The estimated end is ZFS's own estimate of the time to go, from now."""
        if scan is None:
            return None
        running = scan.state == SCANNING
        return {
            "function": scan.function,
            "state": scan.state,
            "percent": scan.percent,
            "estimated_end": str(now() + scan.seconds_left) if running and scan.seconds_left is not None else None,
            "errors": scan.errors,
            "time_started": str(scan.started) if scan.started is not None else None,
            "time_ended": str(scan.ended) if scan.ended is not None and not running else None,
        }

    def _props(self, name: str) -> dict[str, str]:
        wanted = ["used", "available", "creation", "compression", "compressratio", "dedup"]
        if self.zfs.has_encryption:
            wanted.append("encryption")
        if self.ops.has_sync:
            wanted.append("sync")
        if self.ops.has_logicalused:
            wanted.append("logicalused")
        return self.ops.dataset_props(name, wanted)

    @staticmethod
    def _health(summary: PoolSummary, status: PoolStatus | None) -> int:
        """100 when every device is healthy, less by the share of devices that are not, 0 when
        the pool itself is faulted or unavailable; a pool ZFS calls anything but ONLINE
        (DEGRADED) is below 100 even when all its devices are (a device being replaced)."""
        if summary.health in ("FAULTED", "UNAVAIL"):
            return 0
        if status is None:
            return 100 if summary.health == "ONLINE" else 50
        leaves = [leaf for role in ("data", "log", "cache", "spare", "special", "dedup")
                  for top in getattr(status, role) for leaf in top.leaves()]
        if not leaves:
            return 0
        healthy = sum(1 for leaf in leaves if leaf.state in HEALTHY_DEVICE_STATES)
        health = healthy * 100 // len(leaves)
        return min(health, 99) if summary.health != "ONLINE" else health

    @staticmethod
    def _devices(pool_type: str, status: PoolStatus) -> list[tuple[str, str, VdevNode, str | None]]:
        """Every device of the pool as the view lists it: (group, role, device, replacing),
        where group is the key of `disks` it is under and replacing says, for a device in a
        replacement in progress or a hot spare standing in, which part it plays: the device
        being replaced ("old"), its replacement ("new") or the hot spare taking over ("spare")."""
        spares = {leaf.path for top in status.spare for leaf in top.leaves()}

        def walk(node: VdevNode, part: str | None = None) -> list[tuple[VdevNode, str | None]]:
            if not node.children:
                return [(node, part)]
            found = []
            for i, child in enumerate(node.children):
                if node.name.startswith("spare-"):
                    part = "spare" if not child.children and child.path in spares else "old"
                elif node.name.startswith("replacing-"):
                    part = "new" if i == len(node.children) - 1 else "old"
                found += walk(child, part)
            return found

        devices: list[tuple[str, str, VdevNode, str | None]] = []
        stripes: list[tuple[VdevNode, str | None]] = []
        groups = 0
        for top in status.data:
            if top.name.startswith(("raidz", "mirror", "draid")):
                groups += 1
                devices += [(f"{pool_type}_group{groups}", "data", leaf, part) for leaf, part in walk(top)]
            else:  # a plain disk, or one being replaced (replacing-N, spare-N)
                stripes += walk(top)
        if stripes:
            devices += [(f"{pool_type}_group{groups + 1}", "data", leaf, part) for leaf, part in stripes]
        for role in ("log", "cache", "spare", "special", "dedup"):
            for top in getattr(status, role):
                devices += [(role, role, leaf, part) for leaf, part in walk(top)]
        return devices

    @classmethod
    def _disk_groups(cls, pool_type: str, status: PoolStatus) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for group, _, leaf, _ in cls._devices(pool_type, status):
            groups.setdefault(group, []).append(leaf.path)
        return groups

    @classmethod
    def _disk_states(cls, pool_type: str, status: PoolStatus) -> list[dict]:
        return [{"path": leaf.path, "group": group, "role": role, "state": leaf.state, "replacing": part}
                for group, role, leaf, part in cls._devices(pool_type, status)]

    def _details(self, row: Pool, summary: PoolSummary) -> dict:
        props = self._props(summary.name)
        statuses = self.zfs.pool_status(summary.name)
        status = statuses[0] if statuses else PoolStatus(summary.name, summary.health)
        dedupratio = self.ops.pool_props(summary.name, ["dedupratio"]).get("dedupratio", "1.00x")
        used = int(props["used"])
        if "logicalused" in props:
            before_compression = int(props["logicalused"])
        else:  # zfs-fuse has no logicalused: ZFS's own ratio of it to used
            before_compression = round(used * parse_ratio(props["compressratio"]))
        details = {
            "compression": props["compression"] != "off",
            "compression_ratio": format_ratio(props["compressratio"]),
            "deduplication": props["dedup"] != "off",
            "deduplication_ratio": format_ratio(dedupratio),
            "diskgroup_size": str(row.diskgroup_size),
            "disks": self._disk_groups(row.pool_type, status),
            **self._summary(row, summary, props, status),
            # Dataset space is accounted before dedup; its logical size before compression.
            "size_before_compression": str(before_compression),
            "size_before_deduplication": str(used),
            # Without a sync property (zfs-fuse) writes always follow POSIX sync semantics.
            "syncwrite": props.get("sync", "standard") != "disabled",
            # Beyond the spec: each device of `disks` with its state and role.
            "disk_states": self._disk_states(row.pool_type, status),
        }
        return details

    def list(self) -> list[dict]:
        live = self.live()
        statuses: dict[str, PoolStatus] = {}
        if live:
            try:  # one `zpool status` for every pool (it lists the others' pools too)
                statuses = {status.name: status for status in self.zfs.pool_status()}
            except CommandError as exc:
                log.warning("zpool status failed: pools listed without their devices' health: %s", describe(exc))
        return [self._summary(row, summary, self._props(summary.name), statuses.get(summary.name))
                for row, summary in live]

    def get(self, pool_id: str | None = None, name: str | None = None) -> dict:
        return self._details(*self.find(pool_id, name))

    # -- disks ------------------------------------------------------------------------------
    def _candidates(self, uuids: builtins.list[str] | None, *, required: bool = False) -> builtins.list[BlockDevice]:
        """The disks behind the uuids, each checked to be unused; all unused disks when none."""
        inventory = self.disks.inventory()
        if not uuids:
            if required:
                raise ValidationError("disk_list is required for this action")
            found = [dev for dev, used_as, _ in inventory if used_as == UNUSED]
            if not found:
                raise InvalidCandidateError("There are no unused disks")
            return found
        if len(set(uuids)) != len(uuids):
            raise ValidationError("disk_list names a disk more than once")
        by_uuid = {dev.uuid: (dev, used_as, pool) for dev, used_as, pool in inventory}
        chosen = []
        for uuid in uuids:
            if uuid not in by_uuid:
                raise InvalidCandidateError(f"Disk UUID {uuid} is not a valid candidate for a pool: no such disk")
            dev, used_as, pool = by_uuid[uuid]
            if used_as != UNUSED:
                where = f" of pool {pool}" if pool else ""
                raise InvalidCandidateError(
                    f"Disk UUID {uuid} is not a valid candidate for a pool: {dev.path} is in use ({used_as}{where})")
            chosen.append(dev)
        return chosen

    def _paths(self, devices: builtins.list[BlockDevice]) -> builtins.list[str]:
        return [self.disk_driver.stable_path(dev.path) for dev in devices]

    # -- create -----------------------------------------------------------------------------
    def create(self, *, name: str, pool_type: str, disk_list: builtins.list[str] | None = None,
               compression: bool = True, deduplication: bool = False, syncwrite: bool = True,
               diskgroup_size: int = DEFAULT_GROUP_SIZE, encryption: dict | None = None) -> dict:
        """All or nothing. An encrypted pool's key file is written (a new random key) before
        `zpool create`, with its path in the row's intent (`pending`), so that a failed create,
        or a start after a crash that never reached ZFS, removes it (see _recover_row)."""
        validate_pool_name(name)
        if pool_type not in POOL_TYPES:
            raise ValidationError(f"pool_type must be one of: {', '.join(POOL_TYPES)}")
        self._check_syncwrite(syncwrite)
        encrypted = self._check_encryption(encryption)
        with self.lock.held():
            existing = self.ops.list()
            if any(p.name == name for p in existing):
                raise ConflictError(f"A pool named {name} already exists")
            if self.live() and not self.system.multipool:
                raise ConflictError("This appliance allows one pool (multipool is off); "
                                    "run init with multipool true to allow more")
            devices = self._candidates(disk_list)
            vdevs = plan_vdevs(pool_type, self._paths(devices), diskgroup_size)
            key = self.keys.new_path("pool") if encrypted else None
            with self.store.session() as s:
                row = Pool(name=name, pool_type=pool_type, diskgroup_size=diskgroup_size,
                           state=CREATING, owner=current_owner(),
                           pending={"key": str(key)} if key is not None else None)
                s.add(row)
                s.flush()
                pool_id = row.id
            props = {
                "compression": "on" if compression else "off",
                "dedup": "on" if deduplication else "off",
                PROP_SYSTEM: self.system.id,
                PROP_POOL_ID: str(pool_id),
                PROP_POOL_TYPE: pool_type,
                PROP_GROUP_SIZE: str(diskgroup_size),
            }
            if self.ops.has_sync:
                props["sync"] = "standard" if syncwrite else "disabled"
            try:
                if key is not None:
                    self.keys.create(key)
                    props.update({"encryption": CIPHER, "keyformat": "raw",
                                  "keylocation": self.keys.location(key)})
                self.ops.create(name, vdevs, mountpoint=self.mountpoint(name), props=props)
            except (CommandError, OSError) as exc:
                self.keys.remove(key)  # zpool create failed: no pool has this key
                self._drop_row(pool_id)
                raise InvalidCandidateError(f"ZFS refused to create pool {name}: {describe(exc)}") from exc
            guid = next(p.guid for p in self.ops.list() if p.name == name)
            with self.store.session() as s:
                row = s.get(Pool, pool_id)
                row.guid, row.state, row.owner, row.pending = guid, READY, None, None
        return self.get(pool_id=str(pool_id))

    def create_default(self) -> None:
        """init without skip_pool: one pool from every unused disk, unless a pool exists."""
        if self.live():
            return
        unused = [dev for dev, used_as, _ in self.disks.inventory() if used_as == UNUSED]
        if not unused:
            raise InvalidCandidateError("There are no unused disks to create the pool from")
        pool_type = "raid6" if len(unused) >= 6 else "raid5" if len(unused) >= 3 else "raid0"
        taken = {p.name for p in self.ops.list()}
        name = next(f"vpool{i}" for i in range(1, 10000) if f"vpool{i}" not in taken)
        self.create(name=name, pool_type=pool_type, disk_list=[d.uuid for d in unused])

    def _check_syncwrite(self, syncwrite: bool | None) -> None:
        if syncwrite is False and not self.ops.has_sync:
            raise ValidationError("syncwrite false needs the ZFS 'sync' property, which this ZFS "
                                  "(zfs-fuse) does not have: its writes are always synchronous")

    def _check_encryption(self, encryption: dict | None) -> bool:
        """Whether the pool is to be encrypted; refused (nothing changes) where ZFS cannot."""
        if encryption is None:
            return False
        enabled = encryption.get("enabled") if isinstance(encryption, dict) else None
        if not isinstance(enabled, bool):
            raise ValidationError("encryption must be an object with a boolean 'enabled'")
        if enabled and not self.zfs.has_encryption:
            raise ValidationError("encryption needs ZFS native encryption (zfs load-key, the encryption "
                                  "property), which this ZFS (zfs-fuse) does not have")
        return enabled

    def _drop_row(self, pool_id: int) -> None:
        with self.store.session() as s:
            row = s.get(Pool, pool_id)
            if row is not None:
                s.delete(row)

    # -- update -----------------------------------------------------------------------------
    def update(self, pool_id: str, *, name: str | None = None, compression: bool | None = None,
               deduplication: bool | None = None, syncwrite: bool | None = None) -> dict:
        """All or nothing. Every check runs before the first change. The rename (export and
        import, which ZFS refuses while the pool is busy) runs first, the properties after it;
        a property ZFS refuses puts back those already set and renames the pool back. The row
        records the update while it runs (`pending`, and state renaming during the rename), so
        a start after a crash finishes it (the pool was exported for the rename, or no rename
        was asked) or rolls it back (see _recover_update)."""
        if name is not None:
            validate_pool_name(name)
        self._check_syncwrite(syncwrite)
        with self.lock.held():
            row, summary = self.find(pool_id)
            new_name = name if name is not None and name != summary.name else None
            if new_name is not None:
                self._check_rename(new_name)
            wanted = {}
            if compression is not None:
                wanted["compression"] = "on" if compression else "off"
            if deduplication is not None:
                wanted["dedup"] = "on" if deduplication else "off"
            if syncwrite is not None and self.ops.has_sync:
                wanted["sync"] = "standard" if syncwrite else "disabled"
            current = self.ops.dataset_props(summary.name, list(wanted)) if wanted else {}
            changes = {prop: [current.get(prop), value] for prop, value in wanted.items()
                       if current.get(prop) != value}
            if new_name is not None or changes:
                self._update(row, summary, new_name, changes)
            self._touch(row.id)
        return self.get(pool_id=pool_id)

    def _check_rename(self, name: str) -> None:
        if any(p.name == name for p in self.ops.list()):
            raise ConflictError(f"A pool named {name} already exists")
        # The pool mounts there after the import; ZFS cannot mount over files.
        path = Path(self.mountpoint(name))
        if path.is_symlink() or (path.exists() and not (path.is_dir() and not any(path.iterdir()))):
            raise ConflictError(f"A pool cannot be named {name}: its mount point {path} is taken "
                                "(it exists and is not an empty directory)")

    def _update(self, row: Pool, summary: PoolSummary, name: str | None, changes: dict) -> None:
        with self.store.session() as s:
            r = s.get(Pool, row.id)
            r.pending = {"name": [summary.name, name] if name else None, "props": changes}
            r.owner = current_owner()
        try:
            current = summary.name
            if name:
                self._rename(row, summary, name)
                current = name
            done = []
            try:
                for prop, (_, value) in changes.items():
                    self.ops.set(current, prop, value)
                    done.append(prop)
            except CommandError as exc:
                message = f"ZFS refused to set {prop} on pool {current}: {describe(exc)}"
                message += self._undo_update(row.id, current, summary.name if name else None,
                                             {p: changes[p][0] for p in reversed(done)})
                raise ConflictError(message) from exc
        finally:
            with self.store.session() as s:
                r = s.get(Pool, row.id)
                r.pending, r.owner = None, (r.owner if r.state != READY else None)

    def _undo_update(self, pool_id: int, current: str, old_name: str | None, before: dict) -> str:
        """Puts back the properties set and the name; says in the error what could not be."""
        left = []
        for prop, value in before.items():
            try:
                if value is not None:
                    self.ops.set(current, prop, value)
            except CommandError as exc:
                log.error("pool %s: could not set %s back to %s: %s", current, prop, value, describe(exc))
                left.append(f"{prop} stays changed")
        if old_name:
            try:
                row, summary = self.find(str(pool_id))
                self._rename(row, summary, old_name)
            except Exception as exc:  # the update's own error is the one to report
                log.error("pool %s: could not rename it back to %s: %s", current, old_name, exc)
                left.append(f"it stays named {current}")
        return f"; {', '.join(left)} (putting it back failed)" if left else ""

    def _rename(self, row: Pool, summary: PoolSummary, new_name: str) -> None:
        """ZFS renames a pool by export and import under the new name."""
        undo = self.attachments.pool_renaming(summary.name)
        with self.store.session() as s:
            r = s.get(Pool, row.id)
            r.state, r.pending_name, r.owner = RENAMING, new_name, current_owner()
        try:
            self.ops.export(summary.name)
        except CommandError as exc:
            self._set_ready(row.id, summary.name)
            undo()
            raise ConflictError(f"Pool {summary.name} is busy and cannot be renamed: {describe(exc)}") from exc
        self._finish_rename(row.id, summary.guid, new_name)  # (summary: ZFS's word for row.guid)
        self._remove_mountpoint(summary.name)
        self.attachments.pool_renamed(summary.name, new_name)

    def _finish_rename(self, pool_id: int, guid: str, new_name: str) -> None:
        imported = {p.guid: p.name for p in self.ops.list()}
        if guid not in imported:
            self.ops.import_by_guid(guid, new_name)
            imported[guid] = new_name
        name = imported[guid]
        self.ops.set(name, "mountpoint", self.mountpoint(name))
        self._set_ready(pool_id, name)

    def _set_ready(self, pool_id: int, name: str) -> None:
        with self.store.session() as s:
            r = s.get(Pool, pool_id)
            r.name, r.state, r.pending_name, r.time_updated = name, READY, None, now()
            if r.pending is None:  # else an update is still in flight: its owner stays
                r.owner = None

    def _touch(self, pool_id: int) -> None:
        with self.store.session() as s:
            s.get(Pool, pool_id).time_updated = now()

    # -- actions ----------------------------------------------------------------------------
    def action(self, pool_id: str, action: str, *, disk_list: builtins.list[str] | None = None,
               disk: str | None = None) -> dict:
        with self.lock.held():
            row, summary = self.find(pool_id)
            status = (self.zfs.pool_status(summary.name) or [PoolStatus(summary.name, None)])[0]
            try:
                if action == "expand":
                    devices = self._candidates(disk_list)
                    self.ops.add(summary.name, plan_vdevs(row.pool_type, self._paths(devices), row.diskgroup_size))
                elif action == "addlog":
                    paths = self._paths(self._candidates(disk_list, required=True))
                    self.ops.add(summary.name, ["log", *(["mirror"] if len(paths) > 1 else []), *paths])
                elif action == "removelog":
                    self._remove_all(summary.name, status.log, "log")
                elif action == "addcache":
                    if not disk:
                        raise ValidationError("disk is required for addcache")
                    self.ops.add(summary.name, ["cache", *self._paths(self._candidates([disk]))])
                elif action == "removecache":
                    self._remove_all(summary.name, status.cache, "cache")
                elif action == "addspare":
                    self.ops.add(summary.name, ["spare", *self._paths(self._candidates(disk_list, required=True))])
                elif action == "removespare":
                    spares = self._spares_named(status, disk_list)
                    self._remove(summary.name, spares, spares)
                elif action in ("scrub", "scrub_stop"):
                    self._scrub(summary.name, status, stop=action == "scrub_stop")
                elif action == "replace":
                    self._replace(row.pool_type, summary.name, status, disk, disk_list)
                else:
                    raise ValidationError(f"Unknown pool action {action!r}")
            except CommandError as exc:
                message = f"ZFS refused to {action} pool {summary.name}: {describe(exc)}"
                if action in ("scrub", "scrub_stop"):  # the pool's state refused it, not the input
                    raise ConflictError(message) from exc
                raise InvalidCandidateError(message) from exc
            self._touch(row.id)
        return self.get(pool_id=pool_id)

    def _scrub(self, pool: str, status: PoolStatus, *, stop: bool) -> None:
        """Starts or stops a scrub. Both ZFSs are asked only what they can do now, so both
        answer alike: OpenZFS refuses a second scrub or a stop with none running, zfs-fuse
        would restart the scrub or say nothing."""
        scan = status.scan
        running = scan is not None and scan.state == SCANNING
        if stop:
            if not running or scan is None or scan.function != "scrub":
                what = "a resilver is running (it cannot be stopped)" if running else "no scrub is running"
                raise ConflictError(f"Pool {pool} has no scrub to stop: {what}")
            self.ops.scrub_stop(pool)
            log.info("pool %s: scrub stopped at %s%% done", pool, scan.percent)
            return
        if running and scan is not None:
            raise ConflictError(f"Pool {pool} is already {'scrubbing' if scan.function == 'scrub' else 'resilvering'}"
                                f" ({scan.percent if scan.percent is not None else '?'}% done): a scrub can start "
                                "once it ends")
        self.ops.scrub(pool)
        log.info("pool %s: scrub started", pool)

    def _replace(self, pool_type: str, pool: str, status: PoolStatus, disk: str | None,
                 uuids: builtins.list[str] | None) -> None:
        """Replaces a device of the pool (`disk`: its path as the view shows it) by one unused
        disk (`disk_list`). The device is found among the pool's own, and ZFS is given the
        name it knows the device by, never the text of the request."""
        if not disk:
            raise ValidationError("disk is required for replace: the path of the device to replace, "
                                  "as the pool's disks show it")
        if not uuids or len(uuids) != 1:
            raise ValidationError("disk_list must name exactly one unused disk for replace")
        devices = [(role, leaf) for _, role, leaf, _ in self._devices(pool_type, status) if leaf.path == disk]
        if not devices:
            raise InvalidCandidateError(f"{disk} is not a device of pool {pool}")
        replaceable = [leaf for role, leaf in devices if role not in ("spare", "cache")]
        if not replaceable:
            raise InvalidCandidateError(f"{disk} is a {devices[0][0]} device of pool {pool}: those are removed "
                                        "and added (removespare/removecache, addspare/addcache), not replaced")
        if len(replaceable) > 1:  # a path shown twice (a missing disk's old path, now another disk's)
            replaceable = [leaf for leaf in replaceable if leaf.state not in HEALTHY_DEVICE_STATES]
            if len(replaceable) != 1:
                raise InvalidCandidateError(f"{disk} names more than one device of pool {pool}: "
                                            "replace it with zpool by its guid")
        old = replaceable[0]
        [new] = self._paths(self._candidates(uuids, required=True))
        log.info("pool %s: replacing %s (%s) by %s", pool, disk, old.state, new)
        self.ops.replace(pool, old.name if old.name.isdigit() else old.path, new)

    def _remove_all(self, pool: str, tops, role: str) -> None:
        if not tops:
            raise ValidationError(f"Pool {pool} has no {role} device")
        # A group (mirror-N) is removed by its name, a single device by its path.
        self._remove(pool, [top.name if top.children else device_path(top.name) for top in tops],
                     [device_path(leaf.name) for top in tops for leaf in top.leaves()])

    def _remove(self, pool: str, names: builtins.list[str], devices: builtins.list[str]) -> None:
        self.ops.remove(pool, names)
        for device in devices:  # they hold nothing now: make them plainly unused again
            self.zfs.clear_label(device)

    def _spares_named(self, status: PoolStatus, uuids: builtins.list[str] | None) -> builtins.list[str]:
        if not uuids:
            raise ValidationError("disk_list is required for removespare")
        spares = {os.path.realpath(device_path(leaf.name)): device_path(leaf.name)
                  for top in status.spare for leaf in top.leaves()}
        by_uuid = {dev.uuid: dev for dev, _, _ in self.disks.inventory()}
        names = []
        for uuid in uuids:
            dev = by_uuid.get(uuid)
            if dev is None or os.path.realpath(dev.path) not in spares:
                raise InvalidCandidateError(f"Disk UUID {uuid} is not a spare of pool {status.name}")
            names.append(spares[os.path.realpath(dev.path)])
        return names

    # -- delete -----------------------------------------------------------------------------
    def delete(self, pool_id: str) -> None:
        with self.lock.held():
            row, summary = self.find(pool_id)
            self.attachments.refuse_pool_delete(row.id, summary.name)
            key = self._key_of(summary.name)
            with self.store.session() as s:
                r = s.get(Pool, row.id)
                r.state, r.owner = DELETING, current_owner()
                # The key goes once the pool is destroyed (a start after a crash finishes it).
                r.pending = {"key": str(key)} if key is not None else None
            undo = self.attachments.pool_going(row.id, summary.name,
                                               before_undo=lambda: self._set_ready(row.id, summary.name))
            try:
                self._destroy(row.id, summary.name)
            except CommandError as exc:
                self._set_ready(row.id, summary.name)  # still there, and still ours
                with self.store.session() as s:
                    s.get(Pool, row.id).pending = None
                undo()
                raise ConflictError(f"Pool {summary.name} could not be destroyed: {describe(exc)}") from exc

    def _destroy(self, pool_id: int, name: str) -> None:
        self.ops.destroy(name)
        self._remove_mountpoint(name)
        self._remove_key(pool_id, name)
        self._drop_row(pool_id)

    def _key_of(self, name: str) -> Path | None:
        """The key file of an encrypted pool of ours (its root dataset's keylocation)."""
        if not self.zfs.has_encryption:
            return None
        try:
            location = self.ops.dataset_props(name, ["keylocation"]).get("keylocation")
        except CommandError:
            return None
        return self.keys.path_of(location)

    def _remove_key(self, pool_id: int, name: str) -> None:
        """After the pool is destroyed: its key (recorded in the delete's intent) goes, unless a
        pool of that name can still be imported (it would come back needing it)."""
        with self.store.session() as s:
            row = s.get(Pool, pool_id)
            pending = row.pending if row is not None else None
        key = (pending or {}).get("key")
        if not key:
            return
        if name in self.zfs.importable_names():
            log.warning("pool %s: a pool of that name can still be imported: its key %s is kept", name, key)
            return
        if self.keys.remove(Path(key)):
            log.info("pool %s: its key file was removed", name)

    def _remove_mountpoint(self, name: str) -> None:
        """ZFS leaves a pool's empty mount point behind; rmdir never removes anything else."""
        try:
            os.rmdir(self.mountpoint(name))
        except OSError:
            pass

    # -- recovery and adoption --------------------------------------------------------------
    def recover(self) -> None:
        """At start: finish or roll back changes a crash interrupted, then adopt this
        appliance's pools that the database lacks. Pools of others are never touched."""
        if not self.zfs.available():
            log.warning("ZFS is not available: pool recovery skipped")
            return
        with self.lock.held():
            imported = {p.guid: p for p in self.ops.list()}
            with self.store.session() as s:
                rows = s.query(Pool).order_by(Pool.id).all()
            for row in rows:
                if (row.state != READY or row.pending is not None) and not is_current(row.owner) \
                        and owner_alive(row.owner):
                    continue  # another live server process is doing this change now
                try:
                    self._recover_row(row, imported)
                    # (a create's or a delete's intent names a key file: _recover_row settled it)
                    if row.pending is not None and row.state not in (CREATING, DELETING):
                        self._recover_update(row)
                except CommandError as exc:
                    log.error("pool %s (%s): recovery failed: %s", row.id, row.name, describe(exc))
                except Exception:  # one pool's trouble must not stop the others' recovery
                    log.exception("pool %s (%s): recovery failed", row.id, row.name)
            self._adopt()
            for row, summary in self.live():
                self._load_keys(summary.name)
                try:  # a crash between creating and mounting leaves a dataset unmounted
                    for name in self.ops.mount_missing(summary.name, encryption=self.zfs.has_encryption):
                        log.info("mounted %s", name)
                except CommandError as exc:
                    log.error("pool %s: mounting failed: %s", summary.name, describe(exc))

    def _load_keys(self, pool: str) -> None:
        """At start: the keys of the pool's encryption roots that are not loaded (an import
        loads none), from the key files this appliance keeps. A replica of a partner's encrypted
        volume (keylocation prompt: its key is not here) stays locked."""
        if not self.zfs.has_encryption:
            return
        try:
            locked = self.ops.locked_keys(pool)
        except CommandError as exc:
            log.error("pool %s: could not read its keys' status: %s", pool, describe(exc))
            return
        for dataset, location in locked:
            if self.keys.path_of(location) is None:
                continue  # not one of our key files
            try:
                self.ops.load_key(dataset)
                log.info("%s: key loaded", dataset)
            except CommandError as exc:
                log.error("%s: its key could not be loaded: %s", dataset, describe(exc))

    def _recover_row(self, row: Pool, imported: dict[str, PoolSummary]) -> None:
        if row.state == CREATING:
            stamped = self._stamped(row.name) if row.name in {p.name for p in imported.values()} else {}
            if stamped.get(PROP_SYSTEM) == self.system.id and stamped.get(PROP_POOL_ID) == str(row.id):
                guid = next(p.guid for p in imported.values() if p.name == row.name)
                with self.store.session() as s:
                    r = s.get(Pool, row.id)
                    r.guid, r.state, r.owner, r.pending = guid, READY, None, None
                log.info("pool %s: creation had finished in ZFS; kept", row.name)
            else:
                key = (row.pending or {}).get("key")
                if key and row.name not in self.zfs.importable_names():
                    self.keys.remove(Path(key))  # no pool was made with it
                elif key:
                    log.warning("pool %s: a pool of that name can be imported: key %s kept", row.name, key)
                self._drop_row(row.id)
                log.info("pool %s: creation never reached ZFS; rolled back", row.name)
        elif row.state == RENAMING:
            assert row.guid is not None, "only an imported pool (guid known) is ever renamed"
            self._finish_rename(row.id, row.guid, row.pending_name or row.name)
            with self.store.session() as s:
                name = s.get(Pool, row.id).name
            if name != row.name:
                self._remove_mountpoint(row.name)
            log.info("pool %s: interrupted rename %s", name,
                     "finished" if name != row.name else "rolled back (it was not exported yet)")
        elif row.state == DELETING:
            if row.guid in imported:
                self.attachments.pool_going(row.id, imported[row.guid].name)
                self.attachments.pool_released(imported[row.guid].name)
                self._destroy(row.id, imported[row.guid].name)
            else:
                self._remove_key(row.id, row.name)
                self._drop_row(row.id)
            log.info("pool %s: interrupted delete finished", row.name)
        elif row.guid not in imported:
            if row.guid and row.guid in self.zfs.known_pool_guids():
                self.ops.import_by_guid(row.guid, row.name)  # e.g. exported when the server died
                log.info("pool %s: imported again", row.name)
        elif imported[row.guid].name != row.name:
            self._set_ready(row.id, imported[row.guid].name)

    def _recover_update(self, row: Pool) -> None:
        """An update a crash interrupted (after _recover_row settled any rename in flight). The
        rename's export is its point of no return: past it (the pool has its new name now), or
        with no rename asked, the properties are set as asked; before it, put back."""
        pending = row.pending
        assert pending is not None, "called for a row with an update in flight"
        names, changes = pending.get("name"), pending.get("props") or {}
        current = next((p.name for p in self.ops.list() if p.guid == row.guid), None)
        if current is None:
            log.warning("pool %s: not imported; its interrupted update is finished at a later start", row.name)
            return
        finished = names is None or current == names[1]
        for prop, (before, after) in changes.items():
            value = after if finished else before
            if value is not None:
                self.ops.set(current, prop, value)
        with self.store.session() as s:
            r = s.get(Pool, row.id)
            r.name, r.pending, r.owner = current, None, None
        log.info("pool %s: interrupted update %s", current, "finished" if finished else "rolled back")

    def _stamped(self, name: str) -> dict[str, str]:
        try:
            return self.ops.dataset_props(name, [PROP_SYSTEM, PROP_POOL_ID, PROP_POOL_TYPE, PROP_GROUP_SIZE])
        except CommandError:
            return {}

    def _adopt(self) -> None:
        with self.store.session() as s:
            known = {row.guid for row in s.query(Pool).all()}
        for pool in self.ops.list():
            if pool.guid in known:
                continue
            stamp = self._stamped(pool.name)
            if stamp.get(PROP_SYSTEM) != self.system.id:
                continue  # not ours: never touched
            pool_type = stamp.get(PROP_POOL_TYPE) if stamp.get(PROP_POOL_TYPE) in POOL_TYPES else "raid0"
            group_size = stamp.get(PROP_GROUP_SIZE, "")
            with self.store.session() as s:
                stamped_id = stamp.get(PROP_POOL_ID, "")
                pool_id = parse_id(stamped_id) if stamped_id else None
                if pool_id is not None and s.get(Pool, pool_id) is not None:
                    pool_id = None
                row = Pool(id=pool_id, guid=pool.guid, name=pool.name, pool_type=pool_type,
                           diskgroup_size=parse_id(group_size) or DEFAULT_GROUP_SIZE,
                           state=READY)
                s.add(row)
                s.flush()
                new_id = row.id
            if str(new_id) != stamped_id:
                self.ops.set(pool.name, PROP_POOL_ID, str(new_id))
            log.info("adopted pool %s as id %s", pool.name, new_id)

