"""Which stack the suite runs on: the lab's userspace one (zfs-fuse, tgt, nfs-ganesha: the
default), or the production kernel stack (OpenZFS with zvols, LIO, the kernel NFS server)
inside the kernel lab's guest, where `make guest-suite` sets VSNAP_LAB_STACK=kernel."""
from __future__ import annotations

import os

KERNEL = os.environ.get("VSNAP_LAB_STACK") == "kernel"
# How long a replication stream may move nothing before it counts as stalled: short, so the
# stall test is quick; longer in the emulated guest, where a partner's first bytes come late.
REPL_STALL_SECONDS = "30" if KERNEL else "5"

# LIO numbers a target's LUNs from 0; tgt's controller holds LUN 0, so ours start at 1.
FIRST_LUN = 0 if KERNEL else 1


def lun_device(pool: str, volume: str) -> str:
    """Where a LUN volume's blocks are: a zvol on OpenZFS, an image file in its own
    filesystem on zfs-fuse (which has no zvols)."""
    return f"/dev/zvol/{pool}/{volume}" if KERNEL else f"/vsnap/{pool}/{volume}/vsnap-lun.img"


def size_of(path: str) -> int:
    """The size of a file or of a block device."""
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def write_at(path: str, offset: int, data: bytes) -> None:
    """Writes into a LUN's blocks and makes them durable (a snapshot then holds them)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)
