"""The tgt target driver (vsnap/drivers/iscsi.py): parse_tgt_show on real tgtadm output,
tgt_size_mb, _same_lun, NoTargetDriver, choose_target_driver, and TgtDriver.apply/state/targets
against a small in-memory tgtd that answers `--op show` from the state the commands left,
and refuses what the real tgt refuses. No tgtd is touched."""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

import vsnap.drivers.iscsi as iscsi_mod
from vsnap.drivers.iscsi import (
    HostExport,
    LunExport,
    NoTargetDriver,
    TargetError,
    TargetPort,
    TgtDriver,
    _same_lun,
    _TgtLun,
    choose_target_driver,
    parse_tgt_show,
    tgt_size_mb,
)
from vsnap.drivers.runner import CommandError, CommandNotFound, CommandTimeout, Result

BASE = "iqn.2026-11.local.vsnap:sys1"
TGTADM = ["tgtadm", "--lld", "iscsi"]
SHOW = ("--op", "show", "--mode", "target")
SERIAL_A = "68d65662-0bbf-4fd6-90f0-85a5d62df761"
SERIAL_B = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SERIAL_C = "11111111-2222-4333-8444-555555555555"
INI_1 = "iqn.1993-08.org.debian:01:client1"
INI_2 = "iqn.1993-08.org.debian:01:client2"
INI_3 = "iqn.1991-05.com.microsoft:win3"

# `tgtadm --lld iscsi --op show --mode target` as a real tgtd printed it.
REAL_SHOW = """\
Target 77: iqn.2026-11.local.probe:t1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2026-11.local.probe:client1 alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     004d0000
            SCSI SN: beaf770
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     004d0001
            SCSI SN: 68d65662-0bbf-4fd6-90f0-85a5d62df761
            Size: 10 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/tgtprobe/a.img
            Backing store flags: 
    Account information:
    ACL information:
        iqn.2026-11.local.probe:client1
"""


# =============================================================================================
# A small tgtd
# =============================================================================================

def tgt_disksize(size: int) -> int:
    """tgt's own print_disksize (usr/target.c): decimal megabytes, about rounded."""
    sectors = size // 512
    return (sectors - (sectors // 625 - 974)) // 1950


@dataclass
class SimLun:
    path: str
    serial: str
    size: int  # bytes, fixed when the LUN is made (tgt reads the size once)
    readonly: bool = False


@dataclass
class SimTarget:
    name: str
    luns: dict[int, SimLun] = field(default_factory=dict)
    acls: list[str] = field(default_factory=list)  # initiator names (-Q)
    addresses: list[str] = field(default_factory=list)  # address ACLs (-I), shown first
    sessions: list[tuple[int, int, str]] = field(default_factory=list)  # (sid, cid, initiator)


VALUED = {"--op", "--mode", "--tid", "-T", "--lun", "-b", "--params", "-Q", "-I", "--sid", "--cid"}
FLAGS = {"--force"}


class TgtSim:
    """Answers `tgtadm --lld iscsi ...` from in-memory state the way tgtd does: targets listed
    by tid, LUN 0 is the controller every target gets (it cannot be deleted), --params is
    refused on a new LUN, an ACL bound twice and a busy target are refused, unbinding does not
    end a session. Every call is recorded in the FakeRunner's calls; other commands go to it."""

    def __init__(self, base):
        self.base = base
        self.calls = base.calls
        self.targets: dict[int, SimTarget] = {}
        self.files: dict[str, int] = {}  # backing path -> size in bytes
        self.down = False
        self.timeout = False
        self.failures: list[tuple[tuple[str, ...], int, str]] = []  # (argv fragment, rc, stderr)
        self.after_show = None  # called once after the next show (a race with another process)
        self.next_sid = 1

    # -- test helpers ---------------------------------------------------------------------
    def add_target(self, tid: int, name: str) -> SimTarget:
        assert tid not in self.targets
        self.targets[tid] = SimTarget(name, {0: SimLun("", f"beaf{tid}0", 0)})
        return self.targets[tid]

    def login(self, tid: int, initiator: str) -> int:
        target = self.targets[tid]
        assert initiator in target.acls, "tgt refuses a login the ACLs do not allow"
        sid = self.next_sid
        self.next_sid += 1
        target.sessions.append((sid, 0, initiator))
        return sid

    def fail(self, fragment, stderr: str, rc: int = 22) -> None:
        """The next command containing `fragment` (a run of argv items) fails once."""
        self.failures.append((tuple(fragment), rc, stderr))

    def restart(self) -> None:
        """tgtd restarted: it forgets everything."""
        self.targets.clear()

    def commands(self) -> list[list[str]]:
        """The tgtadm commands run, without the `tgtadm --lld iscsi` prefix."""
        return [c["argv"][3:] for c in self.calls if c["argv"][:3] == TGTADM]

    def changes(self) -> list[list[str]]:
        return [c for c in self.commands() if tuple(c[:4]) != SHOW]

    def by_name(self, name: str) -> tuple[int, SimTarget]:
        (found,) = [(tid, t) for tid, t in self.targets.items() if t.name == name]
        return found

    def show(self) -> str:
        out = []
        for tid in sorted(self.targets):
            t = self.targets[tid]
            out += [f"Target {tid}: {t.name}", "    System information:", "        Driver: iscsi",
                    "        State: ready", "    I_T nexus information:"]
            for sid, cid, initiator in t.sessions:
                out += [f"        I_T nexus: {sid}", f"            Initiator: {initiator} alias: none",
                        f"            Connection: {cid}", "                IP Address: 127.0.0.1"]
            out.append("    LUN information:")
            for number in sorted(t.luns):
                lun = t.luns[number]
                controller = number == 0
                out += [f"        LUN: {number}",
                        f"            Type: {'controller' if controller else 'disk'}",
                        f"            SCSI ID: IET     {tid:04x}{number:04x}",
                        f"            SCSI SN: {lun.serial}",
                        f"            Size: {tgt_disksize(lun.size)} MB, Block size: {1 if controller else 512}",
                        "            Online: Yes", "            Removable media: No",
                        "            Prevent removal: No",
                        f"            Readonly: {'Yes' if lun.readonly else 'No'}",
                        "            SWP: No", "            Thin-provisioning: No",
                        f"            Backing store type: {'null' if controller else 'rdwr'}",
                        f"            Backing store path: {lun.path or 'None'}",
                        "            Backing store flags: "]
            out += ["    Account information:", "    ACL information:"]
            out += [f"        {a}" for a in t.addresses + t.acls]
        return "".join(line + "\n" for line in out)

    # -- the runner -----------------------------------------------------------------------
    def run(self, argv, *, check=True, input=None, timeout=None, env=None, changes=None):
        if argv[:3] != TGTADM:
            return self.base.run(argv, check=check, input=input, timeout=timeout, env=env)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        self.calls.append({"argv": list(argv), "check": check, "input": input, "timeout": timeout})
        if self.timeout:
            raise CommandTimeout(list(argv), 120)
        if self.down:
            return self._answer(argv, check, 107, "",
                                "tgtadm: failed to send request hdr to tgt daemon, Transport endpoint "
                                "is not connected\n")
        for i, (fragment, rc, stderr) in enumerate(self.failures):
            n = len(fragment)
            if any(tuple(argv[j:j + n]) == fragment for j in range(len(argv) - n + 1)):
                del self.failures[i]
                return self._answer(argv, check, rc, "", stderr)
        try:
            stdout = self._do(argv[3:])
        except _Refused as exc:
            return self._answer(argv, check, exc.rc, "", f"tgtadm: {exc.message}\n")
        return self._answer(argv, check, 0, stdout, "")

    @staticmethod
    def _answer(argv, check, rc, stdout, stderr):
        if check and rc:
            raise CommandError(list(argv), rc, stdout, stderr)
        return Result(list(argv), rc, stdout, stderr)

    def _do(self, args: list[str]) -> str:
        opts: dict[str, str] = {}
        i = 0
        while i < len(args):
            if args[i] in FLAGS:
                opts[args[i]] = ""
                i += 1
            elif args[i] in VALUED and i + 1 < len(args):
                assert args[i] not in opts, f"{args[i]} given twice: {args}"
                opts[args[i]] = args[i + 1]
                i += 2
            else:
                raise AssertionError(f"tgtadm does not take {args[i]!r} here: {args}")
        op, mode = opts.get("--op"), opts.get("--mode")
        if (op, mode) == ("show", "target"):
            assert set(opts) == {"--op", "--mode"}, args
            text = self.show()
            if self.after_show:
                hook, self.after_show = self.after_show, None
                hook()
            return text
        tid = int(opts["--tid"])
        target = self.targets.get(tid)
        if (op, mode) == ("new", "target"):
            assert set(opts) == {"--op", "--mode", "--tid", "-T"}, args
            if target is not None or any(t.name == opts["-T"] for t in self.targets.values()):
                raise _Refused("this target already exists")
            self.add_target(tid, opts["-T"])
            return ""
        if target is None:
            raise _Refused("can't find the target")
        if (op, mode) == ("delete", "target"):
            assert set(opts) <= {"--op", "--mode", "--tid", "--force"}, args
            if target.sessions and "--force" not in opts:
                raise _Refused("this target is still active")
            del self.targets[tid]
        elif (op, mode) == ("bind", "target"):
            if "-I" in opts:
                if opts["-I"] in target.addresses:
                    raise _Refused("this access control rule already exists")
                target.addresses.append(opts["-I"])
            else:
                if opts["-Q"] in target.acls:
                    raise _Refused("this access control rule already exists")
                target.acls.append(opts["-Q"])
        elif (op, mode) == ("unbind", "target"):
            kind, names = ("-I", target.addresses) if "-I" in opts else ("-Q", target.acls)
            if opts[kind] not in names:
                raise _Refused("this access control rule does not exist")
            names.remove(opts[kind])  # an open session of that initiator stays
        elif (op, mode) == ("delete", "conn"):
            sid, cid = int(opts["--sid"]), int(opts["--cid"])
            matching = [s for s in target.sessions if s[0] == sid and s[1] == cid]
            if not matching:
                raise _Refused("can't find the session")
            target.sessions.remove(matching[0])
        elif (op, mode) == ("new", "logicalunit"):
            if "--params" in opts:
                raise _Refused("unknown parameter")
            assert set(opts) == {"--op", "--mode", "--tid", "--lun", "-b"}, args
            number = int(opts["--lun"])
            if number in target.luns:
                raise _Refused("this logical unit number already exists")
            if opts["-b"] not in self.files:
                raise _Refused("invalid request")
            target.luns[number] = SimLun(opts["-b"], f"beaf{tid}{number}", self.files[opts["-b"]])
        elif (op, mode) == ("update", "logicalunit"):
            assert set(opts) == {"--op", "--mode", "--tid", "--lun", "--params"}, args
            lun = target.luns.get(int(opts["--lun"]))
            if lun is None:
                raise _Refused("can't find the logical unit")
            for item in opts["--params"].split(","):
                key, _, value = item.partition("=")
                if key == "scsi_sn":
                    lun.serial = value
                elif key == "readonly" and value in ("0", "1"):
                    lun.readonly = value == "1"
                else:
                    raise _Refused("unknown parameter")
        elif (op, mode) == ("delete", "logicalunit"):
            assert set(opts) == {"--op", "--mode", "--tid", "--lun"}, args
            number = int(opts["--lun"])
            if number == 0:
                raise _Refused("invalid request")  # the controller stays
            if number not in target.luns:
                raise _Refused("can't find the logical unit")
            del target.luns[number]  # allowed even while an initiator uses it
        else:
            raise AssertionError(f"unexpected tgtadm command: {args}")
        return ""


class _Refused(Exception):
    def __init__(self, message: str, rc: int = 22):
        super().__init__(message)
        self.message = message
        self.rc = rc


@pytest.fixture
def sim(fake_runner) -> TgtSim:
    s = TgtSim(fake_runner)
    s.files.update({"/dev/zvol/p/a": 10_000_000, "/dev/zvol/p/b": 20_000_000,
                    "/dev/zvol/p/c": 5 * 1024 ** 3, "/vsnap/p/fs/c.img": 1_000_000})
    return s


@pytest.fixture
def driver(sim) -> TgtDriver:
    return TgtDriver(sim, BASE)


def lun(number, volume_id, path="/dev/zvol/p/a", serial=SERIAL_A, size=10_000_000, read_only=False):
    return LunExport(number, volume_id, path, serial, size, read_only)


def host(host_id, initiators=(), luns=()):
    return HostExport(host_id, tuple(initiators), tuple(luns))


def foreign_snapshot(sim: TgtSim, tids) -> dict:
    return {tid: repr(sim.targets[tid]) for tid in tids}


# =============================================================================================
# The simulator against the real output (so that what follows is tested against tgt itself)
# =============================================================================================

def test_simulator_prints_what_real_tgt_printed(fake_runner):
    s = TgtSim(fake_runner)
    s.files["/tmp/tgtprobe/a.img"] = 10_000_000
    t = s.add_target(77, "iqn.2026-11.local.probe:t1")
    t.luns[1] = SimLun("/tmp/tgtprobe/a.img", SERIAL_A, 10_000_000)
    t.acls.append("iqn.2026-11.local.probe:client1")
    t.sessions.append((3, 0, "iqn.2026-11.local.probe:client1"))
    assert s.show() == REAL_SHOW


@pytest.mark.parametrize("size, shown", [(10_499_999, 10), (10_999_999, 11), (0, 0), (10_000_000, 10)])
def test_simulator_sizes_as_tgt(size, shown):
    assert tgt_disksize(size) == shown


# =============================================================================================
# parse_tgt_show
# =============================================================================================

def test_parse_real_output():
    (t,) = parse_tgt_show(REAL_SHOW)
    assert (t.tid, t.name) == (77, "iqn.2026-11.local.probe:t1")
    assert t.acls == ["iqn.2026-11.local.probe:client1"]
    assert t.sessions == [(3, 0, "iqn.2026-11.local.probe:client1")]
    assert sorted(t.luns) == [0, 1]
    assert t.luns[0] == _TgtLun(0, "", "beaf770", 0, False)
    assert t.luns[1] == _TgtLun(1, "/tmp/tgtprobe/a.img", SERIAL_A, 10, False)


SECOND = """\
Target 78: iqn.2026-11.local.probe:t2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 5
            Initiator: iqn.1993-08.org.debian:01:aa alias: host-a
            Connection: 0
                IP Address: 10.0.0.5
            Connection: 1
                IP Address: 10.0.1.5
        I_T nexus: 9
            Initiator: eui.02004567A425678D alias: none
            Connection: 2
                IP Address: 10.0.0.6
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     004e0000
            SCSI SN: beaf780
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 4
            Type: disk
            SCSI ID: IET     004e0004
            SCSI SN: ro-serial
            Size: 5369 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: Yes
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /vsnap/p/my fs:1/c.img
            Backing store flags: 
    Account information:
        chapuser
        mutual (outgoing)
    ACL information:
        iqn.1993-08.org.debian:01:aa
        eui.02004567A425678D
Target 79: iqn.2026-11.local.probe:t3
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     004f0000
            SCSI SN: beaf790
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
    Account information:
    ACL information:
"""


def test_parse_several_targets_keeps_each_apart():
    t1, t2, t3 = parse_tgt_show(REAL_SHOW + SECOND)
    assert [t.tid for t in (t1, t2, t3)] == [77, 78, 79]
    assert [t.name for t in (t1, t2, t3)] == ["iqn.2026-11.local.probe:t1", "iqn.2026-11.local.probe:t2",
                                              "iqn.2026-11.local.probe:t3"]
    # Nothing of one target leaks into the next.
    assert t1.acls == ["iqn.2026-11.local.probe:client1"]
    assert t1.sessions == [(3, 0, "iqn.2026-11.local.probe:client1")]
    assert sorted(t1.luns) == [0, 1]
    # Account users are not ACLs; address and name ACLs are listed in tgt's order.
    assert t2.acls == ["iqn.1993-08.org.debian:01:aa", "eui.02004567A425678D"]
    # One entry per connection, each with its session's initiator.
    assert t2.sessions == [(5, 0, "iqn.1993-08.org.debian:01:aa"), (5, 1, "iqn.1993-08.org.debian:01:aa"),
                           (9, 2, "eui.02004567A425678D")]
    assert sorted(t2.luns) == [0, 4]
    assert t2.luns[4] == _TgtLun(4, "/vsnap/p/my fs:1/c.img", "ro-serial", 5369, True)
    assert (t3.acls, t3.sessions, sorted(t3.luns)) == ([], [], [0])


@pytest.mark.parametrize("text", ["", "\n", "   \n\n"])
def test_parse_empty_output(text):
    assert parse_tgt_show(text) == []


def test_parse_ignores_lines_before_the_first_target():
    (t,) = parse_tgt_show("garbage: 1\n    ACL information:\n        x\n" + REAL_SHOW)
    assert t.tid == 77 and t.acls == ["iqn.2026-11.local.probe:client1"]


def test_parse_indented_target_word_is_not_a_target():
    # Only an unindented "Target N: name" starts a target.
    text = REAL_SHOW.replace("    Account information:\n", "    Account information:\n        Target 5: x\n")
    assert [t.tid for t in parse_tgt_show(text)] == [77]


# =============================================================================================
# tgt_size_mb and _same_lun
# =============================================================================================

@pytest.mark.parametrize("size, mb", [(10_499_999, 10), (10_999_999, 11), (10_000_000, 10), (0, 0),
                                      (999_999, 1), (499_999, 0), (1 << 30, 1074)])
def test_tgt_size_mb(size, mb):
    assert tgt_size_mb(size) == mb


@pytest.mark.parametrize("size", [0, 1, 511, 512, 499_999, 500_000, 500_001, 10_499_999, 10_500_000,
                                  10_999_999, 1 << 20, 1 << 30, 5 * 10 ** 9 + 499_999, 5 * 10 ** 9 + 500_000,
                                  (1 << 40) + 12345, 17 * 1024 ** 4])
def test_an_unchanged_lun_never_looks_changed(size):
    # What tgt shows for a size and what the driver expects for it are never more than
    # the tolerance apart, so no LUN is re-created for nothing on each apply.
    have = _TgtLun(1, "/p", "s", tgt_disksize(size), False)
    assert _same_lun(have, LunExport(1, 7, "/p", "s", size))


def test_same_lun_compares_path_serial_read_only_and_size():
    have = _TgtLun(1, "/dev/zvol/p/a", SERIAL_A, 10, False)
    assert _same_lun(have, lun(1, 7))
    assert _same_lun(have, lun(1, 7, size=11_000_000))  # within tgt's rounding
    assert _same_lun(have, lun(1, 7, size=9_000_000))
    assert not _same_lun(have, lun(1, 7, size=12_000_000))
    assert not _same_lun(have, lun(1, 7, size=8_000_000))
    assert not _same_lun(have, lun(1, 7, path="/dev/zvol/p/b"))
    assert not _same_lun(have, lun(1, 7, serial=SERIAL_B))
    assert not _same_lun(have, lun(1, 7, read_only=True))
    assert _same_lun(_TgtLun(1, "/dev/zvol/p/a", SERIAL_A, 10, True), lun(1, 7, read_only=True))


# =============================================================================================
# TgtDriver: naming
# =============================================================================================

def test_target_name_and_first_lun(driver):
    assert driver.target_name(12) == f"{BASE}:host12"
    assert driver.first_lun == 1  # LUN 0 is tgt's controller
    assert driver.name == "tgt"


@pytest.mark.parametrize("name, host_id", [
    (f"{BASE}:host1", 1), (f"{BASE}:host0", 0), (f"{BASE}:host4096", 4096),
    (f"{BASE}:host01", None), (f"{BASE}:host1x", None), (f"{BASE}:host", None), (f"{BASE}:host-1", None),
    (f"{BASE}:host 1", None), (f"{BASE}:Host1", None), (f"{BASE}host1", None), (f"{BASE}:x:host1", None),
    ("iqn.2026-11.local.vsnap:sys10:host1", None), ("iqn.2026-11.local.vsnap:sys:host1", None),
    ("iqn.2026-11.local.vsnap:other:host1", None), ("iqn.2003-01.org.linux-iscsi:disk", None),
    (f"{BASE}:host\u0661", None),  # an Arabic-Indic digit one
])
def test_owned_names(driver, name, host_id):
    assert driver._host_id(name) == host_id


def test_a_foreign_name_with_a_superscript_digit_is_left_alone(driver, sim):
    sim.add_target(1, f"{BASE}:host\u00b2")
    assert driver.state() == ()
    driver.apply([])
    assert 1 in sim.targets


# =============================================================================================
# TgtDriver.apply: creating
# =============================================================================================

def two_hosts():
    return [host(5, [INI_1], [lun(1, 10), lun(2, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000)]),
            host(9, [INI_2, INI_3], [lun(1, 12, "/dev/zvol/p/c", SERIAL_C, 5 * 1024 ** 3, read_only=True)])]


def test_first_apply_creates_one_target_per_host_at_the_lowest_free_tids(sim, driver):
    sim.add_target(1, "iqn.2003-01.org.linux-iscsi:disk")  # not ours
    sim.add_target(3, "iqn.2026-11.local.vsnap:other:host5")  # another appliance's
    before = foreign_snapshot(sim, [1, 3])
    driver.apply(two_hosts())
    assert sorted(sim.targets) == [1, 2, 3, 4]
    assert sim.targets[2].name == f"{BASE}:host5"
    assert sim.targets[4].name == f"{BASE}:host9"
    t5, t9 = sim.targets[2], sim.targets[4]
    assert t5.acls == [INI_1]
    assert t9.acls == [INI_2, INI_3]
    assert sorted(t5.luns) == [0, 1, 2] and sorted(t9.luns) == [0, 1]
    assert t5.luns[1] == SimLun("/dev/zvol/p/a", SERIAL_A, 10_000_000, False)
    assert t5.luns[2] == SimLun("/dev/zvol/p/b", SERIAL_B, 20_000_000, False)
    assert t9.luns[1] == SimLun("/dev/zvol/p/c", SERIAL_C, 5 * 1024 ** 3, True)
    assert t5.luns[0].path == "" and t5.luns[0].serial == "beaf20"  # the controller, untouched
    assert foreign_snapshot(sim, [1, 3]) == before
    # Nothing but the two new targets was changed.
    assert all(c[c.index("--tid") + 1] in ("2", "4") for c in sim.changes())


def test_new_target_gets_luns_before_acls_and_serial_through_update(sim, driver):
    driver.apply([host(5, [INI_1, INI_2], [lun(1, 10), lun(3, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000,
                                                              read_only=True)])])
    assert sim.changes() == [
        ["--op", "new", "--mode", "target", "--tid", "1", "-T", f"{BASE}:host5"],
        ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", "/dev/zvol/p/a"],
        ["--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
         "--params", f"scsi_sn={SERIAL_A},readonly=0"],
        ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "3", "-b", "/dev/zvol/p/b"],
        ["--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "3",
         "--params", f"scsi_sn={SERIAL_B},readonly=1"],
        ["--op", "bind", "--mode", "target", "--tid", "1", "-Q", INI_1],
        ["--op", "bind", "--mode", "target", "--tid", "1", "-Q", INI_2],
    ]
    assert sim.commands()[0] == list(SHOW)


def test_host_without_initiators_or_luns_gets_an_empty_target(sim, driver):
    driver.apply([host(3)])
    tid, t = sim.by_name(f"{BASE}:host3")
    assert (t.acls, sorted(t.luns)) == ([], [0])


def test_second_identical_apply_changes_nothing(sim, driver):
    driver.apply(two_hosts())
    sim.login(sim.by_name(f"{BASE}:host5")[0], INI_1)
    sim.calls.clear()
    driver.apply(two_hosts())
    assert sim.changes() == []
    assert sim.commands() == [list(SHOW)]


def test_apply_with_nothing_wanted_on_an_empty_tgt(sim, driver):
    driver.apply([])
    assert sim.changes() == [] and sim.targets == {}


def test_tids_of_foreign_targets_are_skipped(sim, driver):
    sim.add_target(2, "iqn.2003-01.org.other:a")
    driver.apply([host(1), host(2), host(3)])
    assert {t.name: tid for tid, t in sim.targets.items()} == {
        "iqn.2003-01.org.other:a": 2, f"{BASE}:host1": 1, f"{BASE}:host2": 3, f"{BASE}:host3": 4}


# =============================================================================================
# removing, and what is not ours
# =============================================================================================

def test_removed_host_target_is_deleted_with_force_even_with_a_session(sim, driver):
    driver.apply(two_hosts())
    tid9, _ = sim.by_name(f"{BASE}:host9")
    tid5, t5 = sim.by_name(f"{BASE}:host5")
    sim.login(tid9, INI_2)
    kept = repr(t5)
    sim.calls.clear()
    driver.apply(two_hosts()[:1])
    assert sim.changes() == [["--op", "delete", "--mode", "target", "--tid", str(tid9), "--force"]]
    assert tid9 not in sim.targets
    assert repr(sim.targets[tid5]) == kept


def test_freed_tid_is_reused_in_the_same_apply(sim, driver):
    driver.apply([host(1), host(2)])
    assert sim.by_name(f"{BASE}:host1")[0] == 1
    driver.apply([host(2), host(3)])
    assert sim.by_name(f"{BASE}:host3")[0] == 1
    assert sim.by_name(f"{BASE}:host2")[0] == 2


FOREIGN = ["iqn.2003-01.org.linux-iscsi:disk", "iqn.2026-11.local.vsnap:other:host1",
           f"{BASE}:host1x", f"{BASE}:host01", f"{BASE}:host", f"{BASE}host1",
           "iqn.2026-11.local.vsnap:sys10:host1", f"{BASE}:hosts"]


def test_foreign_targets_are_never_touched(sim, driver):
    for tid, name in enumerate(FOREIGN, start=10):
        t = sim.add_target(tid, name)
        sim.files[f"/data/{tid}.img"] = 3_000_000
        t.luns[1] = SimLun(f"/data/{tid}.img", f"sn{tid}", 3_000_000)
        t.acls.append(INI_1)  # even an initiator that is one of our hosts'
        sim.login(tid, INI_1)
    before = foreign_snapshot(sim, sim.targets)
    driver.apply([host(1, [INI_2], [lun(1, 10)])])  # host 1 is ours; "...:host01" is not it
    driver.apply([host(1, [INI_3], [lun(2, 10)])])
    driver.apply([])
    assert foreign_snapshot(sim, range(10, 10 + len(FOREIGN))) == before
    assert sorted(sim.targets) == list(range(10, 10 + len(FOREIGN)))
    touched = {c[c.index("--tid") + 1] for c in sim.changes()}
    assert touched == {"1"}  # host 1's own target, the lowest free tid
    assert driver.state() == () and driver.targets() == []


# =============================================================================================
# ACLs and sessions
# =============================================================================================

def test_acl_changes_bind_unbind_and_end_sessions_of_removed_initiators(sim, driver):
    driver.apply([host(4, [INI_1, INI_2], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sid1 = sim.login(tid, INI_1)
    sid2 = sim.login(tid, INI_2)
    sim.calls.clear()
    driver.apply([host(4, [INI_2, INI_3], [lun(1, 10)])])
    assert sim.changes() == [
        ["--op", "unbind", "--mode", "target", "--tid", str(tid), "-Q", INI_1],
        ["--op", "bind", "--mode", "target", "--tid", str(tid), "-Q", INI_3],
        ["--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", str(sid1), "--cid", "0"],
    ]
    assert sorted(t.acls) == sorted([INI_2, INI_3])
    assert t.sessions == [(sid2, 0, INI_2)]


def test_acls_change_before_luns_on_an_existing_target(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    sim.calls.clear()
    driver.apply([host(4, [INI_2], [lun(1, 10), lun(2, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000)])])
    ops = [(c[1], c[3]) for c in sim.changes()]
    assert ops == [("unbind", "target"), ("bind", "target"), ("new", "logicalunit"),
                   ("update", "logicalunit")]


def test_session_that_ended_meanwhile_does_not_fail_the_apply(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sim.login(tid, INI_1)
    sim.fail(["--mode", "conn"], "tgtadm: can't find the session\n")
    driver.apply([host(4, [], [lun(1, 10)])])
    assert t.acls == []
    assert [c[1:4:2] for c in sim.changes()][-1] == ["delete", "conn"]


def test_session_of_an_initiator_already_unbound_is_ended(sim, driver):
    # An earlier apply unbound it but could not end its session: the next one does.
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sid = sim.login(tid, INI_1)
    t.acls.remove(INI_1)
    sim.calls.clear()
    driver.apply([host(4, [], [lun(1, 10)])])
    assert sim.changes() == [["--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", str(sid),
                              "--cid", "0"]]
    assert t.sessions == []


def test_an_address_acl_bound_by_hand_is_removed(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    t.addresses.append("ALL")  # tgtadm --op bind --mode target --tid N -I ALL
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    assert t.addresses == [] and t.acls == [INI_1]


# =============================================================================================
# LUN changes
# =============================================================================================

def _lun_ops(sim, number):
    return [c[1] for c in sim.changes() if c[3] == "logicalunit" and c[c.index("--lun") + 1] == str(number)]


@pytest.mark.parametrize("change", [
    {"path": "/dev/zvol/p/b", "size": 20_000_000},
    {"serial": SERIAL_B},
    {"read_only": True},
])
def test_changed_lun_is_recreated(sim, driver, change):
    driver.apply([host(4, [INI_1], [lun(1, 10), lun(2, 11, "/dev/zvol/p/c", SERIAL_C, 5 * 1024 ** 3)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sim.calls.clear()
    wanted = lun(1, 10, **change)
    driver.apply([host(4, [INI_1], [wanted, lun(2, 11, "/dev/zvol/p/c", SERIAL_C, 5 * 1024 ** 3)])])
    assert _lun_ops(sim, 1) == ["delete", "new", "update"]
    assert _lun_ops(sim, 2) == []
    assert t.luns[1] == SimLun(wanted.path, wanted.serial, sim.files[wanted.path], wanted.read_only)
    assert sim.changes()[-1][-1] == f"scsi_sn={wanted.serial},readonly={int(wanted.read_only)}"


def test_refresh_recreates_only_the_luns_of_those_volumes(sim, driver):
    hosts = [host(4, [INI_1], [lun(1, 10), lun(2, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000)]),
             host(6, [INI_2], [lun(1, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000)])]
    driver.apply(hosts)
    sim.calls.clear()
    driver.apply(hosts, refresh=frozenset({11}))
    changed = [(c[c.index("--tid") + 1], c[c.index("--lun") + 1], c[1]) for c in sim.changes()]
    tid4, tid6 = sim.by_name(f"{BASE}:host4")[0], sim.by_name(f"{BASE}:host6")[0]
    assert changed == [(str(tid4), "2", "delete"), (str(tid4), "2", "new"), (str(tid4), "2", "update"),
                       (str(tid6), "1", "delete"), (str(tid6), "1", "new"), (str(tid6), "1", "update")]
    sim.calls.clear()
    driver.apply(hosts, refresh=frozenset({99}))
    assert sim.changes() == []


def test_refresh_picks_up_the_new_size(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sim.files["/dev/zvol/p/a"] = 10_600_000  # grown; tgt still shows the size it read at creation
    sim.calls.clear()
    driver.apply([host(4, [INI_1], [lun(1, 10, size=10_600_000)])])
    assert sim.changes() == [] and t.luns[1].size == 10_000_000  # within the rounding: no change
    driver.apply([host(4, [INI_1], [lun(1, 10, size=10_600_000)])], refresh=frozenset({10}))
    assert t.luns[1].size == 10_600_000


def test_size_beyond_the_rounding_recreates(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sim.files["/dev/zvol/p/a"] = 12_500_000
    sim.calls.clear()
    driver.apply([host(4, [INI_1], [lun(1, 10, size=12_500_000)])])
    assert _lun_ops(sim, 1) == ["delete", "new", "update"]
    assert t.luns[1].size == 12_500_000


def test_unmapped_lun_is_deleted_even_in_use_and_lun0_never(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10), lun(2, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sim.login(tid, INI_1)
    sim.calls.clear()
    driver.apply([host(4, [INI_1], [lun(2, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000)])])
    assert sim.changes() == [["--op", "delete", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1"]]
    assert sorted(t.luns) == [0, 2]
    driver.apply([host(4, [INI_1])])
    assert sorted(t.luns) == [0]
    assert not any(c[3] == "logicalunit" and c[c.index("--lun") + 1] == "0" for c in sim.changes())


def test_lun_moved_to_another_number(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    driver.apply([host(4, [INI_1], [lun(5, 10)])])
    assert sorted(t.luns) == [0, 5]
    assert t.luns[5].serial == SERIAL_A


def test_luns_added_by_hand_to_an_owned_target_are_removed(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    t.luns[7] = SimLun("/dev/zvol/p/b", "x", 20_000_000)
    t.acls.append(INI_3)
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    assert sorted(t.luns) == [0, 1] and t.acls == [INI_1]


# =============================================================================================
# failures
# =============================================================================================

def test_tid_taken_meanwhile_moves_on_to_the_next(sim, driver):
    # Another process sharing tgtd takes tid 1 between our show and our new.
    sim.after_show = lambda: sim.add_target(1, "iqn.2003-01.org.other:raced")
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    assert sim.targets[1].name == "iqn.2003-01.org.other:raced"
    assert sim.targets[2].name == f"{BASE}:host4"
    assert sim.targets[2].acls == [INI_1] and sorted(sim.targets[2].luns) == [0, 1]
    news = [c for c in sim.changes() if c[1:4:2] == ["new", "target"]]
    assert [c[5] for c in news] == ["1", "2"]
    assert sim.targets[1].luns.keys() == {0}  # nothing of ours went into the raced target


def test_other_failure_creating_a_target_is_a_target_error_without_retry(sim, driver):
    sim.fail(["--op", "new", "--mode", "target"], "tgtadm: out of memory\n")
    with pytest.raises(TargetError, match="out of memory"):
        driver.apply([host(4, [INI_1], [lun(1, 10)])])
    assert len([c for c in sim.changes() if c[1:4:2] == ["new", "target"]]) == 1
    assert sim.targets == {}


def test_no_free_tid(sim, driver, monkeypatch):
    monkeypatch.setattr(iscsi_mod, "TGT_MAX_TID", 4)
    for tid in (1, 2, 3):
        sim.add_target(tid, f"iqn.2003-01.org.other:t{tid}")
    with pytest.raises(TargetError, match="no free target id"):
        driver.apply([host(4)])
    assert sim.changes() == []


def test_failing_serial_update_deletes_the_half_made_lun(sim, driver):
    driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    sim.fail(["--op", "update", "--mode", "logicalunit"], "tgtadm: invalid request\n")
    with pytest.raises(TargetError, match="invalid request"):
        driver.apply([host(4, [INI_1], [lun(1, 10), lun(2, 11, "/dev/zvol/p/b", SERIAL_B, 20_000_000)])])
    assert sorted(t.luns) == [0, 1]  # LUN 2 (with tgt's default serial) is gone again
    assert sim.changes()[-1] == ["--op", "delete", "--mode", "logicalunit", "--tid", str(tid), "--lun", "2"]


def test_failing_serial_update_on_a_new_target(sim, driver):
    sim.fail(["--op", "update"], "tgtadm: invalid request\n")
    with pytest.raises(TargetError):
        driver.apply([host(4, [INI_1], [lun(1, 10)])])
    tid, t = sim.by_name(f"{BASE}:host4")
    assert sorted(t.luns) == [0]
    assert t.acls == []  # LUNs come first: the initiator was never let in


def test_missing_backing_file_is_a_target_error(sim, driver):
    with pytest.raises(TargetError, match="invalid request"):
        driver.apply([host(4, [INI_1], [lun(1, 10, path="/nowhere")])])


def test_tgtd_not_running(sim, driver):
    sim.down = True
    for call in (lambda: driver.apply([host(1)]), driver.state, driver.targets):
        with pytest.raises(TargetError, match="failed to send request hdr to tgt daemon") as info:
            call()
        assert isinstance(info.value.__cause__, CommandError)
        assert info.value.__cause__.returncode == 107


def test_tgtadm_timeout(sim, driver):
    sim.timeout = True
    for call in (lambda: driver.apply([host(1)]), driver.state, driver.targets):
        with pytest.raises(TargetError, match="did not finish"):
            call()


def test_tgtadm_not_installed(fake_runner):
    fake_runner.on(["tgtadm"], raises=CommandNotFound(["tgtadm"]))
    driver = TgtDriver(fake_runner, BASE)
    with pytest.raises(TargetError, match="not installed"):
        driver.state()


def test_error_message_names_the_operation(sim, driver):
    sim.fail(["--op", "bind"], "tgtadm: this access control rule already exists\n")
    with pytest.raises(TargetError) as info:
        driver.apply([host(4, [INI_1])])
    assert str(info.value) == ("tgtadm --op bind --mode target: "
                               "tgtadm: this access control rule already exists")


def test_targets_deleted_before_a_later_failure_stay_deleted(sim, driver):
    driver.apply([host(1), host(2)])
    sim.fail(["--op", "new", "--mode", "target"], "tgtadm: out of memory\n")
    with pytest.raises(TargetError):
        driver.apply([host(2), host(3)])
    assert [t.name for t in sim.targets.values()] == [f"{BASE}:host2"]
    driver.apply([host(2), host(3)])  # the next apply finishes the job
    assert sorted(t.name for t in sim.targets.values()) == [f"{BASE}:host2", f"{BASE}:host3"]


# =============================================================================================
# state() and targets()
# =============================================================================================

def test_state_equal_after_identical_applies(sim, driver):
    driver.apply(two_hosts())
    first = driver.state()
    driver.apply(two_hosts())
    assert driver.state() == first
    assert first != ()


def test_state_ignores_sessions_and_foreign_targets(sim, driver):
    driver.apply(two_hosts())
    first = driver.state()
    sim.login(sim.by_name(f"{BASE}:host5")[0], INI_1)
    sim.add_target(40, "iqn.2003-01.org.other:new")
    assert driver.state() == first


@pytest.mark.parametrize("change", ["acl", "lun", "host", "restart", "serial", "readonly", "path"])
def test_state_differs_after_changes(sim, driver, change):
    driver.apply(two_hosts())
    first = driver.state()
    tid, t = sim.by_name(f"{BASE}:host5")
    if change == "acl":
        t.acls.append(INI_3)
    elif change == "lun":
        del t.luns[2]
    elif change == "host":
        del sim.targets[tid]
    elif change == "restart":
        sim.restart()
    elif change == "serial":
        t.luns[1].serial = "beaf21"
    elif change == "readonly":
        t.luns[1].readonly = True
    elif change == "path":
        t.luns[1].path = "/dev/zvol/p/b"
    assert driver.state() != first


def test_state_differs_when_a_host_moves_tid(sim, driver):
    driver.apply([host(1)])
    first = driver.state()
    sim.restart()
    sim.add_target(1, "iqn.2003-01.org.other:x")
    driver.apply([host(1)])
    assert driver.state() != first


def test_targets_lists_owned_targets_by_host_id(sim, driver):
    sim.add_target(1, "iqn.2003-01.org.other:x")
    sim.add_target(2, f"{BASE}:host01")
    driver.apply([host(12), host(3), host(7)])
    assert driver.targets() == [TargetPort(f"{BASE}:host3", 3), TargetPort(f"{BASE}:host7", 7),
                                TargetPort(f"{BASE}:host12", 12)]
    sim.restart()
    assert driver.targets() == []


# =============================================================================================
# NoTargetDriver and choose_target_driver
# =============================================================================================

def test_no_target_driver():
    d = NoTargetDriver(BASE)
    d.apply([])
    d.apply([host(1, [INI_1])])  # hosts without LUNs can be kept
    with pytest.raises(TargetError, match="No iSCSI target"):
        d.apply([host(1, [INI_1]), host(2, [], [lun(1, 10)])])
    assert d.state() == () and d.targets() == []
    assert d.name == "none" and d.first_lun == 0 and d.base_iqn == BASE


@pytest.fixture
def platform(monkeypatch):
    """Which of configfs target support and tgtadm this 'machine' has."""
    have = {"configfs": False, "tgtadm": False}
    real_isdir = iscsi_mod.os.path.isdir
    monkeypatch.setattr(iscsi_mod.os.path, "isdir",
                        lambda p: have["configfs"] if p == iscsi_mod.CONFIGFS_TARGET else real_isdir(p))
    monkeypatch.setattr(iscsi_mod.shutil, "which",
                        lambda name: "/usr/sbin/tgtadm" if name == "tgtadm" and have["tgtadm"] else None)
    return have


def test_choose_tgt(platform, fake_runner):
    platform["tgtadm"] = True
    d = choose_target_driver(fake_runner, BASE)
    assert isinstance(d, TgtDriver) and d.runner is fake_runner and d.base_iqn == BASE


def test_choose_nothing(platform, fake_runner):
    d = choose_target_driver(fake_runner, BASE)
    assert type(d) is NoTargetDriver and d.base_iqn == BASE


def test_choose_lio_where_configfs_and_rtslib_are(platform, fake_runner, monkeypatch):
    class FakeLio:
        def __init__(self, base_iqn, on_step=None):
            self.base_iqn = base_iqn
            self.on_step = on_step
    module = types.ModuleType("vsnap.drivers.iscsi_lio")
    module.LioDriver = FakeLio
    monkeypatch.setitem(sys.modules, "vsnap.drivers.iscsi_lio", module)
    platform.update(configfs=True, tgtadm=True)
    d = choose_target_driver(fake_runner, BASE)
    assert isinstance(d, FakeLio) and d.base_iqn == BASE
    d.on_step("LIO: made a LUN")  # configfs changes are the runner's steps (the crash tests' kill points)
    assert fake_runner.steps == ["LIO: made a LUN"]


def test_choose_tgt_when_rtslib_is_missing(platform, fake_runner, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "vsnap.drivers.iscsi_lio", None)  # import fails
    platform.update(configfs=True, tgtadm=True)
    with caplog.at_level("WARNING", logger="vsnap.drivers.iscsi"):
        d = choose_target_driver(fake_runner, BASE)
    assert isinstance(d, TgtDriver)
    assert "rtslib-fb is missing" in caplog.text
    platform["tgtadm"] = False
    assert type(choose_target_driver(fake_runner, BASE)) is NoTargetDriver
