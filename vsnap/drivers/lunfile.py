"""LUN images as sparse files, for ZFS without zvols: one file alone in its own dataset, so
snapshots, clones and replication of the dataset carry the LUN."""
from __future__ import annotations

import os

IMAGE_NAME = "vsnap-lun.img"


class LunFileDriver:
    @staticmethod
    def path(mountpoint: str) -> str:
        return os.path.join(mountpoint, IMAGE_NAME)

    def create(self, mountpoint: str, size: int) -> str:
        path = self.path(mountpoint)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: no blocks until written
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def size(self, mountpoint: str) -> int | None:
        try:
            return os.stat(self.path(mountpoint)).st_size
        except OSError:
            return None

    def resize(self, mountpoint: str, size: int) -> None:
        os.truncate(self.path(mountpoint), size)
