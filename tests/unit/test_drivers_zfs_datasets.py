"""ZfsDatasetOps (argv of every command, destroy/rename fallbacks), parse_zfs_get and
LunFileDriver on a real temp directory."""
from __future__ import annotations

import os

import pytest

import vsnap.drivers.zfs as zfs_mod
from vsnap.drivers.lunfile import IMAGE_NAME, LunFileDriver
from vsnap.drivers.runner import CommandError, Result
from vsnap.drivers.zfs import DATASET_PROPS, ZfsDatasetOps, parse_zfs_get

GET = ["zfs", "get", "-Hp", "-o", "name,property,value"]
BUSY = "cannot rename 'tank/a': dataset is busy\n"


class ScriptedRunner:
    """conftest's FakeRunner, plus answers to one exact argv given as a script consumed in
    order (the last answer repeats)."""

    def __init__(self, base):
        self.base = base
        self.calls = base.calls
        self.on = base.on
        self.argvs = base.argvs
        self.scripts: dict[tuple[str, ...], list[tuple[int, str, str]]] = {}

    def script(self, argv, *answers):
        self.scripts[tuple(argv)] = list(answers)
        return self

    def run(self, argv, *, check=True, input=None, timeout=None, env=None, changes=None):
        script = self.scripts.get(tuple(argv))
        if script is None:
            return self.base.run(argv, check=check, input=input, timeout=timeout, env=env)
        self.calls.append({"argv": list(argv), "check": check, "input": input, "timeout": timeout})
        returncode, stdout, stderr = script.pop(0) if len(script) > 1 else script[0]
        if check and returncode != 0:
            raise CommandError(list(argv), returncode, stdout, stderr)
        return Result(list(argv), returncode, stdout, stderr)


class FakeZfsDriver:
    def __init__(self, version):
        self._version = version
        self.asked = 0

    def version(self):
        self.asked += 1
        return self._version


@pytest.fixture
def sleeps(monkeypatch):
    slept = []
    monkeypatch.setattr(zfs_mod.time, "sleep", slept.append)
    return slept


@pytest.fixture
def runner(fake_runner):
    return ScriptedRunner(fake_runner)


@pytest.fixture
def ops(runner):
    return ZfsDatasetOps(runner, FakeZfsDriver("2.2.2-0ubuntu9"))


def type_of(name, kind):
    return f"{name}\ttype\t{kind}\n"


# =============================================================================================
# parse_zfs_get
# =============================================================================================

TREE = (
    "tank\ttype\tfilesystem\n"
    "tank\tguid\t11111111111111111111\n"
    "tank\tmountpoint\t/vsnap/tank\n"
    "tank/fs1\ttype\tfilesystem\n"
    "tank/fs1\tguid\t222\n"
    "tank/fs1\torigin\t-\n"
    "tank/fs1\tused\t98304\n"
    "tank/fs1\tmountpoint\t/vsnap/tank/fs1\n"
    "tank/fs1\tcom.vsnap:vol_id\t3\n"
    "tank/fs1@snap_1\ttype\tsnapshot\n"
    "tank/fs1@snap_1\tguid\t333\n"
    "tank/lun1\ttype\tvolume\n"
    "tank/lun1\tvolsize\t1073741824\n"
    "tank/lun1\tcom.vsnap:serial\t-\n"
    "tank/clone\torigin\ttank/fs1@snap_1\n"
)


def test_parse_zfs_get_realistic_tree():
    found = parse_zfs_get(TREE)
    assert list(found) == ["tank", "tank/fs1", "tank/fs1@snap_1", "tank/lun1", "tank/clone"]
    assert found["tank"] == {"type": "filesystem", "guid": "11111111111111111111",
                             "mountpoint": "/vsnap/tank"}
    assert list(found["tank/fs1"]) == ["type", "guid", "origin", "used", "mountpoint",
                                       "com.vsnap:vol_id"]  # ZFS's order kept
    assert found["tank/fs1"]["com.vsnap:vol_id"] == "3"
    assert found["tank/fs1@snap_1"] == {"type": "snapshot", "guid": "333"}
    assert found["tank/lun1"] == {"type": "volume", "volsize": "1073741824", "com.vsnap:serial": "-"}
    assert found["tank/clone"] == {"origin": "tank/fs1@snap_1"}


def test_parse_zfs_get_keeps_spaces_and_skips_malformed_lines():
    text = ("tank/a\tcom.vsnap:note\tvalue with  spaces\n"
            "\n"
            "garbage line without tabs\n"
            "tank/a\tonly-two\n"
            "tank/a\ta\tb\textra\n"
            "tank/a\tused\t0\n")
    assert parse_zfs_get(text) == {"tank/a": {"com.vsnap:note": "value with  spaces", "used": "0"}}
    assert parse_zfs_get("") == {}


def test_parse_zfs_get_later_value_wins_and_empty_value_kept():
    assert parse_zfs_get("t/a\tquota\t1\nt/a\tquota\t2\nt/a\tcomment\t\n") == {
        "t/a": {"quota": "2", "comment": ""}}


# =============================================================================================
# has_zvols
# =============================================================================================

@pytest.mark.parametrize("version, expected", [
    ("2.2.2-0ubuntu9", True), ("2.1.5-1ubuntu6~22.04.1", True), ("0.8.3-1ubuntu12", True),
    ("zfs-fuse 0.7.0-25+b1", False), ("zfs-fuse", False), (None, False), ("", False),
])
def test_has_zvols_from_version(runner, version, expected):
    zfs = FakeZfsDriver(version)
    ops = ZfsDatasetOps(runner, zfs)
    assert ops.has_zvols is expected
    assert ops.has_zvols is expected
    assert zfs.asked == 1  # probed once
    assert runner.calls == []  # told apart by the version, never by trying `zfs create -V`


# =============================================================================================
# tree / get
# =============================================================================================

def test_tree_one_recursive_get_with_user_props(runner, ops):
    runner.on(["zfs", "get"], stdout=TREE)
    tree = ops.tree("tank", ["com.vsnap:vol_id", "com.vsnap:serial"])
    assert runner.argvs() == [["zfs", "get", "-Hp", "-r", "-o", "name,property,value",
                               ",".join(DATASET_PROPS + ["com.vsnap:vol_id", "com.vsnap:serial"]),
                               "tank"]]
    assert tree == parse_zfs_get(TREE)


def test_get_returns_only_the_named_dataset(runner, ops):
    runner.on(GET + ["guid,type", "tank/fs1"], stdout="tank/fs1\tguid\t222\ntank/fs1\ttype\tfilesystem\n")
    assert ops.get("tank/fs1", ["guid", "type"]) == {"guid": "222", "type": "filesystem"}
    runner.on(GET + ["guid", "tank/x"], stdout="tank/other\tguid\t9\n")
    assert ops.get("tank/x", ["guid"]) == {}


def test_get_missing_dataset_raises(runner, ops):
    runner.on(GET, returncode=1, stderr="cannot open 'tank/x': dataset does not exist\n")
    with pytest.raises(CommandError):
        ops.get("tank/x", ["type"])


# =============================================================================================
# create / clone / snapshot / set / inherit
# =============================================================================================

def test_create_filesystem_argv(runner, ops):
    runner.on(["zfs", "create"])
    ops.create_filesystem("tank/fs1", {"com.vsnap:vol_id": "3", "com.vsnap:type": "filesystem",
                                       "quota": "1073741824"})
    ops.create_filesystem("tank/fs2", {})
    assert runner.argvs() == [
        ["zfs", "create", "-o", "com.vsnap:vol_id=3", "-o", "com.vsnap:type=filesystem",
         "-o", "quota=1073741824", "tank/fs1"],
        ["zfs", "create", "tank/fs2"],
    ]
    assert all(c["check"] for c in runner.calls)


def test_create_zvol_argv(runner, ops):
    runner.on(["zfs", "create"])
    ops.create_zvol("tank/lun1", 1073741824, 8192, {"com.vsnap:serial": "abc",
                                                     "com.vsnap:volsize": "1073741824"})
    assert runner.argvs() == [["zfs", "create", "-V", "1073741824", "-b", "8192",
                               "-o", "com.vsnap:serial=abc", "-o", "com.vsnap:volsize=1073741824",
                               "tank/lun1"]]


def test_create_failure_raises(runner, ops):
    runner.on(["zfs", "create"], returncode=1, stderr="cannot create 'tank/x': dataset already exists\n")
    with pytest.raises(CommandError):
        ops.create_filesystem("tank/x", {})
    with pytest.raises(CommandError):
        ops.create_zvol("tank/x", 1 << 20, 512, {})


def test_clone_snapshot_set_inherit_argv(runner, ops):
    for verb in ("clone", "snapshot", "set", "inherit"):
        runner.on(["zfs", verb])
    ops.clone("tank/fs1@s1", "tank/c1", {"com.vsnap:vol_id": "9", "com.vsnap:type": "lun"})
    ops.clone("tank/fs1@s1", "tank/c2", {})
    ops.snapshot("tank/fs1@s2")
    ops.set("tank/fs1", "quota", "none")
    ops.inherit("tank/fs1", "mountpoint")
    assert runner.argvs() == [
        ["zfs", "clone", "-o", "com.vsnap:vol_id=9", "-o", "com.vsnap:type=lun", "tank/fs1@s1", "tank/c1"],
        ["zfs", "clone", "tank/fs1@s1", "tank/c2"],
        ["zfs", "snapshot", "tank/fs1@s2"],
        ["zfs", "set", "quota=none", "tank/fs1"],
        ["zfs", "inherit", "mountpoint", "tank/fs1"],
    ]


# =============================================================================================
# destroy
# =============================================================================================

def test_destroy_argv_plain_and_recursive(runner, ops, sleeps):
    runner.on(["zfs", "destroy"])
    ops.destroy("tank/fs1@s1")
    ops.destroy("tank/fs1", recursive=True)
    assert runner.argvs() == [["zfs", "destroy", "tank/fs1@s1"], ["zfs", "destroy", "-r", "tank/fs1"]]
    assert sleeps == []


@pytest.mark.parametrize("stderr", [
    "cannot open 'tank/fs1': dataset does not exist\n",
    "could not find any snapshots to destroy; check snapshot names.\n",
])
def test_destroy_of_what_is_gone_is_done(runner, ops, sleeps, stderr):
    runner.on(["zfs", "destroy"], returncode=1, stderr=stderr)
    ops.destroy("tank/fs1", recursive=True)
    assert len(runner.calls) == 1
    assert sleeps == []


def test_destroy_busy_is_retried(runner, ops, sleeps):
    busy = (1, "", "cannot destroy 'tank/fs1': dataset is busy\n")
    runner.script(["zfs", "destroy", "-r", "tank/fs1"], busy, busy, (0, "", ""))
    ops.destroy("tank/fs1", recursive=True)
    assert runner.argvs() == [["zfs", "destroy", "-r", "tank/fs1"]] * 3
    assert sleeps == [0.5, 0.5]


def test_destroy_busy_forever_raises(runner, ops, sleeps):
    runner.script(["zfs", "destroy", "tank/fs1"], (1, "", "cannot destroy: dataset is busy\n"))
    with pytest.raises(CommandError) as err:
        ops.destroy("tank/fs1")
    assert len(runner.calls) == 5
    assert "busy" in err.value.stderr


def test_destroy_other_error_raises_at_once(runner, ops, sleeps):
    runner.on(["zfs", "destroy"], returncode=1,
              stderr="cannot destroy 'tank/fs1': filesystem has children\n")
    with pytest.raises(CommandError):
        ops.destroy("tank/fs1")
    assert len(runner.calls) == 1
    assert sleeps == []


# =============================================================================================
# rename
# =============================================================================================

def test_rename_plain_success(runner, ops):
    runner.on(["zfs", "rename"])
    ops.rename("tank/a", "tank/b")
    ops.rename("tank/b", "tank/c")
    assert runner.argvs() == [["zfs", "rename", "tank/a", "tank/b"], ["zfs", "rename", "tank/b", "tank/c"]]
    assert runner.calls[0]["check"] is False
    assert ops._rename_needs_unmount is False


def test_rename_other_error_raises_without_fallback(runner, ops):
    runner.on(["zfs", "rename"], returncode=1, stderr="cannot rename to 'tank/b': dataset already exists\n")
    with pytest.raises(CommandError) as err:
        ops.rename("tank/a", "tank/b")
    assert "already exists" in err.value.stderr
    assert runner.argvs() == [["zfs", "rename", "tank/a", "tank/b"]]
    assert ops._rename_needs_unmount is False


def _fallback_runner(runner, old, new, *, rename_ok=True):
    runner.on(GET + ["type", old], stdout=type_of(old, "filesystem"))
    runner.on(GET + ["type", new], stdout=type_of(new, "filesystem")) if rename_ok else \
        runner.on(GET + ["type", new], returncode=1, stderr=f"cannot open '{new}': dataset does not exist\n")
    runner.on(["zfs", "set", "mountpoint=none", old])
    runner.on(["zfs", "inherit", "mountpoint"])


def test_rename_busy_falls_back_to_unmounted_rename_and_learns(runner, ops, sleeps):
    runner.script(["zfs", "rename", "tank/a", "tank/b"], (1, "", BUSY), (0, "", ""))
    _fallback_runner(runner, "tank/a", "tank/b")
    ops.rename("tank/a", "tank/b")
    assert runner.argvs() == [
        ["zfs", "rename", "tank/a", "tank/b"],
        GET + ["type", "tank/a"],
        ["zfs", "set", "mountpoint=none", "tank/a"],
        ["zfs", "rename", "tank/a", "tank/b"],
        GET + ["type", "tank/b"],
        ["zfs", "inherit", "mountpoint", "tank/b"],  # mounted again under the NEW name
    ]
    assert ops._rename_needs_unmount is True

    # learnt: the next rename goes straight to the fallback, no plain attempt first
    runner.calls.clear()
    runner.on(["zfs", "rename", "tank/b", "tank/c"])
    _fallback_runner(runner, "tank/b", "tank/c")
    ops.rename("tank/b", "tank/c")
    assert runner.argvs() == [
        GET + ["type", "tank/b"],
        ["zfs", "set", "mountpoint=none", "tank/b"],
        ["zfs", "rename", "tank/b", "tank/c"],
        GET + ["type", "tank/c"],
        ["zfs", "inherit", "mountpoint", "tank/c"],
    ]


def test_rename_fallback_failure_mounts_old_name_again_and_raises(runner, ops, sleeps):
    fail = (1, "", "cannot rename 'tank/a': some other failure\n")
    runner.script(["zfs", "rename", "tank/a", "tank/b"], (1, "", BUSY), fail)
    _fallback_runner(runner, "tank/a", "tank/b", rename_ok=False)
    with pytest.raises(CommandError) as err:
        ops.rename("tank/a", "tank/b")
    assert "some other failure" in err.value.stderr
    assert runner.argvs()[-3:] == [
        ["zfs", "rename", "tank/a", "tank/b"],
        GET + ["type", "tank/b"],
        ["zfs", "inherit", "mountpoint", "tank/a"],  # back on the OLD name
    ]
    assert ["zfs", "inherit", "mountpoint", "tank/b"] not in runner.argvs()


def test_rename_learnt_zvol_is_renamed_directly(runner, ops, sleeps):
    ops._rename_needs_unmount = True
    runner.on(GET + ["type", "tank/lun"], stdout=type_of("tank/lun", "volume"))
    runner.script(["zfs", "rename", "tank/lun", "tank/lun2"],
                  (1, "", "cannot rename: dataset is busy\n"), (0, "", ""))
    ops.rename("tank/lun", "tank/lun2")
    assert runner.argvs() == [GET + ["type", "tank/lun"],
                              ["zfs", "rename", "tank/lun", "tank/lun2"],
                              ["zfs", "rename", "tank/lun", "tank/lun2"]]  # busy retried
    assert not any(a[:2] == ["zfs", "set"] or a[:2] == ["zfs", "inherit"] for a in runner.argvs())


def test_rename_fallback_mountpoint_none_busy_is_retried(runner, ops, sleeps):
    ops._rename_needs_unmount = True
    runner.on(GET + ["type", "tank/a"], stdout=type_of("tank/a", "filesystem"))
    runner.on(GET + ["type", "tank/b"], stdout=type_of("tank/b", "filesystem"))
    runner.script(["zfs", "set", "mountpoint=none", "tank/a"],
                  (1, "", "cannot unmount '/vsnap/tank/a': Device or resource busy\n"), (0, "", ""))
    runner.on(["zfs", "rename"])
    runner.on(["zfs", "inherit"])
    ops.rename("tank/a", "tank/b")
    assert runner.argvs().count(["zfs", "set", "mountpoint=none", "tank/a"]) == 2
    assert sleeps == [0.5]
    assert runner.argvs()[-1] == ["zfs", "inherit", "mountpoint", "tank/b"]


# =============================================================================================
# LunFileDriver
# =============================================================================================

def test_lunfile_path():
    assert LunFileDriver.path("/vsnap/tank/lun1") == f"/vsnap/tank/lun1/{IMAGE_NAME}"


def test_lunfile_create_is_sparse_and_exact(tmp_path):
    size = 1 << 30  # 1 GiB: only sparse if nothing is written
    path = LunFileDriver().create(str(tmp_path), size)
    assert path == str(tmp_path / IMAGE_NAME)
    st = os.stat(path)
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20  # no data blocks allocated
    assert st.st_mode & 0o777 == 0o600
    assert LunFileDriver().size(str(tmp_path)) == size


def test_lunfile_create_refuses_to_overwrite(tmp_path):
    image = tmp_path / IMAGE_NAME
    image.write_bytes(b"precious data")
    with pytest.raises(FileExistsError):
        LunFileDriver().create(str(tmp_path), 1 << 20)
    assert image.read_bytes() == b"precious data"


def test_lunfile_resize_both_ways(tmp_path):
    lun = LunFileDriver()
    lun.create(str(tmp_path), 1 << 20)
    lun.resize(str(tmp_path), 3 << 20)
    assert lun.size(str(tmp_path)) == 3 << 20
    lun.resize(str(tmp_path), 2 << 20)
    assert os.stat(tmp_path / IMAGE_NAME).st_size == 2 << 20


def test_lunfile_size_of_missing_file_is_none(tmp_path):
    assert LunFileDriver().size(str(tmp_path)) is None
    assert LunFileDriver().size(str(tmp_path / "no-such-dir")) is None


def test_lunfile_resize_of_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        LunFileDriver().resize(str(tmp_path), 1 << 20)
    assert not (tmp_path / IMAGE_NAME).exists()  # never created by a resize


# -- resumable streams --------------------------------------------------------------------------

TOKEN = "1-e3b1d5f9a-c8-789c636064000310a500c4ec50360710e72765a5269740f80cd8e4d3d28a534b40"
RESUME_CONTENTS = """resume token contents:
nvlist version: 0
\tobject = 0x3
\toffset = 0x20000
\tbytes = 0x1f4000
\ttoguid = 0x6a3b5f1e2d4c8b97
\ttoname = tank/v@s1
full send of tank/v@s1 estimated size is 4.00M
"""


def test_receive_keeps_what_arrives_only_when_asked():
    assert ZfsDatasetOps.receive_argv("tank/v@s1", full=True) == ["zfs", "receive", "-F", "tank/v@s1"]
    assert ZfsDatasetOps.receive_argv("tank/v@s1", full=True, resumable=True) == \
        ["zfs", "receive", "-s", "-F", "tank/v@s1"]
    assert ZfsDatasetOps.receive_argv("tank/v@s2", full=False, resumable=True) == ["zfs", "receive", "-s", "tank/v@s2"]


def test_a_resumed_send_takes_only_a_well_formed_token():
    assert ZfsDatasetOps.send_resume_argv(TOKEN) == ["zfs", "send", "-t", TOKEN]
    for bad in ("", "-", "1-2-3", f"{TOKEN} x", f"{TOKEN};rm", "--help", "1-ABC-c8-789c"):
        with pytest.raises(ValueError):
            ZfsDatasetOps.send_resume_argv(bad)


def test_the_resume_token_of_a_dataset(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    argv = ["zfs", "get", "-H", "-o", "value", "receive_resume_token", "tank/v"]
    fake_runner.on(argv, stdout="-\n")
    assert ops.resume_token("tank/v") is None
    fake_runner.on(argv, stdout=f"{TOKEN}\n")
    assert ops.resume_token("tank/v") == TOKEN
    fake_runner.on(argv, stdout="1-x-y; not a token\n")
    assert ops.resume_token("tank/v") is None
    fake_runner.on(argv, returncode=1, stderr="bad property list: invalid property 'receive_resume_token'\n")
    assert ops.resume_token("tank/v") is None  # a ZFS without resumable receives


def test_dropping_a_partial_receive(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    fake_runner.on(["zfs", "receive", "-A", "tank/v"], returncode=1,
                   stderr="'tank/v' does not have any resumable receive state to abort\n")
    ops.abort_resumable("tank/v")  # nothing to drop: fine
    fake_runner.on(["zfs", "receive", "-A", "tank/v"], returncode=1, stderr="cannot open 'tank/v': I/O error\n")
    with pytest.raises(CommandError):
        ops.abort_resumable("tank/v")


def test_what_a_token_carries_is_read_by_this_sides_zfs(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    fake_runner.on(["zfs", "send", "-nv", "-t", TOKEN], stdout=RESUME_CONTENTS)
    assert ops.resume_target(TOKEN) == (str(0x6a3b5f1e2d4c8b97), 0x1f4000)
    fake_runner.on(["zfs", "send", "-nv", "-t", TOKEN], returncode=255,
                   stderr="cannot resume send: 'tank/v@s1' used in the initial send no longer exists\n")
    assert ops.resume_target(TOKEN) is None
    calls = len(fake_runner.calls)
    assert ops.resume_target("; rm -rf /") is None and len(fake_runner.calls) == calls  # never reaches zfs


# -- bookmarks and holds: what keeps an incremental possible (OpenZFS's messages, seen in the guest)

def test_bookmarks_of_a_dataset(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    argv = ["zfs", "list", "-H", "-p", "-t", "bookmark", "-d", "1", "-o", "name,guid,createtxg", "tank/v"]
    fake_runner.on(argv, stdout="tank/v#vsnap-repl-x-1\t1722298711007232351\t9\ntank/v#b\t5\t12\n")
    assert ops.bookmarks("tank/v") == {"vsnap-repl-x-1": ("1722298711007232351", 9), "b": ("5", 12)}
    fake_runner.on(argv, returncode=1, stderr="cannot open 'tank/v': dataset does not exist\n")
    assert ops.bookmarks("tank/v") == {}
    fake_runner.on(argv, returncode=1, stderr="cannot open 'tank/v': I/O error\n")
    with pytest.raises(CommandError):
        ops.bookmarks("tank/v")


def test_a_bookmark_made_twice_is_no_error_but_a_clash_is(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    make = ["zfs", "bookmark", "tank/v@s1", "tank/v#m"]
    listing = ["zfs", "list", "-H", "-p", "-t", "bookmark", "-d", "1", "-o", "name,guid,createtxg", "tank/v"]
    fake_runner.on(make, returncode=1, stderr="cannot create bookmark 'tank/v#m': bookmark exists\n")
    fake_runner.on(listing, stdout="tank/v#m\t5\t12\n")
    ops.bookmark("tank/v@s1", "tank/v#m")
    fake_runner.on(make, returncode=1, stderr="cannot create bookmark: snapshot does not exist\n")
    with pytest.raises(CommandError):
        ops.bookmark("tank/v@s1", "tank/v#m")


def test_destroying_a_bookmark_that_is_gone_is_no_error(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    fake_runner.on(["zfs", "destroy", "tank/v#m"], returncode=1, stderr="bookmark 'tank/v#m' does not exist.\n")
    ops.destroy_bookmark("tank/v#m")
    fake_runner.on(["zfs", "destroy", "tank/v#m"], returncode=1, stderr="I/O error\n")
    with pytest.raises(CommandError):
        ops.destroy_bookmark("tank/v#m")


def test_holds_taken_twice_or_released_twice_are_no_error(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    fake_runner.on(["zfs", "hold", "t", "tank/v@s1"], returncode=1,
                   stderr="cannot hold snapshot 'tank/v@s1': tag already exists on this dataset\n")
    ops.hold("t", "tank/v@s1")
    fake_runner.on(["zfs", "release", "t", "tank/v@s1"], returncode=1,
                   stderr="cannot release hold from snapshot 'tank/v@s1': no such tag on this dataset\n")
    ops.release("t", "tank/v@s1")
    fake_runner.on(["zfs", "hold", "t", "tank/v@s1"], returncode=1, stderr="cannot open 'tank/v@s1': I/O error\n")
    with pytest.raises(CommandError):
        ops.hold("t", "tank/v@s1")


def test_holds_listed_and_zfs_fuse_that_cannot_list_them(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    fake_runner.on(["zfs", "holds", "-H", "tank/v@s1"], stdout="tank/v@s1\tvsnap-repl-x\tSun Dec  6 01:33 2026\n")
    assert ops.holds("tank/v@s1") == ["vsnap-repl-x"]
    fake_runner.on(["zfs", "holds", "-H", "tank/v@s1"], returncode=2,
                   stderr="internal error: /usr/lib/zfs/pyzfs.py not found\n")
    assert ops.holds("tank/v@s1") == []


def test_a_numeric_property_of_each_snapshot(fake_runner):
    ops = ZfsDatasetOps(fake_runner, None)
    fake_runner.on(["zfs", "get", "-H", "-p", "-r", "-d", "1", "-o", "name,value", "userrefs", "tank/v"],
                   stdout="tank/v\t-\ntank/v@a\t1\ntank/v@b\t0\ntank/v#m\t-\n")
    assert ops.snapshot_numbers("tank/v", "userrefs") == {"a": 1, "b": 0}


# -- encryption: raw replicas received as new datasets, keys ------------------------------------

def test_receive_new_sets_its_properties_as_it_is_made_without_f_or_s():
    calls = []

    class Runner:
        def run(self, argv, **kw):
            calls.append((argv, kw))

    ds = ZfsDatasetOps(Runner(), FakeZfsDriver("2.1.11"))
    ds.receive_new("p/r@s1", stdin=5, props={"com.vsnap:vol_id": "7", "readonly": "on"})
    assert calls == [(["zfs", "receive", "-o", "com.vsnap:vol_id=7", "-o", "readonly=on", "p/r@s1"],
                      {"stdin": 5, "timeout": zfs_mod.NO_TIMEOUT})]


def test_mount_leaves_a_dataset_whose_key_is_not_loaded_unmounted(fake_runner):
    fake_runner.on(["zfs", "mount"], returncode=1, stderr="cannot mount 'p/r': encryption key not loaded\n")
    ZfsDatasetOps(fake_runner, FakeZfsDriver("2.1.11")).mount("p/r")  # no error
    fake_runner.on(["zfs", "mount"], returncode=1, stderr="cannot mount 'p/r': mountpoint not empty\n")
    with pytest.raises(CommandError):
        ZfsDatasetOps(fake_runner, FakeZfsDriver("2.1.11")).mount("p/r")


def test_encrypted_is_asked_only_where_zfs_has_encryption(fake_runner):
    zfs = FakeZfsDriver("2.1.11")
    zfs.has_encryption = False
    ds = ZfsDatasetOps(fake_runner, zfs)
    assert ds.encrypted("p/r") is False and fake_runner.calls == []  # zfs-fuse: no such property
    zfs.has_encryption = True
    fake_runner.on(GET, stdout="p/r\tencryption\taes-256-gcm\n")
    assert ds.encrypted("p/r") is True
    fake_runner.on(GET, stdout="p/r\tencryption\toff\n")
    assert ds.encrypted("p/r") is False
