"""lsblk/blkid parsing, BlockDevice identity and kind, and DiskDriver.list over a fake runner."""
from __future__ import annotations

import json
import re

import pytest

from vsnap.drivers.disks import LSBLK_COLUMNS, BlockDevice, DiskDriver, parse_blkid_export, parse_lsblk


def _node(name, size, type_="disk", **extra):
    node = {"name": name, "path": f"/dev/{name}", "size": size, "type": type_, "model": None,
            "vendor": None, "wwn": None, "serial": None, "fstype": None, "pttype": None,
            "mountpoint": None, "tran": None}
    node.update(extra)
    return node


LSBLK = json.dumps({"blockdevices": [
    _node("loop0", 1073741824, "loop", fstype="zfs_member"),
    _node("loop1", 0, "loop"),  # detached loop device
    _node("sda", 53687091200, model="Virtual disk    ", vendor="VMware  ",
          wwn="0x6000c29d4c1f3b2a8e0e5e7f1a2b3c4d", serial="6000c29d4c1f3b2a8e0e5e7f1a2b3c4d",
          pttype="gpt", tran="sas", children=[
              _node("sda1", 536870912, "part", fstype="vfat", mountpoint="/boot/efi"),
              _node("sda2", 53148123136, "part", fstype="LVM2_member", children=[
                  {"name": "vg-root", "path": "/dev/mapper/vg-root", "size": 50000000000,
                   "type": "lvm", "fstype": "ext4", "mountpoint": "/"},
                  {"name": "vg-swap", "path": "/dev/mapper/vg-swap", "size": 1000000000,
                   "type": "lvm", "fstype": "swap", "mountpoint": "[SWAP]"},
              ]),
          ]),
    _node("sr0", 1073741312, "rom", model="QEMU DVD-ROM", tran="ata"),
    _node("zram0", 4294967296, mountpoint="[SWAP]"),
    _node("ram0", 16777216),
    _node("vdb", "10737418240", serial="  ", model=""),  # older lsblk: sizes as strings
    _node("nvme0n1", 512110190592, model="Samsung SSD 970 EVO Plus 500GB",
          wwn="eui.0025388b91b1c2d3", serial="S4EVNX0N123456", tran="nvme",
          children=[{"name": "nvme0n1p1", "size": 1000, "type": "part", "mountpoint": None}]),
]})


def by_path(devices):
    return {d.path: d for d in devices}


def test_parse_lsblk_keeps_only_real_disks_and_loops():
    devices = parse_lsblk(LSBLK)
    assert [d.path for d in devices] == ["/dev/loop0", "/dev/sda", "/dev/vdb", "/dev/nvme0n1"]


def test_parse_lsblk_fields():
    devs = by_path(parse_lsblk(LSBLK))
    sda = devs["/dev/sda"]
    assert sda.size == 53687091200 and sda.type == "disk"
    assert (sda.model, sda.vendor) == ("Virtual disk", "VMware")
    assert sda.wwn == "0x6000c29d4c1f3b2a8e0e5e7f1a2b3c4d"
    assert sda.transport == "sas" and sda.pttype == "gpt" and sda.fstype is None
    assert sda.partitions == ["/dev/sda1", "/dev/sda2"]  # lvm grandchildren are not partitions
    assert sda.mountpoints == ["/boot/efi", "/", "[SWAP]"]

    vdb = devs["/dev/vdb"]
    assert vdb.size == 10737418240
    assert vdb.serial is None and vdb.model is None  # blank strings are cleaned to None
    assert vdb.partitions == [] and vdb.mountpoints == []

    loop0 = devs["/dev/loop0"]
    assert loop0.type == "loop" and loop0.fstype == "zfs_member"

    # a child without a path falls back to its name
    assert devs["/dev/nvme0n1"].partitions == ["nvme0n1p1"]


def test_parse_lsblk_path_falls_back_to_name_and_empty_input():
    text = json.dumps({"blockdevices": [{"name": "sdz", "size": 1024, "type": "disk"}]})
    [dev] = parse_lsblk(text)
    assert dev.path == "/dev/sdz" and dev.mountpoints == [] and dev.partitions == []
    assert parse_lsblk('{"blockdevices": []}') == []
    assert parse_lsblk("{}") == []


BLKID = """\
DEVNAME=/dev/loop0
LABEL=tank
UUID=1234567890123456789
UUID_SUB=987654321
BLOCK_SIZE=512
VERSION=5000
TYPE=zfs_member
USAGE=filesystem

DEVNAME=/dev/sda
PTUUID=0f6c5a1e-2b7f-4f1e-9d3e-6f0a2b1c3d4e
PTTYPE=gpt

DEVNAME=/dev/sdb
UUID=3e6b2a5c-1111-2222-3333-444455556666
BLOCK_SIZE=4096
TYPE=ext4
USAGE=filesystem

DEVNAME=/dev/sdc
USAGE=other
"""


def test_parse_blkid_export():
    assert parse_blkid_export(BLKID) == {
        "/dev/loop0": "zfs_member",
        "/dev/sda": "gpt",
        "/dev/sdb": "ext4",
        # /dev/sdc has neither TYPE nor PTTYPE
    }
    assert parse_blkid_export("") == {}


def test_parse_blkid_export_value_with_equals():
    text = "DEVNAME=/dev/sdd\nLABEL=a=b\nTYPE=xfs\n"
    assert parse_blkid_export(text) == {"/dev/sdd": "xfs"}


# -- BlockDevice ----------------------------------------------------------------------------

@pytest.mark.parametrize("wwn, expected", [
    ("0x5000C500A1B2C3D4", "35000c500a1b2c3d4"),
    (" 0x6000c29d4c1f3b2a8e0e5e7f1a2b3c4d ", "36000c29d4c1f3b2a8e0e5e7f1a2b3c4d"),
    ("eui.0025388B91B1C2D3", "eui0025388b91b1c2d3"),
])
def test_uuid_from_wwn(wwn, expected):
    dev = BlockDevice("/dev/sda", 1, "disk", wwn=wwn, serial="IGNORED-SERIAL")
    assert dev.uuid == expected


def test_uuid_from_serial():
    assert BlockDevice("/dev/sdb", 1, "disk", serial=" WD-WCC4N0123456 ").uuid == "WD-WCC4N0123456"
    assert BlockDevice("/dev/sdb", 1, "disk", serial="S/N 12:34_x").uuid == "SN1234_x"


def test_uuid_of_loop_follows_backing_file_not_device():
    a0 = BlockDevice("/dev/loop0", 1, "loop", backing_file="/var/lib/vsnap/lab/disks/disk0.img")
    a5 = BlockDevice("/dev/loop5", 1, "loop", backing_file="/var/lib/vsnap/lab/disks/disk0.img")
    b0 = BlockDevice("/dev/loop0", 1, "loop", backing_file="/var/lib/vsnap/lab/disks/disk1.img")
    assert a0.uuid == a5.uuid  # re-attached to another loop device: same disk
    assert a0.uuid != b0.uuid
    assert re.fullmatch(r"[0-9a-f]{32}", a0.uuid)
    # and it is stable across processes (uuid5 of a fixed namespace), not random
    assert a0.uuid == BlockDevice("/dev/loop9", 2, "loop",
                                  backing_file="/var/lib/vsnap/lab/disks/disk0.img").uuid


def test_uuid_falls_back_to_path():
    a = BlockDevice("/dev/vdc", 1, "disk")
    assert a.uuid == BlockDevice("/dev/vdc", 99, "disk").uuid
    assert a.uuid != BlockDevice("/dev/vdd", 1, "disk").uuid
    assert re.fullmatch(r"[0-9a-f]{32}", a.uuid)
    # a path and a backing file with the same text do not collide
    assert a.uuid != BlockDevice("/dev/loop0", 1, "loop", backing_file="/dev/vdc").uuid
    # blank serial is not an id
    assert BlockDevice("/dev/vdc", 1, "disk", serial="   ").uuid == a.uuid


@pytest.mark.parametrize("path, type_, transport, kind", [
    ("/dev/loop0", "loop", None, "LOOP"),
    ("/dev/loop0", "loop", "sata", "LOOP"),
    ("/dev/sda", "disk", "sata", "SATA"),
    ("/dev/sdb", "disk", "usb", "USB"),
    ("/dev/vda", "disk", None, "VIRTIO"),
    ("/dev/xvdb", "disk", None, "XEN"),
    ("/dev/nvme0n1", "disk", None, "NVME"),
    ("/dev/sdc", "disk", None, "SCSI"),
    ("/dev/mmcblk0", "disk", None, "UNKNOWN"),
])
def test_kind(path, type_, transport, kind):
    assert BlockDevice(path, 1, type_, transport=transport).kind == kind


# -- DiskDriver.list --------------------------------------------------------------------------

def _sys_block(tmp_path, backing: dict[str, str]):
    root = tmp_path / "sys-block"
    for name, content in backing.items():
        (root / name / "loop").mkdir(parents=True)
        (root / name / "loop" / "backing_file").write_text(content)
    return root


def test_a_floppy_drive_is_no_disk():
    lsblk = json.dumps({"blockdevices": [_node("fd0", 4096), _node("vda", 1073741824)]})
    assert [d.path for d in parse_lsblk(lsblk)] == ["/dev/vda"]


def test_list_fills_backing_files_and_signatures(fake_runner, tmp_path):
    lsblk = json.dumps({"blockdevices": [
        _node("loop0", 1073741824, "loop"),
        _node("loop1", 1073741824, "loop"),
        _node("loop2", 1073741824, "loop"),
        _node("sda", 1000000, pttype="gpt"),
        _node("zram0", 1000000),
    ]})
    sys_block = _sys_block(tmp_path, {
        "loop0": "/var/lib/vsnap/lab/disks/disk0.img\n",
        "loop1": "\n",  # an empty backing_file is no backing file
        # loop2 has no sysfs entry at all
    })
    fake_runner.on(["lsblk"], stdout=lsblk)
    fake_runner.on(["blkid"], returncode=2, stdout="DEVNAME=/dev/loop0\nTYPE=zfs_member\n\n"
                                                   "DEVNAME=/dev/sda\nPTTYPE=gpt\n")
    devices = DiskDriver(fake_runner, sys_block=sys_block).list()

    assert fake_runner.argvs() == [
        ["lsblk", "-J", "-b", "-o", LSBLK_COLUMNS],
        ["blkid", "-p", "-o", "export", "/dev/loop0", "/dev/loop1", "/dev/loop2", "/dev/sda"],
    ]
    assert fake_runner.calls[1]["check"] is False  # blkid exits 2 when a device has no signature
    devs = by_path(devices)
    assert list(devs) == ["/dev/loop0", "/dev/loop1", "/dev/loop2", "/dev/sda"]
    assert devs["/dev/loop0"].backing_file == "/var/lib/vsnap/lab/disks/disk0.img"
    assert devs["/dev/loop1"].backing_file is None
    assert devs["/dev/loop2"].backing_file is None
    assert devs["/dev/sda"].backing_file is None  # never looked up for disks
    assert devs["/dev/loop0"].signature == "zfs_member"
    assert devs["/dev/sda"].signature == "gpt"
    assert devs["/dev/loop1"].signature is None
    # the backing file gives the loop device its identity
    assert devs["/dev/loop0"].uuid == BlockDevice(
        "/dev/loop7", 1, "loop", backing_file="/var/lib/vsnap/lab/disks/disk0.img").uuid


def test_list_without_devices_skips_blkid(fake_runner, tmp_path):
    fake_runner.on(["lsblk"], stdout=json.dumps({"blockdevices": [_node("loop0", 0, "loop")]}))
    assert DiskDriver(fake_runner, sys_block=tmp_path).list() == []
    assert [a[0] for a in fake_runner.argvs()] == ["lsblk"]
