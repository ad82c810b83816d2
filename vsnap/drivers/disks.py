"""Block devices as the appliance sees them: lsblk for the inventory, blkid for on-disk signatures."""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .runner import Runner

LSBLK_COLUMNS = "NAME,PATH,SIZE,TYPE,MODEL,VENDOR,WWN,SERIAL,FSTYPE,PTTYPE,MOUNTPOINT,TRAN"
# Devices that are never storage candidates: RAM-backed or compressed-swap devices, and floppy
# drives (a virtual machine's 4 KiB fd0 showed as an unused disk).
_EXCLUDED_PREFIXES = ("zram", "ram", "fd")
# Where lsblk knows no transport (virtio, Xen), the kernel's device name tells the kind.
_KIND_BY_NAME = (("vd", "VIRTIO"), ("xvd", "XEN"), ("nvme", "NVME"), ("sd", "SCSI"))
_UUID_NAMESPACE = uuid.UUID("7c3b4f3e-1d1a-4c63-9a55-6f1e0d2a9b10")


@dataclass
class BlockDevice:
    path: str
    size: int
    type: str  # lsblk TYPE: disk or loop
    model: str | None = None
    vendor: str | None = None
    wwn: str | None = None
    serial: str | None = None
    transport: str | None = None
    fstype: str | None = None
    pttype: str | None = None
    mountpoints: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    backing_file: str | None = None
    signature: str | None = None  # what blkid finds on the whole device, e.g. zfs_member

    @property
    def uuid(self) -> str:
        """Stable across restarts and re-attachment: WWN, else serial, else the loop's backing file."""
        if self.wwn:
            wwn = self.wwn.strip().lower()
            if wwn.startswith("0x"):
                return "3" + re.sub(r"[^0-9a-f]", "", wwn[2:])  # the NAA form /dev/disk/by-id uses
            return re.sub(r"[^0-9a-z]", "", wwn)
        if self.serial and self.serial.strip():
            return re.sub(r"[^0-9A-Za-z_-]", "", self.serial.strip())
        if self.backing_file:
            return uuid.uuid5(_UUID_NAMESPACE, "file:" + self.backing_file).hex
        return uuid.uuid5(_UUID_NAMESPACE, "dev:" + self.path).hex

    @property
    def kind(self) -> str:
        """What the API calls the disk's type: its transport (SCSI, SATA, NVME, ...) or LOOP."""
        if self.type == "loop":
            return "LOOP"
        if self.transport:
            return self.transport.upper()
        name = self.path.rsplit("/", 1)[-1]
        for prefix, kind in _KIND_BY_NAME:
            if name.startswith(prefix):
                return kind
        return "UNKNOWN"


def _clean(value) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _mountpoints(node: dict) -> list[str]:
    found = [node["mountpoint"]] if node.get("mountpoint") else []
    for child in node.get("children") or []:
        found.extend(_mountpoints(child))
    return found


def parse_lsblk(text: str) -> list[BlockDevice]:
    devices = []
    for node in json.loads(text).get("blockdevices", []):
        name = node.get("name") or ""
        if node.get("type") not in ("disk", "loop") or name.startswith(_EXCLUDED_PREFIXES):
            continue
        size = int(node.get("size") or 0)
        if size <= 0:  # detached loop devices and empty slots
            continue
        children = node.get("children") or []
        devices.append(BlockDevice(
            path=node.get("path") or f"/dev/{name}",
            size=size,
            type=node["type"],
            model=_clean(node.get("model")),
            vendor=_clean(node.get("vendor")),
            wwn=_clean(node.get("wwn")),
            serial=_clean(node.get("serial")),
            transport=_clean(node.get("tran")),
            fstype=_clean(node.get("fstype")),
            pttype=_clean(node.get("pttype")),
            mountpoints=_mountpoints(node),
            partitions=[c.get("path") or c.get("name") for c in children if c.get("type") == "part"],
        ))
    return devices


def parse_blkid_export(text: str) -> dict[str, str]:
    """`blkid -p -o export DEV...` output -> {device: TYPE or PTTYPE}."""
    found: dict[str, str] = {}
    for block in text.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        dev = fields.get("DEVNAME")
        kind = fields.get("TYPE") or fields.get("PTTYPE")
        if dev and kind:
            found[dev] = kind
    return found


class DiskDriver:
    def __init__(self, runner: Runner, sys_block: Path = Path("/sys/block")):
        self.runner = runner
        self.sys_block = sys_block

    def list(self) -> list[BlockDevice]:
        out = self.runner.run(["lsblk", "-J", "-b", "-o", LSBLK_COLUMNS]).stdout
        devices = parse_lsblk(out)
        for dev in devices:
            if dev.type == "loop":
                dev.backing_file = self._loop_backing_file(dev.path)
        if devices:
            # Low-level probe: finds ZFS labels and partition tables even without udev.
            probe = self.runner.run(["blkid", "-p", "-o", "export", *[d.path for d in devices]],
                                    check=False).stdout
            signatures = parse_blkid_export(probe)
            for dev in devices:
                dev.signature = signatures.get(dev.path)
        return devices

    def _loop_backing_file(self, path: str) -> str | None:
        name = path.rsplit("/", 1)[-1]
        try:
            return (self.sys_block / name / "loop" / "backing_file").read_text().strip() or None
        except OSError:
            return None

    def stable_path(self, path: str, by_id: Path = Path("/dev/disk/by-id")) -> str:
        """A name for the disk that survives reboots and re-cabling (/dev/disk/by-id, as udev
        makes it), else the device path itself (no udev, as in the lab)."""
        real = os.path.realpath(path)
        try:
            links = sorted(by_id.iterdir())
        except OSError:
            return path
        # WWN-based names first: they do not depend on the transport.
        for link in sorted(links, key=lambda ln: (not ln.name.startswith("wwn-"), ln.name)):
            if "-part" not in link.name and os.path.realpath(link) == real:
                return str(link)
        return path

    def rescan(self) -> None:
        """Ask every SCSI host to scan for added or removed disks (none exist in the lab)."""
        for scan in Path("/sys/class/scsi_host").glob("host*/scan"):
            try:
                scan.write_text("- - -")
            except OSError:
                pass
