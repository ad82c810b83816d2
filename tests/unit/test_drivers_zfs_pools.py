"""The pool half of the ZFS driver: size/ratio/`zpool get` parsing, zdb labels with pool guids,
known_pool_guids, clear_label (labelclear and the zfs-fuse fallback on a real temp file), and
ZfsPoolOps with a fake runner."""
from __future__ import annotations

import pytest

import vsnap.drivers.zfs as zfs_mod
from vsnap.drivers.runner import CommandError
from vsnap.drivers.zfs import (
    LABEL_ACTIVE,
    LABEL_EXPORTED,
    Label,
    PoolSummary,
    ZfsDriver,
    ZfsPoolOps,
    parse_ratio,
    parse_zdb_label,
    parse_zpool_get,
    run_retrying_busy,
)

KIB = 1 << 10
MIB = 1 << 20


# -- parse_ratio --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1.00x", 1.0), ("1.23x", 1.23), ("2.50x", 2.5), ("1.00x\n", 1.0), ("3", 3.0), ("x", 1.0),
])
def test_parse_ratio(text, expected):
    assert parse_ratio(text) == pytest.approx(expected)


def test_parse_ratio_garbage():
    with pytest.raises(ValueError):
        parse_ratio("lots")


# -- parse_zpool_get ----------------------------------------------------------------------------

ZPOOL_GET_FUSE = (
    "NAME     PROPERTY    VALUE   SOURCE\n"
    "explore  guid        13720179051990244189  default\n"
    "explore  health      ONLINE  -\n"
    "explore  dedupratio  1.00x   -\n"
)


def test_parse_zpool_get_zfs_fuse_table():
    assert parse_zpool_get(ZPOOL_GET_FUSE) == {
        "guid": "13720179051990244189", "health": "ONLINE", "dedupratio": "1.00x"}


def test_parse_zpool_get_skips_header_and_short_lines():
    text = "NAME PROPERTY VALUE SOURCE\n\nexplore size 1016M -\nbroken\n"
    assert parse_zpool_get(text) == {"size": "1016M"}
    assert parse_zpool_get("") == {}
    # the header alone is never read as a property
    assert parse_zpool_get("NAME     PROPERTY    VALUE   SOURCE\n") == {}


# -- parse_zdb_label ----------------------------------------------------------------------------

def _zdb(name: str | None, state: int, pool_guid: str | None, *, labels=4) -> str:
    """zdb -l text as zfs-fuse 0.7 and OpenZFS print it (`key: value`, strings quoted)."""
    out = []
    for n in range(labels):
        out.append("--------------------------------------------\n"
                   f"LABEL {n}\n"
                   "--------------------------------------------\n"
                   "    version: 23\n")
        if name is not None:
            out.append(f"    name: '{name if n == 0 else 'later'}'\n")
        out.append(f"    state: {state if n == 0 else 2}\n    txg: 4\n")
        if pool_guid is not None:
            out.append(f"    pool_guid: {pool_guid if n == 0 else '1'}\n")
        out.append("    hostname: 'vsnap1'\n"
                   "    top_guid: 5566778899\n"
                   "    guid: 5566778899\n"
                   "    vdev_tree:\n"
                   "        type: 'raidz'\n"
                   "        id: 0\n"
                   "        guid: 99999999999\n"
                   "        nparity: 1\n"
                   "        children[0]:\n"
                   "            type: 'disk'\n"
                   "            guid: 5566778899\n"
                   "            path: '/dev/loop3'\n"
                   "            name: 'nested'\n"
                   "            state: 9\n"
                   "            pool_guid: 424242\n")
    return "".join(out)


def test_parse_zdb_label_with_pool_guid():
    label = parse_zdb_label(_zdb("tank", LABEL_ACTIVE, "13720179051990244189"))
    assert label == Label(LABEL_ACTIVE, "tank", "13720179051990244189")
    assert label.reusable is False


def test_parse_zdb_label_first_label_and_top_level_only():
    # nested keys (deeper indent) and later labels never override the first label's top level
    label = parse_zdb_label(_zdb("old", LABEL_EXPORTED, "777"))
    assert (label.state, label.pool, label.pool_guid) == (LABEL_EXPORTED, "old", "777")


def test_parse_zdb_label_without_pool_guid_or_name():
    # a spare's label names no pool
    label = parse_zdb_label(_zdb(None, 3, None, labels=1))
    assert label == Label(3, None, None)
    assert label.reusable is True


def test_parse_zdb_label_nothing_readable():
    text = "".join(f"--------------------------------------------\nLABEL {n}\n"
                   f"--------------------------------------------\nfailed to unpack label {n}\n"
                   for n in range(4))
    assert parse_zdb_label(text) is None
    assert parse_zdb_label("") is None


# -- ZfsDriver.known_pool_guids -----------------------------------------------------------------

ZPOOL_IMPORT = """\
   pool: exported1
     id: 123
  state: ONLINE
 action: The pool can be imported using its name or numeric identifier.
 config:

        exported1   ONLINE
          loop5     ONLINE

   pool: other
     id: 9876543210987654321
  state: UNAVAIL
 status: The pool was last accessed by another system.
 config:

        other       UNAVAIL  insufficient replicas
          loop6     UNAVAIL  cannot open
"""


def test_known_pool_guids_imported_and_importable(fake_runner):
    fake_runner.on(["zpool", "list", "-H", "-o", "guid"], stdout="111\n222\n")
    fake_runner.on(["zpool", "import"], stdout=ZPOOL_IMPORT)
    guids = ZfsDriver(fake_runner).known_pool_guids()
    assert guids == {"111", "222", "123", "9876543210987654321"}
    assert all(c["check"] is False for c in fake_runner.calls)


def test_known_pool_guids_nothing_anywhere(fake_runner):
    fake_runner.on(["zpool", "list", "-H", "-o", "guid"], stdout="")
    fake_runner.on(["zpool", "import"], returncode=1, stderr="no pools available to import\n")
    assert ZfsDriver(fake_runner).known_pool_guids() == set()


def test_known_pool_guids_ignores_guid_like_text_that_is_not_an_id_line(fake_runner):
    fake_runner.on(["zpool", "list", "-H", "-o", "guid"], stdout="")
    fake_runner.on(["zpool", "import"], stdout="   pool: p\n     id: 55\n status: pid: 66 guid: 77\n")
    assert ZfsDriver(fake_runner).known_pool_guids() == {"55"}


# -- ZfsDriver.clear_label ----------------------------------------------------------------------

def _device_file(tmp_path, size):
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xab" * size)
    return path


def test_clear_label_with_labelclear_writes_nothing(fake_runner, tmp_path):
    dev = _device_file(tmp_path, 3 * MIB)
    fake_runner.on(["zpool", "labelclear", "-f", str(dev)])
    ZfsDriver(fake_runner).clear_label(str(dev))
    assert fake_runner.argvs() == [["zpool", "labelclear", "-f", str(dev)]]
    assert dev.read_bytes() == b"\xab" * (3 * MIB)


def test_clear_label_zfs_fuse_zeroes_the_four_label_areas(fake_runner, tmp_path):
    size = 3 * MIB + 100 * KIB
    dev = _device_file(tmp_path, size)
    fake_runner.on(["zpool", "labelclear"], returncode=2,
                   stderr="unrecognized command 'labelclear'\nusage: zpool command args ...\n")
    ZfsDriver(fake_runner).clear_label(str(dev))
    data = dev.read_bytes()
    assert len(data) == size  # never truncated or extended
    # ZFS places labels 2 and 3 against the size aligned down to 256 KiB: 3 MiB here
    aligned = 3 * MIB
    head_end, tail_start = 512 * KIB, aligned - 512 * KIB
    assert data[:head_end] == bytes(head_end)
    assert data[head_end:tail_start] == b"\xab" * (tail_start - head_end)
    assert data[tail_start:aligned] == bytes(512 * KIB)
    assert data[aligned:] == b"\xab" * (100 * KIB)
    # exactly 1 MiB became zero, nothing else
    assert data.count(0) == MIB


def test_clear_label_other_failure_is_a_command_error(fake_runner, tmp_path):
    dev = _device_file(tmp_path, MIB)
    fake_runner.on(["zpool", "labelclear"], returncode=1,
                   stderr=f"failed to clear label for {dev}: Device or resource busy\n")
    with pytest.raises(CommandError) as err:
        ZfsDriver(fake_runner).clear_label(str(dev))
    assert err.value.argv == ["zpool", "labelclear", "-f", str(dev)]
    assert "busy" in err.value.stderr
    assert dev.read_bytes() == b"\xab" * MIB  # untouched


# -- ZfsPoolOps: capability probes --------------------------------------------------------------

BAD_PROP = "bad property list: invalid property '{}'\nusage:\n\tget [-rHp] ...\n"


@pytest.mark.parametrize("prop, attr", [("sync", "has_sync"), ("logicalused", "has_logicalused")])
def test_probe_missing_property(fake_runner, prop, attr):
    fake_runner.on(["zfs", "get", "-H", "-o", "value", prop], returncode=2,
                   stderr=BAD_PROP.format(prop))
    ops = ZfsPoolOps(fake_runner)
    assert getattr(ops, attr) is False
    assert getattr(ops, attr) is False
    assert fake_runner.argvs() == [["zfs", "get", "-H", "-o", "value", prop]]  # probed once
    assert fake_runner.calls[0]["check"] is False


@pytest.mark.parametrize("prop, attr", [("sync", "has_sync"), ("logicalused", "has_logicalused")])
def test_probe_present_property(fake_runner, prop, attr):
    fake_runner.on(["zfs", "get", "-H", "-o", "value", prop], stdout="standard\n")
    ops = ZfsPoolOps(fake_runner)
    assert getattr(ops, attr) is True
    assert getattr(ops, attr) is True
    assert len(fake_runner.calls) == 1


def test_probes_are_independent(fake_runner):
    fake_runner.on(["zfs", "get", "-H", "-o", "value", "sync"], stdout="")
    fake_runner.on(["zfs", "get", "-H", "-o", "value", "logicalused"], returncode=2,
                   stderr=BAD_PROP.format("logicalused"))
    ops = ZfsPoolOps(fake_runner)
    assert (ops.has_sync, ops.has_logicalused) == (True, False)
    assert (ops.has_sync, ops.has_logicalused) == (True, False)
    assert len(fake_runner.calls) == 2


# -- ZfsPoolOps: reading ------------------------------------------------------------------------

def test_list_parses_tab_separated_rows(fake_runner):
    fake_runner.on(["zpool", "list", "-H", "-o", "name,guid,health"],
                   stdout="tank\t13720179051990244189\tONLINE\n"
                          "backup\t42\tDEGRADED\n"
                          "\n"
                          "odd line without tabs\n")
    assert ZfsPoolOps(fake_runner).list() == [
        PoolSummary("tank", "13720179051990244189", "ONLINE"),
        PoolSummary("backup", "42", "DEGRADED"),
    ]


def test_list_empty_and_failure(fake_runner):
    fake_runner.on(["zpool", "list", "-H", "-o", "name,guid,health"], stdout="")
    assert ZfsPoolOps(fake_runner).list() == []
    fake_runner.on(["zpool", "list", "-H", "-o", "name,guid,health"], returncode=1,
                   stderr="connect: Connection refused\nPlease make sure that the zfs-fuse daemon is running.\n")
    with pytest.raises(CommandError):
        ZfsPoolOps(fake_runner).list()


def test_dataset_props(fake_runner):
    fake_runner.on(["zfs", "get"], stdout="used\t1073741824\ncompressratio\t1.00x\ncom.vsnap:system\t-\n")
    props = ZfsPoolOps(fake_runner).dataset_props("tank", ["used", "compressratio", "com.vsnap:system"])
    assert props == {"used": "1073741824", "compressratio": "1.00x", "com.vsnap:system": "-"}
    assert fake_runner.argvs() == [["zfs", "get", "-Hp", "-o", "property,value",
                                    "used,compressratio,com.vsnap:system", "tank"]]


def test_pool_props(fake_runner):
    fake_runner.on(["zpool", "get"], stdout=ZPOOL_GET_FUSE)
    assert ZfsPoolOps(fake_runner).pool_props("explore", ["dedupratio"])["dedupratio"] == "1.00x"
    assert fake_runner.argvs() == [["zpool", "get", "dedupratio", "explore"]]


# -- ZfsPoolOps: changing -----------------------------------------------------------------------

def test_create_argv_exactly(fake_runner):
    fake_runner.on(["zpool", "create"])
    ZfsPoolOps(fake_runner).create(
        "tank", ["raidz1", "/dev/sdb", "/dev/sdc", "/dev/sdd"], mountpoint="/vsnap/tank",
        props={"compression": "on", "dedup": "off", "com.vsnap:pool_id": "7"})
    assert fake_runner.argvs() == [[
        "zpool", "create", "-f", "-m", "/vsnap/tank",
        "-O", "compression=on", "-O", "dedup=off", "-O", "com.vsnap:pool_id=7",
        "tank", "raidz1", "/dev/sdb", "/dev/sdc", "/dev/sdd"]]
    assert fake_runner.calls[0]["check"] is True


def test_create_failure_raises(fake_runner):
    fake_runner.on(["zpool", "create"], returncode=1, stderr="invalid vdev specification\n")
    with pytest.raises(CommandError):
        ZfsPoolOps(fake_runner).create("tank", ["/dev/sdb"], mountpoint="/vsnap/tank", props={})


def test_simple_changes_argv(fake_runner):
    for prefix in (["zpool", "add"], ["zpool", "remove"], ["zfs", "set"], ["zpool", "import"]):
        fake_runner.on(prefix)
    ops = ZfsPoolOps(fake_runner)
    ops.add("tank", ["log", "mirror", "/dev/sde", "/dev/sdf"])
    ops.remove("tank", ["mirror-1"])
    ops.set("tank", "compression", "off")
    ops.import_by_guid("123", "newname")
    assert fake_runner.argvs() == [
        ["zpool", "add", "-f", "tank", "log", "mirror", "/dev/sde", "/dev/sdf"],
        ["zpool", "remove", "tank", "mirror-1"],
        ["zfs", "set", "compression=off", "tank"],
        ["zpool", "import", "123", "newname"],
    ]


class _Sequence:
    """A runner answering one command with a scripted sequence of results."""

    def __init__(self, results):
        self.results = list(results)
        self.calls = []

    def run(self, argv, *, check=True, input=None, timeout=None, env=None, changes=None):
        from vsnap.drivers.runner import Result
        self.calls.append(list(argv))
        returncode, stderr = self.results.pop(0) if self.results else self.last
        self.last = (returncode, stderr)
        if check and returncode:
            raise CommandError(list(argv), returncode, "", stderr)
        return Result(list(argv), returncode, "", stderr)


@pytest.fixture
def sleeps(monkeypatch):
    slept = []
    monkeypatch.setattr(zfs_mod.time, "sleep", slept.append)
    return slept


BUSY = "cannot export 'tank': pool is busy\n"


def test_retry_busy_then_success(sleeps):
    runner = _Sequence([(1, BUSY), (1, BUSY), (0, "")])
    ZfsPoolOps(runner).export("tank")
    assert runner.calls == [["zpool", "export", "tank"]] * 3
    assert sleeps == [0.5, 0.5]


def test_retry_busy_forever_gives_up_after_five(sleeps):
    runner = _Sequence([(1, BUSY)] * 10)
    with pytest.raises(CommandError) as err:
        ZfsPoolOps(runner).destroy("tank")
    assert runner.calls == [["zpool", "destroy", "-f", "tank"]] * 5
    assert len(sleeps) == 4  # no pause after the last attempt
    assert "busy" in err.value.stderr


def test_retry_not_busy_fails_at_once(sleeps):
    runner = _Sequence([(1, "cannot open 'tank': no such pool\n"), (0, "")])
    with pytest.raises(CommandError) as err:
        ZfsPoolOps(runner).export("tank")
    assert len(runner.calls) == 1
    assert sleeps == []
    assert err.value.returncode == 1


def test_retry_busy_custom_attempts(sleeps):
    runner = _Sequence([(1, BUSY)] * 3)
    with pytest.raises(CommandError):
        run_retrying_busy(runner, ["zpool", "export", "x"], attempts=2, pause=0.1)
    assert len(runner.calls) == 2
    assert sleeps == [0.1]


# -- ZfsPoolOps.mount_missing -------------------------------------------------------------------

MOUNT_PROPS = "".join(f"{n}\t{p}\t{v}\n" for n, p, v in [
    ("tank", "mounted", "no"), ("tank", "canmount", "on"), ("tank", "mountpoint", "/vsnap/tank"),
    ("tank/a", "mounted", "yes"), ("tank/a", "canmount", "on"), ("tank/a", "mountpoint", "/vsnap/tank/a"),
    ("tank/b", "mounted", "no"), ("tank/b", "canmount", "on"), ("tank/b", "mountpoint", "/vsnap/tank/b"),
    ("tank/c", "mounted", "no"), ("tank/c", "canmount", "off"), ("tank/c", "mountpoint", "/vsnap/tank/c"),
    ("tank/d", "mounted", "no"), ("tank/d", "canmount", "noauto"), ("tank/d", "mountpoint", "/x"),
    ("tank/e", "mounted", "no"), ("tank/e", "canmount", "on"), ("tank/e", "mountpoint", "none"),
    ("tank/f", "mounted", "no"), ("tank/f", "canmount", "on"), ("tank/f", "mountpoint", "legacy"),
    ("tank/vol", "mounted", "-"), ("tank/vol", "canmount", "-"), ("tank/vol", "mountpoint", "-"),
])


def test_mount_missing_mounts_only_what_should_be_mounted(fake_runner):
    fake_runner.on(["zfs", "get"], stdout=MOUNT_PROPS)
    fake_runner.on(["zfs", "mount"])
    assert ZfsPoolOps(fake_runner).mount_missing("tank") == ["tank", "tank/b"]
    assert fake_runner.argvs() == [
        ["zfs", "get", "-Hp", "-r", "-o", "name,property,value", "mounted,canmount,mountpoint", "tank"],
        ["zfs", "mount", "tank"],  # parents first
        ["zfs", "mount", "tank/b"],
    ]


def test_mount_missing_nothing_to_do(fake_runner):
    fake_runner.on(["zfs", "get"], stdout="tank\tmounted\tyes\ntank\tcanmount\ton\ntank\tmountpoint\t/vsnap/tank\n")
    assert ZfsPoolOps(fake_runner).mount_missing("tank") == []
    assert len(fake_runner.calls) == 1


def test_mount_missing_mount_failure_raises(fake_runner):
    fake_runner.on(["zfs", "get"], stdout="tank\tmounted\tno\ntank\tcanmount\ton\ntank\tmountpoint\t/vsnap/tank\n")
    fake_runner.on(["zfs", "mount"], returncode=1, stderr="cannot mount '/vsnap/tank': directory is not empty\n")
    with pytest.raises(CommandError):
        ZfsPoolOps(fake_runner).mount_missing("tank")


# -- keys of encrypted pools --------------------------------------------------------------------

def test_locked_keys_are_the_encryption_roots_without_their_key(fake_runner):
    from vsnap.drivers.zfs import ZfsPoolOps
    fake_runner.on(["zfs", "get"], stdout="\n".join([
        "t\tencryptionroot\tt", "t\tkeystatus\tunavailable", "t\tkeylocation\tfile:///s/keys/pool-1.key",
        "t/a\tencryptionroot\tt", "t/a\tkeystatus\tunavailable", "t/a\tkeylocation\tnone",
        "t/r\tencryptionroot\tt/r", "t/r\tkeystatus\tunavailable", "t/r\tkeylocation\tprompt",
        "t/o\tencryptionroot\tt/o", "t/o\tkeystatus\tavailable", "t/o\tkeylocation\tfile:///x",
        "t/p\tencryptionroot\t-", "t/p\tkeystatus\t-", "t/p\tkeylocation\tnone"]) + "\n")
    ops = ZfsPoolOps(fake_runner)
    assert ops.locked_keys("t") == [("t", "file:///s/keys/pool-1.key"), ("t/r", "prompt")]
    assert fake_runner.argvs()[0] == ["zfs", "get", "-Hp", "-r", "-o", "name,property,value",
                                      "encryptionroot,keystatus,keylocation", "t"]
    fake_runner.on(["zfs", "load-key"])
    ops.load_key("t")
    ops.load_key("t/r", "file:///s/keys/imported-1.key")
    assert fake_runner.argvs()[-2:] == [["zfs", "load-key", "t"],
                                        ["zfs", "load-key", "-L", "file:///s/keys/imported-1.key", "t/r"]]


def test_mount_missing_skips_datasets_whose_key_is_not_loaded(fake_runner):
    from vsnap.drivers.zfs import ZfsPoolOps
    rows = []
    for name, key in (("t", "available"), ("t/a", "available"), ("t/r", "unavailable")):
        rows += [f"{name}\tmounted\tno", f"{name}\tcanmount\ton", f"{name}\tmountpoint\t/vsnap/{name}",
                 f"{name}\tkeystatus\t{key}"]
    fake_runner.on(["zfs", "get"], stdout="\n".join(rows) + "\n")
    fake_runner.on(["zfs", "mount"])
    assert ZfsPoolOps(fake_runner).mount_missing("t", encryption=True) == ["t", "t/a"]
    assert fake_runner.argvs()[0][-2] == "mounted,canmount,mountpoint,keystatus"
    fake_runner.calls.clear()
    ZfsPoolOps(fake_runner).mount_missing("t")  # zfs-fuse: keystatus is not a property there
    assert fake_runner.argvs()[0][-2] == "mounted,canmount,mountpoint"


def test_importable_names_are_imported_and_exported_pools(fake_runner):
    from vsnap.drivers.zfs import ZfsDriver
    fake_runner.on(["zpool", "list"], stdout="tank\n")
    fake_runner.on(["zpool", "import"], stdout="   pool: old\n     id: 123\n  state: ONLINE\n")
    assert ZfsDriver(fake_runner).importable_names() == {"tank", "old"}
