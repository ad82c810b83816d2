"""parse_zpool_status and parse_zdb_label over realistic output, and ZfsDriver with a fake runner."""
from __future__ import annotations

import pytest

from vsnap.drivers.runner import CommandError, CommandNotFound
from vsnap.drivers.zfs import (
    LABEL_ACTIVE,
    LABEL_DESTROYED,
    LABEL_EXPORTED,
    LABEL_L2CACHE,
    LABEL_SPARE,
    Label,
    PoolStatus,
    VdevNode,
    ZfsDriver,
    device_path,
    parse_zdb_label,
    parse_zpool_status,
)

RAIDZ2_TWO_GROUPS = """\
  pool: tank
 state: ONLINE
  scan: scrub repaired 0B in 00:00:02 with 0 errors on Sun Nov  8 00:24:03 2026
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        ONLINE       0     0     0
\t  raidz2-0  ONLINE       0     0     0
\t    sda     ONLINE       0     0     0
\t    sdb     ONLINE       0     0     0
\t    sdc     ONLINE       0     0     0
\t    sdd     ONLINE       0     0     0
\t  raidz2-1  ONLINE       0     0     0
\t    sde     ONLINE       0     0     0
\t    sdf     ONLINE       0     0     0
\t    sdg     ONLINE       0     0     0
\t    sdh     ONLINE       0     0     0

errors: No known data errors
"""

# zfs-fuse style: top-level leaf devices given by full path, "scrub:" instead of "scan:".
STRIPE = """\
  pool: stripe
 state: ONLINE
 scrub: none requested
config:

\tNAME          STATE     READ WRITE CKSUM
\tstripe        ONLINE       0     0     0
\t  /dev/loop0  ONLINE       0     0     0
\t  /dev/loop1  ONLINE       0     0     0
\t  loop2       ONLINE       0     0     0

errors: No known data errors
"""

WITH_SECTIONS = """\
  pool: fast
 state: ONLINE
  scan: none requested
config:

\tNAME         STATE     READ WRITE CKSUM
\tfast         ONLINE       0     0     0
\t  mirror-0   ONLINE       0     0     0
\t    sda      ONLINE       0     0     0
\t    sdb      ONLINE       0     0     0
\tlogs
\t  mirror-1   ONLINE       0     0     0
\t    nvme0n1  ONLINE       0     0     0
\t    nvme1n1  ONLINE       0     0     0
\tcache
\t  sdc        ONLINE       0     0     0
\t  sdd        ONLINE       0     0     0
\tspares
\t  sde        AVAIL
\t  sdf        AVAIL

errors: No known data errors
"""

DEGRADED_SPARE_IN_USE = """\
  pool: tank
 state: DEGRADED
status: One or more devices could not be opened.  Sufficient replicas exist for
\tthe pool to continue functioning in a degraded state.
action: Attach the missing device and online it using 'zpool online'.
   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-2Q
  scan: resilvered 1.52M in 00:00:01 with 0 errors on Sun Nov  8 00:30:12 2026
config:

\tNAME              STATE     READ WRITE CKSUM
\ttank              DEGRADED     0     0     0
\t  raidz1-0        DEGRADED     0     0     0
\t    spare-0       DEGRADED     0     0     0
\t      /dev/loop3  UNAVAIL      0     0     0  cannot open
\t      loop5       ONLINE       0     0     0
\t    loop1         ONLINE       0     0     0
\t    loop2         ONLINE       0     0     0
\tspares
\t  loop5           INUSE     currently in use

errors: No known data errors
"""


def names(nodes: list[VdevNode]) -> list[str]:
    return [n.name for n in nodes]


def test_raidz2_with_two_groups():
    [pool] = parse_zpool_status(RAIDZ2_TWO_GROUPS)
    assert pool.name == "tank"
    assert pool.state == "ONLINE"
    assert names(pool.data) == ["raidz2-0", "raidz2-1"]
    assert [n.state for n in pool.data] == ["ONLINE", "ONLINE"]
    assert names(pool.data[0].children) == ["sda", "sdb", "sdc", "sdd"]
    assert names(pool.data[1].children) == ["sde", "sdf", "sdg", "sdh"]
    assert pool.log == [] and pool.cache == [] and pool.spare == []
    assert pool.device_roles() == {f"/dev/sd{c}": "data" for c in "abcdefgh"}
    # the group vdevs themselves are not devices
    assert "/dev/raidz2-0" not in pool.device_roles()


def test_stripe_of_top_level_leaves_with_full_and_bare_names():
    [pool] = parse_zpool_status(STRIPE)
    assert (pool.name, pool.state) == ("stripe", "ONLINE")
    assert names(pool.data) == ["/dev/loop0", "/dev/loop1", "loop2"]
    assert all(n.children == [] for n in pool.data)
    assert pool.device_roles() == {"/dev/loop0": "data", "/dev/loop1": "data", "/dev/loop2": "data"}


def test_logs_cache_and_spares_sections():
    [pool] = parse_zpool_status(WITH_SECTIONS)
    assert names(pool.data) == ["mirror-0"]
    assert names(pool.data[0].children) == ["sda", "sdb"]
    assert names(pool.log) == ["mirror-1"]
    assert names(pool.log[0].children) == ["nvme0n1", "nvme1n1"]
    assert names(pool.cache) == ["sdc", "sdd"]
    assert names(pool.spare) == ["sde", "sdf"]
    assert [n.state for n in pool.spare] == ["AVAIL", "AVAIL"]
    assert pool.device_roles() == {
        "/dev/sda": "data", "/dev/sdb": "data",
        "/dev/nvme0n1": "log", "/dev/nvme1n1": "log",
        "/dev/sdc": "cache", "/dev/sdd": "cache",
        "/dev/sde": "spare", "/dev/sdf": "spare",
    }


def test_degraded_pool_with_a_spare_in_use():
    [pool] = parse_zpool_status(DEGRADED_SPARE_IN_USE)
    assert pool.state == "DEGRADED"
    [raidz] = pool.data
    assert (raidz.name, raidz.state) == ("raidz1-0", "DEGRADED")
    assert names(raidz.children) == ["spare-0", "loop1", "loop2"]
    spare_group = raidz.children[0]
    assert names(spare_group.children) == ["/dev/loop3", "loop5"]
    assert [c.state for c in spare_group.children] == ["UNAVAIL", "ONLINE"]
    assert names(raidz.leaves()) == ["/dev/loop3", "loop5", "loop1", "loop2"]
    assert names(pool.spare) == ["loop5"]
    assert pool.spare[0].state == "INUSE"
    roles = pool.device_roles()
    # full path and bare name both end up as /dev/... keys
    assert roles["/dev/loop3"] == "data"
    assert roles["/dev/loop1"] == roles["/dev/loop2"] == "data"
    # a hot spare that is in use is still reported as the pool's spare
    assert roles["/dev/loop5"] == "spare"
    assert set(roles) == {"/dev/loop1", "/dev/loop2", "/dev/loop3", "/dev/loop5"}


def test_several_pools_in_one_text():
    pools = parse_zpool_status(RAIDZ2_TWO_GROUPS + "\n" + WITH_SECTIONS + "\n" + DEGRADED_SPARE_IN_USE)
    assert [(p.name, p.state) for p in pools] == [
        ("tank", "ONLINE"), ("fast", "ONLINE"), ("tank", "DEGRADED")]
    # nothing leaks from one pool's config into the next
    assert names(pools[0].data) == ["raidz2-0", "raidz2-1"] and pools[0].spare == []
    assert names(pools[1].data) == ["mirror-0"] and names(pools[1].spare) == ["sde", "sdf"]
    assert names(pools[2].data) == ["raidz1-0"] and names(pools[2].spare) == ["loop5"]
    assert pools[2].log == [] and pools[2].cache == []


def test_pools_without_errors_line_between_them():
    text = STRIPE.replace("errors: No known data errors\n", "") + WITH_SECTIONS
    pools = parse_zpool_status(text)
    assert names(pools) == ["stripe", "fast"]
    assert names(pools[0].data) == ["/dev/loop0", "/dev/loop1", "loop2"]
    assert names(pools[1].data) == ["mirror-0"]


def test_space_indented_output_parses_the_same():
    tabbed = parse_zpool_status(WITH_SECTIONS)
    spaced = parse_zpool_status(WITH_SECTIONS.expandtabs(8))
    assert [p.device_roles() for p in spaced] == [p.device_roles() for p in tabbed]
    assert names(spaced[0].log[0].children) == ["nvme0n1", "nvme1n1"]


@pytest.mark.parametrize("text", ["no pools available\n", "", "\n\n"])
def test_no_pools(text):
    assert parse_zpool_status(text) == []


def test_device_path():
    assert device_path("sda") == "/dev/sda"
    assert device_path("/dev/loop3") == "/dev/loop3"
    assert device_path("/var/lib/vsnap/disk0.img") == "/var/lib/vsnap/disk0.img"


def test_vdev_leaves_and_empty_pool_roles():
    tree = VdevNode("mirror-0", "ONLINE", [VdevNode("a", "ONLINE"),
                                           VdevNode("spare-1", "ONLINE", [VdevNode("b", None)])])
    assert names(tree.leaves()) == ["a", "b"]
    assert PoolStatus("p", None).device_roles() == {}


# -- ZfsDriver ----------------------------------------------------------------------------------

def test_pool_status_openzfs_asks_for_full_paths(fake_runner):
    fake_runner.on(["zpool", "status", "-P"], stdout=WITH_SECTIONS)
    zfs = ZfsDriver(fake_runner)
    assert names(zfs.pool_status("fast")) == ["fast"]
    assert names(zfs.pool_status()) == ["fast"]
    assert fake_runner.argvs() == [["zpool", "status", "-P", "fast"], ["zpool", "status", "-P"]]


def test_pool_status_zfs_fuse_falls_back_once_and_remembers(fake_runner):
    fake_runner.on(["zpool", "status", "-P"], returncode=2,
                   stderr="invalid option 'P'\nusage:\n\tstatus [-vx] [pool] ...\n")
    fake_runner.on(["zpool", "status"], stdout=STRIPE)
    zfs = ZfsDriver(fake_runner)
    assert names(zfs.pool_status()) == ["stripe"]
    assert zfs.pool_status()[0].device_roles() == {
        "/dev/loop0": "data", "/dev/loop1": "data", "/dev/loop2": "data"}
    assert fake_runner.argvs() == [["zpool", "status", "-P"], ["zpool", "status"],
                                   ["zpool", "status"]]


def test_pool_status_without_pools(fake_runner):
    fake_runner.on(["zpool", "status", "-P"], stdout="no pools available\n")
    assert ZfsDriver(fake_runner).pool_status() == []


def test_pool_status_of_a_missing_pool_is_empty(fake_runner):
    fake_runner.on(["zpool", "status", "-P"], returncode=1,
                   stderr="cannot open 'nope': no such pool\n")
    assert ZfsDriver(fake_runner).pool_status("nope") == []


def test_pool_status_other_errors_propagate(fake_runner):
    fake_runner.on(["zpool", "status", "-P"], returncode=1,
                   stderr="connect: No such file or directory\n"
                          "Please make sure that the zfs-fuse daemon is running.\n")
    zfs = ZfsDriver(fake_runner)
    with pytest.raises(CommandError) as info:
        zfs.pool_status()
    assert info.value.returncode == 1
    assert "zfs-fuse daemon" in str(info.value)
    # a failure that is not about the option does not make the driver give up on -P
    fake_runner.on(["zpool", "status", "-P"], stdout=WITH_SECTIONS)
    assert names(zfs.pool_status()) == ["fast"]
    assert fake_runner.argvs()[-1] == ["zpool", "status", "-P"]


def test_version_openzfs_prefers_kernel_module(fake_runner):
    fake_runner.on(["zfs", "version"], stdout="zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n")
    assert ZfsDriver(fake_runner).version() == "2.1.11-1"
    assert fake_runner.argvs() == [["zfs", "version"]]  # no fallback probing


def test_version_openzfs_kmod_differs_from_userland(fake_runner):
    fake_runner.on(["zfs", "version"], stdout="zfs-2.2.2-1\nzfs-kmod-2.1.11-1\n")
    assert ZfsDriver(fake_runner).version() == "2.1.11-1"


def test_version_openzfs_userland_only(fake_runner):
    fake_runner.on(["zfs", "version"], stdout="zfs-2.2.2-1\n")
    assert ZfsDriver(fake_runner).version() == "2.2.2-1"


def test_version_zfs_fuse(fake_runner):
    fake_runner.on(["zfs", "version"], returncode=2,
                   stderr="unrecognized command 'version'\nusage: zfs command args ...\n")
    fake_runner.on(["zpool", "list"], stdout="tank\n")
    fake_runner.on(["dpkg-query"], stdout="0.7.0-25+b1")
    assert ZfsDriver(fake_runner).version() == "zfs-fuse 0.7.0-25+b1"
    assert fake_runner.argvs()[-1] == ["dpkg-query", "-W", "-f", "${Version}", "zfs-fuse"]


def test_version_zfs_fuse_without_package_version(fake_runner):
    fake_runner.on(["zfs", "version"], returncode=2, stderr="unrecognized command 'version'\n")
    fake_runner.on(["zpool", "list"], stdout="")
    fake_runner.on(["dpkg-query"], returncode=1, stderr="dpkg-query: no packages found matching zfs-fuse\n")
    assert ZfsDriver(fake_runner).version() == "zfs-fuse"


def test_version_without_zfs(fake_runner):
    fake_runner.on(["zfs"], raises=CommandNotFound(["zfs", "version"]))
    assert ZfsDriver(fake_runner).version() is None
    assert fake_runner.argvs() == [["zfs", "version"]]


def test_version_zfs_broken_and_zpool_missing(fake_runner):
    fake_runner.on(["zfs", "version"], returncode=1, stderr="The ZFS modules are not loaded.\n")
    fake_runner.on(["zpool"], raises=CommandNotFound(["zpool", "list"]))
    assert ZfsDriver(fake_runner).version() is None


def test_available(fake_runner):
    fake_runner.on(["zpool", "list", "-H", "-o", "name"], returncode=1,
                   stderr="connect: No such file or directory\n")
    assert ZfsDriver(fake_runner).available() is False
    ok = type(fake_runner)().on(["zpool", "list"], stdout="no pools available\n")
    assert ZfsDriver(ok).available() is True


WITH_SPECIAL_AND_DEDUP = """\
  pool: tank
 state: ONLINE
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        ONLINE       0     0     0
\t  mirror-0  ONLINE       0     0     0
\t    sda     ONLINE       0     0     0
\t    sdb     ONLINE       0     0     0
\tdedup
\t  mirror-1  ONLINE       0     0     0
\t    sdc     ONLINE       0     0     0
\t    sdd     ONLINE       0     0     0
\tspecial
\t  mirror-2  ONLINE       0     0     0
\t    sde     ONLINE       0     0     0
\t    sdf     ONLINE       0     0     0
\tlogs
\t  sdg       ONLINE       0     0     0

errors: No known data errors
"""


def test_special_and_dedup_sections_keep_logs_right():
    [pool] = parse_zpool_status(WITH_SPECIAL_AND_DEDUP)
    assert names(pool.log) == ["sdg"]
    assert {p for p, r in pool.device_roles().items() if r == "data"} >= {"/dev/sda", "/dev/sdb"}


def test_special_and_dedup_headers_are_not_data_vdevs():
    [pool] = parse_zpool_status(WITH_SPECIAL_AND_DEDUP)
    assert names(pool.data) == ["mirror-0"]


# -- zdb -l labels ------------------------------------------------------------------------------

ZDB_ACTIVE = """\
------------------------------------
LABEL 0
------------------------------------
    version: 5000
    name: 'tank'
    state: 0
    txg: 19
    pool_guid: 7425372337392744520
    errata: 0
    hostid: 1734583488
    hostname: 'vsnap1'
    top_guid: 1186279384520853424
    guid: 1186279384520853424
    vdev_children: 1
    vdev_tree:
        type: 'disk'
        id: 0
        guid: 1186279384520853424
        path: '/dev/loop0'
        whole_disk: 0
        metaslab_array: 256
        metaslab_shift: 29
        ashift: 9
        asize: 1068761088
        is_log: 0
        create_txg: 4
    features_for_read:
        com.delphix:hole_birth
        com.delphix:embedded_data
    labels = 0 1 2 3
"""

# older zdb prints every label; only the first one counts
ZDB_EXPORTED_ALL_LABELS = "".join(
    f"--------------------------------------------\nLABEL {n}\n"
    f"--------------------------------------------\n"
    f"    version: 23\n    name: '{'old' if n == 0 else 'other'}'\n    state: {1 if n == 0 else 0}\n"
    f"    txg: 4\n    vdev_tree:\n        type: 'disk'\n        name: 'nested'\n        state: 9\n"
    for n in range(4))

ZDB_SPARE = """\
------------------------------------
LABEL 0
------------------------------------
    version: 5000
    state: 3
    guid: 12007683328474924545
    labels = 0 1 2 3
"""

ZDB_NOTHING = """\
failed to unpack label 0
failed to unpack label 1
failed to unpack label 2
failed to unpack label 3
"""


def test_parse_zdb_label_active_pool():
    label = parse_zdb_label(ZDB_ACTIVE)
    assert label == Label(LABEL_ACTIVE, "tank", "7425372337392744520")
    assert label.reusable is False


def test_parse_zdb_label_reads_the_first_label_and_top_level_keys_only():
    assert parse_zdb_label(ZDB_EXPORTED_ALL_LABELS) == Label(LABEL_EXPORTED, "old")


def test_parse_zdb_label_spare_without_pool_name():
    label = parse_zdb_label(ZDB_SPARE)
    assert label == Label(LABEL_SPARE, None)
    assert label.reusable is True


@pytest.mark.parametrize("text", [ZDB_NOTHING, ""])
def test_parse_zdb_label_nothing(text):
    assert parse_zdb_label(text) is None


@pytest.mark.parametrize("state, reusable", [
    (LABEL_ACTIVE, False), (LABEL_EXPORTED, False), (LABEL_DESTROYED, True),
    (LABEL_SPARE, True), (LABEL_L2CACHE, True),
])
def test_label_reusable(state, reusable):
    assert Label(state, "p").reusable is reusable


def test_driver_label(fake_runner):
    fake_runner.on(["zdb", "-l", "/dev/loop0"], returncode=0, stdout=ZDB_ACTIVE)
    fake_runner.on(["zdb", "-l", "/dev/loop1"], returncode=2, stdout=ZDB_NOTHING)
    zfs = ZfsDriver(fake_runner)
    assert zfs.label("/dev/loop0") == Label(LABEL_ACTIVE, "tank", "7425372337392744520")
    assert zfs.label("/dev/loop1") is None
    assert all(c["check"] is False for c in fake_runner.calls)


# -- stream features, from the usage text ---------------------------------------------------------

OPENZFS_USAGE = """usage: zfs command args ...
where 'command' is one of the following:

\tsend [-DnPpRvLecwhb] [-[i|I] snapshot] <snapshot>
\tsend [-DnvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>
\tsend [-DnPpvLec] [-i bookmark|snapshot] --redact <bookmark> <snapshot>
\tsend [-nvPe] -t <receive_resume_token>
\tsend [-Pnv] --saved filesystem
\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ... <filesystem|volume|snapshot>
\treceive -A <filesystem|volume>
\tbookmark <snapshot|bookmark> <newbookmark>
\thold [-r] <tag> <snapshot> ...
\tload-key [-rn] [-L <keylocation>] <-a | filesystem|volume>
"""

ZFS_FUSE_USAGE = """usage: zfs command args ...
where 'command' is one of the following:

\tsend [-RDp] [-[iI] snapshot] <snapshot>
\treceive [-vnF] <filesystem|volume|snapshot>
\treceive [-vnF] -d <filesystem>
\thold [-r] <tag> <snapshot> ...
\tholds [-r] <snapshot> ...
"""


def test_stream_features_of_openzfs_and_of_zfs_fuse():
    from vsnap.drivers.zfs import STREAM_FEATURES, parse_stream_features
    assert parse_stream_features(OPENZFS_USAGE) == frozenset(STREAM_FEATURES)
    assert parse_stream_features(ZFS_FUSE_USAGE) == frozenset({"holds"})
    # a receive without -s, or a send without -t, is not resumable
    assert "resumable" not in parse_stream_features(OPENZFS_USAGE.replace("-vMnsFhu", "-vMnFhu"))


def test_stream_features_are_read_once_and_missing_zfs_has_none(fake_runner):
    from vsnap.drivers.runner import CommandNotFound
    from vsnap.drivers.zfs import ZfsDriver
    fake_runner.on(["zfs", "-?"], stdout=OPENZFS_USAGE)
    zfs = ZfsDriver(fake_runner)
    assert "compressed" in zfs.stream_features() and "compressed" in zfs.stream_features()
    assert fake_runner.argvs() == [["zfs", "-?"]]
    fake_runner.on(["zfs", "-?"], raises=CommandNotFound(["zfs"]))
    assert ZfsDriver(fake_runner).stream_features() == frozenset()
