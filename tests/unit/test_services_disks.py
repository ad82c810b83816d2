"""DiskService: how each disk is used, VSNAP_DISKS filtering and the used_as filter."""
from __future__ import annotations

import threading

import pytest

from vsnap.config import Settings
from vsnap.drivers.disks import BlockDevice
from vsnap.drivers.zfs import (
    LABEL_ACTIVE,
    LABEL_DESTROYED,
    LABEL_EXPORTED,
    LABEL_L2CACHE,
    LABEL_SPARE,
    Label,
    parse_zpool_status,
)
from vsnap.errors import ValidationError
from vsnap.services.disks import USED_AS, DiskService

ZPOOL_STATUS = """\
  pool: tank
 state: ONLINE
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        ONLINE       0     0     0
\t  mirror-0  ONLINE       0     0     0
\t    sda     ONLINE       0     0     0
\t    sdl     ONLINE       0     0     0
\tlogs
\t  sdb       ONLINE       0     0     0
\tcache
\t  sdc       ONLINE       0     0     0
\tspares
\t  sdd       AVAIL

errors: No known data errors

  pool: backup
 state: ONLINE
config:

\tNAME          STATE     READ WRITE CKSUM
\tbackup        ONLINE       0     0     0
\t  /dev/loop3  ONLINE       0     0     0

errors: No known data errors
"""


def _devices():
    return [
        # in a pool: the role wins over everything else the disk shows
        BlockDevice("/dev/sda", 10 * 2**30, "disk", model="QEMU HARDDISK", vendor="ATA",
                    wwn="0x5000c500a1b2c3d4", transport="sata", pttype="gpt",
                    partitions=["/dev/sda1", "/dev/sda9"], signature="gpt",
                    mountpoints=["/weird"]),
        BlockDevice("/dev/sdb", 2**30, "disk", signature="zfs_member"),
        BlockDevice("/dev/sdc", 2**30, "disk"),
        BlockDevice("/dev/sdd", 2**30, "disk"),
        BlockDevice("/dev/sde", 2**30, "disk", mountpoints=["/srv"], pttype="gpt",
                    partitions=["/dev/sde1"], signature="gpt"),
        BlockDevice("/dev/sdf", 2**30, "disk", partitions=["/dev/sdf1"]),
        BlockDevice("/dev/sdg", 2**30, "disk", signature="dos"),
        BlockDevice("/dev/sdh", 2**30, "disk", signature="zfs_member"),  # exported pool
        BlockDevice("/dev/sdi", 2**30, "disk"),  # log device of a pool imported elsewhere
        BlockDevice("/dev/sdj", 2**30, "disk", signature="ext4"),
        BlockDevice("/dev/sdk", 2**30, "disk", serial="SERIAL-K"),
        BlockDevice("/dev/loop3", 2**30, "loop", backing_file="/var/lib/vsnap/lab/disks/disk3.img"),
        BlockDevice("/dev/loop4", 2**30, "loop", backing_file="/var/lib/vsnap/lab/disks/disk4.img"),
        BlockDevice("/dev/sdm", 2**30, "disk", signature="xfs"),
        BlockDevice("/dev/sdn", 2**30, "disk", signature="zfs_member"),  # destroyed pool
        BlockDevice("/dev/sdo", 2**30, "disk"),  # old cache device
        BlockDevice("/dev/sdp", 2**30, "disk"),  # old spare
        BlockDevice("/dev/sdq", 2**30, "disk"),  # removed from a pool that is gone since
    ]


LABELS = {
    "/dev/sdh": Label(LABEL_EXPORTED, "old", "111"),
    "/dev/sdi": Label(LABEL_ACTIVE, "elsewhere", "222"),
    "/dev/sdq": Label(LABEL_ACTIVE, "removed-from", "999"),  # orphan: its pool is nowhere
    "/dev/sdn": Label(LABEL_DESTROYED, "gone"),
    "/dev/sdo": Label(LABEL_L2CACHE, None),
    "/dev/sdp": Label(LABEL_SPARE, None),
    # labels on claimed disks must not matter
    "/dev/sdj": Label(LABEL_ACTIVE, "stale"),
    "/dev/sdb": Label(LABEL_ACTIVE, "tank"),
}

EXPECTED = {
    "/dev/sda": ("data", "tank"),
    "/dev/sdb": ("log", "tank"),
    "/dev/sdc": ("cache", "tank"),
    "/dev/sdd": ("spare", "tank"),
    "/dev/sde": ("mounted", None),
    "/dev/sdf": ("partitioned", None),
    "/dev/sdg": ("partitioned", None),
    "/dev/sdh": ("zfs", None),
    "/dev/sdi": ("zfs", None),
    "/dev/sdj": ("filesystem", None),
    "/dev/sdk": ("unused", None),
    "/dev/loop3": ("data", "backup"),
    "/dev/loop4": ("unused", None),
    "/dev/sdm": ("filesystem", None),
    "/dev/sdn": ("unused", None),
    "/dev/sdo": ("unused", None),
    "/dev/sdp": ("unused", None),
    "/dev/sdq": ("unused", None),
}


class FakeDiskDriver:
    def __init__(self, devices):
        self.devices = devices
        self.rescans = 0

    def list(self):
        return list(self.devices)

    def rescan(self):
        self.rescans += 1


class FakeZfs:
    def __init__(self, status_text: str, labels=None, available: bool = True,
                 known_guids=("111", "222")):
        self.status_text = status_text
        self.known_guids = set(known_guids)
        self.labels = labels or {}
        self._available = available
        self.status_calls = 0
        self.label_calls: list[str] = []
        self._lock = threading.Lock()

    def available(self):
        return self._available

    def pool_status(self, pool=None):
        self.status_calls += 1
        return parse_zpool_status(self.status_text)

    def label(self, device):
        with self._lock:
            self.label_calls.append(device)
        return self.labels.get(device)

    def known_pool_guids(self):
        return self.known_guids


def make(tmp_path, disks=(), devices=None, zfs=None):
    settings = Settings(state_dir=tmp_path, disks=list(disks))
    return DiskService(settings, FakeDiskDriver(_devices() if devices is None else devices),
                       zfs or FakeZfs(ZPOOL_STATUS, LABELS))


def test_inventory_used_as_precedence(tmp_path):
    inventory = make(tmp_path).inventory()
    assert {dev.path: (used_as, pool) for dev, used_as, pool in inventory} == EXPECTED


def test_labels_are_read_only_for_disks_nothing_else_claims(tmp_path):
    service = make(tmp_path)
    service.inventory()
    assert sorted(service.zfs.label_calls) == sorted([
        "/dev/sdh", "/dev/sdi", "/dev/sdk", "/dev/loop4", "/dev/sdn", "/dev/sdo", "/dev/sdp", "/dev/sdq"])


def test_list_renders_api_fields(tmp_path):
    listed = {d["name"]: d for d in make(tmp_path).list()}
    assert listed["/dev/sda"] == {
        "model": "QEMU HARDDISK", "name": "/dev/sda", "size": str(10 * 2**30), "type": "SATA",
        "uuid": "35000c500a1b2c3d4", "vendor": "ATA", "used_as": "data", "pool": "tank",
    }
    assert listed["/dev/loop3"]["type"] == "LOOP"
    assert listed["/dev/loop3"]["uuid"] != listed["/dev/loop4"]["uuid"]
    assert listed["/dev/sdk"]["uuid"] == "SERIAL-K"
    assert [d["name"] for d in make(tmp_path).list()] == [d.path for d in _devices()]


def test_without_zfs_no_pools_and_no_labels(tmp_path):
    zfs = FakeZfs(ZPOOL_STATUS, LABELS, available=False)
    got = {dev.path: (used_as, pool) for dev, used_as, pool in make(tmp_path, zfs=zfs).inventory()}
    assert zfs.status_calls == 0 and zfs.label_calls == []
    assert got["/dev/sda"] == ("mounted", None)
    assert got["/dev/sdf"] == ("partitioned", None)
    assert got["/dev/sdd"] == ("unused", None)
    assert got["/dev/loop3"] == ("unused", None)
    assert got["/dev/sdi"] == ("unused", None)
    assert all(pool is None for _, pool in got.values())


def test_zfs_member_signature_never_looks_unused(tmp_path):
    zfs = FakeZfs(ZPOOL_STATUS, LABELS, available=False)
    got = {dev.path: used_as for dev, used_as, _ in make(tmp_path, zfs=zfs).inventory()}
    assert got["/dev/sdh"] == "zfs"


def test_whole_disk_vdev_shown_by_its_partition_belongs_to_the_pool(tmp_path):
    status = ZPOOL_STATUS.replace("\t    sda     ONLINE", "\t    /dev/sda1 ONLINE")
    devices = [BlockDevice("/dev/sda", 2**30, "disk", pttype="gpt", signature="gpt",
                           partitions=["/dev/sda1", "/dev/sda9"])]
    service = make(tmp_path, devices=devices, zfs=FakeZfs(status))
    [(_, used_as, pool)] = service.inventory()
    assert (used_as, pool) == ("data", "tank")


@pytest.mark.parametrize("used_as", USED_AS)
def test_list_filter_by_used_as(tmp_path, used_as):
    listed = make(tmp_path).list(used_as)
    assert [d["name"] for d in listed] == [p for p, (u, _) in EXPECTED.items() if u == used_as]
    assert all(d["used_as"] == used_as for d in listed)


@pytest.mark.parametrize("bad", ["bogus", "", "Unused", "DATA"])
def test_list_rejects_unknown_used_as(tmp_path, bad):
    with pytest.raises(ValidationError) as info:
        make(tmp_path).list(bad)
    assert "used_as must be one of" in info.value.message


def test_vsnap_disks_exact_paths(tmp_path):
    service = make(tmp_path, disks=["/dev/sdk", "/dev/loop3"])
    assert [d["name"] for d in service.list()] == ["/dev/sdk", "/dev/loop3"]
    # disks outside VSNAP_DISKS are not even probed
    assert service.zfs.label_calls == ["/dev/sdk"]
    assert service.list("data")[0]["pool"] == "backup"


def test_vsnap_disks_patterns(tmp_path):
    service = make(tmp_path, disks=["/dev/sd[a-c]", "/dev/loop*"])
    assert [d["name"] for d in service.list()] == [
        "/dev/sda", "/dev/sdb", "/dev/sdc", "/dev/loop3", "/dev/loop4"]
    # a pattern is not a prefix
    assert make(tmp_path, disks=["/dev/sd"]).list() == []


def test_vsnap_disks_through_symlinks(tmp_path):
    disk = tmp_path / "disk0"
    disk.write_text("")
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "wwn-0x5000c500a1b2c3d4").symlink_to(disk)
    (tmp_path / "alias").symlink_to(disk)
    devices = [BlockDevice(str(disk), 2**30, "disk"), BlockDevice("/dev/sdk", 2**30, "disk")]

    # the configured path is a symlink to the device
    service = make(tmp_path, disks=[str(by_id / "wwn-0x5000c500a1b2c3d4")], devices=devices)
    assert [d["name"] for d in service.list()] == [str(disk)]

    # the device path is a symlink and the pattern matches what it points to
    devices = [BlockDevice(str(tmp_path / "alias"), 2**30, "disk")]
    service = make(tmp_path, disks=[str(tmp_path / "disk*")], devices=devices)
    assert [d["name"] for d in service.list()] == [str(tmp_path / "alias")]


def test_rescan_delegates(tmp_path):
    service = make(tmp_path)
    service.rescan()
    assert service.driver.rescans == 1
