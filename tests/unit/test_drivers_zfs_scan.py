"""The scan part of `zpool status` (scrub and resilver) and each device's state and note, in
both dialects (the samples: zpool_support.py, which says where they come from)."""
from __future__ import annotations

import time

import pytest

from vsnap.drivers.runner import CommandError
from vsnap.drivers.zfs import (
    CANCELED,
    FINISHED,
    SCANNING,
    ScanStatus,
    ZfsPoolOps,
    parse_ctime,
    parse_scan,
    parse_zpool_status,
)

from zpool_support import (
    FUSE_OFFLINE_WITH_SPARE,
    FUSE_REPLACED,
    FUSE_RESILVERING,
    FUSE_SCRUB_DONE,
    FUSE_SCRUBBING,
    FUSE_SPARE_RESILVERING,
    OZFS_RESILVERING_SPARE,
    OZFS_SCRUBBING,
    OZFS_SLOW_SCRUB,
)


def local_epoch(year, month, day, hour, minute, second) -> int:
    return int(time.mktime((year, month, day, hour, minute, second, 0, 0, -1)))


# -- the scan line(s) --------------------------------------------------------------------------

def test_fuse_scrub_in_progress():
    [pool] = parse_zpool_status(FUSE_SCRUBBING)
    assert pool.scan == ScanStatus("scrub", SCANNING, 19.95, seconds_left=0)


def test_fuse_scrub_completed():
    [pool] = parse_zpool_status(FUSE_SCRUB_DONE)
    assert pool.scan == ScanStatus("scrub", FINISHED, 100.0, errors=0,
                                   ended=local_epoch(2026, 12, 6, 5, 46, 53))


def test_fuse_resilver_in_progress_and_the_new_device_note():
    [pool] = parse_zpool_status(FUSE_RESILVERING)
    assert pool.scan == ScanStatus("resilver", SCANNING, 67.38, seconds_left=0)
    replacing = pool.data[0].children[1]
    assert replacing.name == "replacing-1"
    assert [(d.name, d.state, d.note) for d in replacing.children] == [
        ("/var/tmp/h21-b.img", "ONLINE", None), ("/var/tmp/h21-c.img", "ONLINE", "290M resilvered")]


def test_fuse_offline_device_and_available_spare():
    [pool] = parse_zpool_status(FUSE_OFFLINE_WITH_SPARE)
    assert pool.state == "DEGRADED"
    assert pool.scan is not None and (pool.scan.function, pool.scan.state) == ("resilver", FINISHED)
    assert [(d.path, d.state) for d in pool.data[0].leaves()] == [
        ("/var/tmp/h21-a.img", "OFFLINE"), ("/var/tmp/h21-c.img", "ONLINE")]
    assert [(d.path, d.state, d.note) for d in pool.spare] == [("/var/tmp/h21-d.img", "AVAIL", None)]


def test_fuse_spare_in_use_while_resilvering():
    [pool] = parse_zpool_status(FUSE_SPARE_RESILVERING)
    assert pool.scan == ScanStatus("resilver", SCANNING, 79.0, seconds_left=0)
    spare = pool.data[0].children[0]
    assert (spare.name, spare.state) == ("spare-0", "DEGRADED")
    assert [(d.path, d.state) for d in spare.children] == [
        ("/var/tmp/h21-a.img", "OFFLINE"), ("/var/tmp/h21-d.img", "ONLINE")]
    assert [(d.path, d.state, d.note) for d in pool.spare] == [
        ("/var/tmp/h21-d.img", "INUSE", "currently in use")]


def test_fuse_after_the_replace_the_spare_is_available_again():
    [pool] = parse_zpool_status(FUSE_REPLACED)
    assert pool.state == "ONLINE"
    assert [d.path for d in pool.data[0].leaves()] == ["/var/tmp/h21-b.img", "/var/tmp/h21-c.img"]
    assert [(d.path, d.state) for d in pool.spare] == [("/var/tmp/h21-d.img", "AVAIL")]
    assert pool.scan == ScanStatus("resilver", FINISHED, 100.0, errors=0,
                                   ended=local_epoch(2026, 12, 6, 5, 47, 22))


def test_openzfs_scrub_in_progress_spans_three_lines():
    [pool] = parse_zpool_status(OZFS_SCRUBBING)
    assert pool.scan == ScanStatus("scrub", SCANNING, 4.88, seconds_left=190,
                                   started=local_epoch(2024, 1, 2, 10, 0, 0))
    assert [d.name for d in pool.data[0].leaves()] == ["sda", "sdb", "sdc"]  # the config is intact


def test_openzfs_resilver_onto_a_spare_with_a_failed_disk_known_by_guid():
    [pool] = parse_zpool_status(OZFS_RESILVERING_SPARE)
    assert pool.scan == ScanStatus("resilver", SCANNING, 36.54, seconds_left=2 * 86400 + 3723,
                                   started=local_epoch(2024, 2, 14, 23, 59, 1))
    raidz = pool.data[0]
    failed, spare = raidz.children[0].children
    assert (failed.name, failed.state, failed.note) == (
        "4242424242424242", "FAULTED", "was /dev/disk/by-id/virtio-vsnapdisk1")
    assert failed.path == "/dev/disk/by-id/virtio-vsnapdisk1"  # shown by the path it had
    assert (spare.path, spare.state, spare.note) == (
        "/dev/disk/by-id/virtio-vsnapdisk5", "ONLINE", "(resilvering)")
    assert [(d.name.rsplit("-", 1)[-1], d.state) for d in raidz.children[1:]] == [
        ("vsnapdisk2", "ONLINE"), ("vsnapdisk3", "REMOVED"), ("vsnapdisk4", "ONLINE")]
    assert [(d.state, d.note) for d in pool.spare] == [("INUSE", "currently in use")]


def test_openzfs_slow_scan_has_no_estimate():
    [pool] = parse_zpool_status(OZFS_SLOW_SCRUB)
    assert pool.scan is not None and pool.scan.state == SCANNING and pool.scan.percent == 4.88
    assert pool.scan.seconds_left is None


@pytest.mark.parametrize("text, expected", [
    ("none requested", None),
    ("", None),
    ("scrub repaired 0B in 00:00:02 with 0 errors on Sun Nov  8 00:24:03 2026",
     ScanStatus("scrub", FINISHED, 100.0, errors=0, started=local_epoch(2026, 11, 8, 0, 24, 1),
                ended=local_epoch(2026, 11, 8, 0, 24, 3))),
    ("scrub repaired 1.50M in 1 days 02:00:00 with 3 errors on Sun Nov  8 00:24:03 2026",
     ScanStatus("scrub", FINISHED, 100.0, errors=3, started=local_epoch(2026, 11, 7, 22, 24, 3) - 86400,
                ended=local_epoch(2026, 11, 8, 0, 24, 3))),
    ("resilvered 1.52M in 00:00:01 with 0 errors on Sun Nov  8 00:30:12 2026",
     ScanStatus("resilver", FINISHED, 100.0, errors=0, started=local_epoch(2026, 11, 8, 0, 30, 11),
                ended=local_epoch(2026, 11, 8, 0, 30, 12))),
    ("resilvered (draid2:4d:6c:1s-0) 2.00G in 00:01:00 with 0 errors on Sun Nov  8 00:30:12 2026",
     ScanStatus("resilver", FINISHED, 100.0, errors=0, started=local_epoch(2026, 11, 8, 0, 29, 12),
                ended=local_epoch(2026, 11, 8, 0, 30, 12))),
    ("scrub canceled on Mon Mar  4 08:09:10 2024",
     ScanStatus("scrub", CANCELED, ended=local_epoch(2024, 3, 4, 8, 9, 10))),
    ("resilver canceled on Mon Mar  4 08:09:10 2024",
     ScanStatus("resilver", CANCELED, ended=local_epoch(2024, 3, 4, 8, 9, 10))),
    ("scrub paused since Mon Mar  4 08:09:10 2024 scrub started on Mon Mar  4 07:00:00 2024 "
     "1.23G scanned, 500M issued, 10.0G total 0B repaired, 4.88% done",
     ScanStatus("scrub", SCANNING, 4.88, started=local_epoch(2024, 3, 4, 7, 0, 0), paused=True)),
    ("resilver (draid1:2d:4c:1s-0) in progress since Mon Mar  4 08:09:10 2024 1G scanned at 20M/s, "
     "1G issued 20M/s, 4G total 1G resilvered, 25.00% done, 00:02:30 to go",
     ScanStatus("resilver", SCANNING, 25.0, seconds_left=150, started=local_epoch(2024, 3, 4, 8, 9, 10))),
    # zfs-fuse's own words (its zpool_main.c print_scrub_status)
    ("scrub stopped after 0h1m with 0 errors on Sun Dec  6 05:46:53 2026",
     ScanStatus("scrub", CANCELED, errors=0, ended=local_epoch(2026, 12, 6, 5, 46, 53))),
    ("resilver in progress for 1h2m, 50.00% done, 1h3m to go",
     ScanStatus("resilver", SCANNING, 50.0, seconds_left=3780)),
    ("resilver completed after 0h0m with 2 errors on Sun Dec  6 05:47:11 2026",
     ScanStatus("resilver", FINISHED, 100.0, errors=2, ended=local_epoch(2026, 12, 6, 5, 47, 11))),
    ("something new one day", None),
])
def test_parse_scan(text, expected):
    assert parse_scan(text) == expected


OZFS_SCRUB_LINES = ("  scan: scrub in progress since Tue Jan  2 10:00:00 2024\n"
                    "\t1.23G scanned at 100M/s, 500M issued at 50.0M/s, 10.0G total\n"
                    "\t0B repaired, 4.88% done, 00:03:10 to go\n")
REBUILT = "  scan: resilvered (mirror-0) 2.00G in 00:01:00 with 0 errors on Sun Nov  8 00:30:12 2026\n"


def test_a_scrub_and_a_sequential_resilver_at_once_the_running_one_wins():
    [pool] = parse_zpool_status(OZFS_SCRUBBING.replace(OZFS_SCRUB_LINES, OZFS_SCRUB_LINES + REBUILT))
    assert pool.scan is not None and (pool.scan.function, pool.scan.state) == ("scrub", SCANNING)
    scrubbed = "  scan: scrub repaired 0B in 00:00:02 with 0 errors on Sun Nov  8 00:24:03 2026\n"
    [pool] = parse_zpool_status(OZFS_SCRUBBING.replace(OZFS_SCRUB_LINES, scrubbed + REBUILT))
    assert pool.scan is not None and (pool.scan.function, pool.scan.state) == ("resilver", FINISHED)


def test_scans_stay_with_their_pool():
    idle = OZFS_SCRUBBING.replace(OZFS_SCRUB_LINES, "  scan: none requested\n")
    pools = parse_zpool_status(FUSE_SCRUBBING + "\n" + idle + FUSE_SCRUB_DONE)
    assert [(p.name, p.scan and p.scan.state) for p in pools] == [
        ("h21pool", SCANNING), ("tank", None), ("h21pool", FINISHED)]


def test_status_lines_that_look_like_headers_are_not_scans():
    [pool] = parse_zpool_status(FUSE_RESILVERING)
    assert pool.state == "ONLINE" and pool.scan is not None and pool.scan.percent == 67.38


@pytest.mark.parametrize("text", ["", "yesterday", "Foo Bar 12 10:00:00 2024", "Sun Dec  6 25:61:00 x"])
def test_parse_ctime_refuses_what_it_cannot_read(text):
    assert parse_ctime(text) is None


def test_parse_ctime_local_time():
    assert parse_ctime("Tue Jan  2 10:00:00 2024\n") == local_epoch(2024, 1, 2, 10, 0, 0)
    assert parse_ctime("Tue Jan 12 10:00:00 2024") == local_epoch(2024, 1, 12, 10, 0, 0)


# -- the commands ------------------------------------------------------------------------------

def test_scrub_stop_and_replace_commands(fake_runner):
    ops = ZfsPoolOps(fake_runner)
    fake_runner.on(["zpool", "scrub"]).on(["zpool", "replace"])
    ops.scrub("tank")
    ops.scrub_stop("tank")
    ops.replace("tank", "4242424242424242", "/dev/disk/by-id/virtio-vsnapdisk6")
    assert fake_runner.argvs() == [["zpool", "scrub", "tank"], ["zpool", "scrub", "-s", "tank"],
                                   ["zpool", "replace", "-f", "tank", "4242424242424242",
                                    "/dev/disk/by-id/virtio-vsnapdisk6"]]


def test_a_refused_scrub_raises(fake_runner):
    fake_runner.on(["zpool", "scrub"], returncode=1,
                   stderr="cannot scrub tank: currently scrubbing; use 'zpool scrub -s' to cancel current scrub\n")
    with pytest.raises(CommandError, match="currently scrubbing"):
        ZfsPoolOps(fake_runner).scrub("tank")
