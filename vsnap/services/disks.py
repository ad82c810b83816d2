"""Which disks the appliance may use, and how each is used now."""
from __future__ import annotations

import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor

from ..config import Settings
from ..drivers.disks import BlockDevice, DiskDriver
from ..drivers.zfs import ZfsDriver
from ..errors import ValidationError

UNUSED = "unused"
# In order of precedence: what a disk is doing decides what it reports.
USED_AS = (UNUSED, "data", "log", "cache", "spare", "special", "dedup", "mounted", "partitioned",
           "zfs", "filesystem")


class DiskService:
    def __init__(self, settings: Settings, driver: DiskDriver, zfs: ZfsDriver):
        self.settings = settings
        self.driver = driver
        self.zfs = zfs

    def _allowed(self, dev: BlockDevice) -> bool:
        """VSNAP_DISKS limits what this appliance sees, so two appliances never share a disk."""
        if not self.settings.disks:
            return True
        real = os.path.realpath(dev.path)
        for pattern in self.settings.disks:
            if fnmatch.fnmatch(dev.path, pattern) or fnmatch.fnmatch(real, pattern):
                return True
            if os.path.exists(pattern) and os.path.realpath(pattern) == real:
                return True
        return False

    def _pool_roles(self) -> dict[str, tuple[str, str]]:
        """Real device path -> (pool, role) for every device of every imported pool."""
        roles: dict[str, tuple[str, str]] = {}
        if not self.zfs.available():
            return roles
        for pool in self.zfs.pool_status():
            for path, role in pool.device_roles().items():
                roles[os.path.realpath(path)] = (pool.name, role)
        return roles

    def inventory(self) -> list[tuple[BlockDevice, str, str | None]]:
        """Every visible disk with how it is used and the pool it belongs to."""
        roles = self._pool_roles()
        devices = [dev for dev in self.driver.list() if self._allowed(dev)]
        result: list[tuple[BlockDevice, str, str | None]] = []
        unclaimed: list[BlockDevice] = []
        for dev in devices:
            # OpenZFS names a whole-disk vdev by the partition it made on the disk.
            claims = [roles[p] for p in map(os.path.realpath, [dev.path, *dev.partitions]) if p in roles]
            pool, role = claims[0] if claims else (None, None)
            if role:
                used_as = role
            elif dev.mountpoints:
                used_as = "mounted"
            elif dev.partitions or dev.pttype or dev.signature in ("gpt", "dos"):
                used_as = "partitioned"
            elif dev.signature and dev.signature != "zfs_member":
                used_as = "filesystem"
            else:
                used_as = UNUSED
                unclaimed.append(dev)
            result.append((dev, used_as, pool))
        # blkid does not recognise log, cache or spare labels, so every disk no imported pool
        # claims has its ZFS label read: an exported pool's disk must never look unused.
        labels = self._labels(unclaimed)
        if any(label is not None and not label.reusable for label in labels.values()):
            # A label can outlive its pool (a device removed from it, a crash): it only
            # protects a pool that is imported here or can be imported.
            known = self.zfs.known_pool_guids()
            labels = {path: (None if label is not None and not label.reusable and label.pool_guid
                             and label.pool_guid not in known else label)
                      for path, label in labels.items()}
        settled = []
        for dev, used_as, pool in result:
            if used_as == UNUSED:
                if dev.path in labels:
                    label = labels[dev.path]
                    in_use = label is not None and not label.reusable
                else:  # label unread (ZFS down): blkid's word is all we have, and it must count
                    in_use = dev.signature == "zfs_member"
                if in_use:
                    used_as, pool = "zfs", None
            settled.append((dev, used_as, pool))
        return settled

    def _labels(self, devices: list[BlockDevice]) -> dict:
        if not devices or not self.zfs.available():
            return {}
        with ThreadPoolExecutor(max_workers=min(8, len(devices))) as pool:
            return dict(zip([d.path for d in devices], pool.map(self.zfs.label, [d.path for d in devices])))

    @staticmethod
    def render(dev: BlockDevice, used_as: str, pool: str | None) -> dict:
        return {
            "model": dev.model,
            "name": dev.path,
            "size": str(dev.size),
            "type": dev.kind,
            "uuid": dev.uuid,
            "vendor": dev.vendor,
            "used_as": used_as,
            "pool": pool,
        }

    def list(self, used_as: str | None = None) -> list[dict]:
        if used_as is not None and used_as not in USED_AS:
            raise ValidationError(f"used_as must be one of: {', '.join(USED_AS)}")
        return [self.render(*entry) for entry in self.inventory()
                if used_as is None or entry[1] == used_as]

    def rescan(self) -> None:
        self.driver.rescan()
