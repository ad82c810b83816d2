"""iSCSI targets: what the appliance exports to which initiators.

Two drivers, chosen once at start-up by `choose_target_driver`: LIO through rtslib-fb where
the kernel has configfs target support (iscsi_lio.py), tgt (stgt) otherwise. Both take the
whole wanted configuration (`HostExport`s) and make the part of the target they own equal
to it, so a caller never branches on the platform and every call is idempotent.

Masking: a host sees exactly its own LUNs. LIO does this inside one target with a node ACL
per initiator and mapped LUNs per ACL. tgt has no masking inside a target, so there each
host gets a target of its own, bound to the host's initiators only.

The types both drivers share (HostExport, TargetDriver, ...) live in iscsi_base.py, which
both import (so iscsi_lio.py never imports this module); they are importable from here too.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field

from .iscsi_base import HostExport, LunExport, TargetDriver, TargetError, TargetPort, numbered
from .runner import CommandError, CommandNotFound, CommandTimeout, Runner

log = logging.getLogger(__name__)

CONFIGFS_TARGET = "/sys/kernel/config/target"
TGT_MAX_TID = 4096  # tgt's own limit on target ids is far higher; a sane bound for our search


class NoTargetDriver(TargetDriver):
    """Neither LIO nor tgt is on this machine: hosts can be kept, but nothing can be mapped."""

    name = "none"

    def apply(self, hosts: list[HostExport], refresh: frozenset[int] = frozenset()) -> None:
        if any(h.luns for h in hosts):
            raise TargetError("No iSCSI target (LIO or tgt) is installed on this appliance")

    def state(self) -> tuple:
        return ()

    def targets(self) -> list[TargetPort]:
        return []


# -- tgt --------------------------------------------------------------------------------------
@dataclass
class _TgtLun:
    lun: int
    path: str
    serial: str
    size_mb: int
    read_only: bool


@dataclass
class _TgtTarget:
    tid: int
    name: str
    luns: dict[int, _TgtLun] = field(default_factory=dict)
    acls: list[str] = field(default_factory=list)
    sessions: list[tuple[int, int, str]] = field(default_factory=list)  # (sid, cid, initiator)


_TARGET_LINE = re.compile(r"^Target (\d+): (\S+)$")
_NEXUS_LINE = re.compile(r"^I_T nexus: (\d+)$")
_INITIATOR_LINE = re.compile(r"^Initiator: (\S+)")
_CONNECTION_LINE = re.compile(r"^Connection: (\d+)$")
_LUN_LINE = re.compile(r"^LUN: (\d+)$")
_SIZE_LINE = re.compile(r"^Size: (\d+) MB")


def parse_tgt_show(text: str) -> list[_TgtTarget]:
    """`tgtadm --lld iscsi --op show --mode target` -> targets with their LUNs, ACLs and
    connections. Sections are told apart by their headers; indentation is not relied on."""
    targets: list[_TgtTarget] = []
    current: _TgtTarget | None = None
    section = None
    lun: _TgtLun | None = None
    nexus: int | None = None
    initiator = ""
    for raw in text.splitlines():
        line = raw.strip()
        m = _TARGET_LINE.match(raw)
        if m:
            current = _TgtTarget(int(m.group(1)), m.group(2))
            targets.append(current)
            section, lun, nexus = None, None, None
            continue
        if current is None or not line:
            continue
        if line in ("System information:", "I_T nexus information:", "LUN information:",
                    "Account information:", "ACL information:"):
            section = line
            continue
        if section == "I_T nexus information:":
            if m := _NEXUS_LINE.match(line):
                nexus, initiator = int(m.group(1)), ""
            elif m := _INITIATOR_LINE.match(line):
                initiator = m.group(1)
            elif (m := _CONNECTION_LINE.match(line)) and nexus is not None:
                current.sessions.append((nexus, int(m.group(1)), initiator))
        elif section == "LUN information:":
            if m := _LUN_LINE.match(line):
                lun = _TgtLun(int(m.group(1)), "", "", 0, False)
                current.luns[lun.lun] = lun
            elif lun is not None:
                key, _, value = line.partition(":")
                value = value.strip()
                if key == "SCSI SN":
                    lun.serial = value
                elif key == "Size" and (m := _SIZE_LINE.match(line)):
                    lun.size_mb = int(m.group(1))
                elif key == "Readonly":
                    lun.read_only = value.lower() == "yes"
                elif key == "Backing store path":
                    lun.path = "" if value == "None" else value
        elif section == "ACL information:":
            current.acls.append(line)
    return targets


def tgt_size_mb(size: int) -> int:
    """How tgt shows a size: decimal megabytes, rounded."""
    return round(size / 1_000_000)


class TgtDriver(TargetDriver):
    """tgt keeps its configuration in memory only; this driver owns the targets named
    `<base iqn>:host<id>`, one per host, bound to that host's initiators by name."""

    name = "tgt"
    first_lun = 1  # tgt puts its controller at LUN 0 of every target

    def __init__(self, runner: Runner, base_iqn: str):
        super().__init__(base_iqn)
        self.runner = runner

    # -- naming -------------------------------------------------------------------------------
    def target_name(self, host_id: int) -> str:
        return f"{self.base_iqn}:host{host_id}"

    def _host_id(self, name: str) -> int | None:
        return numbered(name, f"{self.base_iqn}:host")

    # -- reading ------------------------------------------------------------------------------
    def _tgtadm(self, *args: str) -> str:
        try:
            return self.runner.run(["tgtadm", "--lld", "iscsi", *args]).stdout
        except CommandError as exc:
            raise TargetError(f"tgtadm {' '.join(args[:4])}: {exc.reason}") from exc
        except (CommandTimeout, CommandNotFound) as exc:
            raise TargetError(f"tgt: {exc}") from exc

    def _all(self) -> list[_TgtTarget]:
        return parse_tgt_show(self._tgtadm("--op", "show", "--mode", "target"))

    def _owned(self, targets: list[_TgtTarget]) -> dict[int, _TgtTarget]:
        owned = {}
        for target in targets:
            host_id = self._host_id(target.name)
            if host_id is not None:
                owned[host_id] = target
        return owned

    def state(self) -> tuple:
        return tuple(sorted(
            (host_id, t.tid, tuple(sorted(t.acls)),
             tuple(sorted((lun.lun, lun.path, lun.serial, lun.size_mb, lun.read_only) for lun in t.luns.values())))
            for host_id, t in self._owned(self._all()).items()))

    def targets(self) -> list[TargetPort]:
        return [TargetPort(t.name, host_id) for host_id, t in sorted(self._owned(self._all()).items())]

    # -- changing -----------------------------------------------------------------------------
    def apply(self, hosts: list[HostExport], refresh: frozenset[int] = frozenset()) -> None:
        everything = self._all()
        owned = self._owned(everything)
        wanted = {h.host_id: h for h in hosts}
        used_tids = {t.tid for t in everything}
        for host_id, target in owned.items():
            if host_id not in wanted:
                self._delete_target(target)
                used_tids.discard(target.tid)
        for host in hosts:
            existing = owned.get(host.host_id)
            if existing is None:
                new = self._new_target(host.host_id, used_tids)
                used_tids.add(new.tid)
                # LUNs before ACLs: nobody can see a LUN before its serial is set.
                self._sync_luns(new, host, refresh)
                self._sync_acls(new, host)
            else:
                # ACLs first: an initiator that lost access must not see a new LUN.
                self._sync_acls(existing, host)
                self._sync_luns(existing, host, refresh)

    def _new_target(self, host_id: int, used_tids: set[int]) -> _TgtTarget:
        name = self.target_name(host_id)
        for tid in range(1, TGT_MAX_TID):
            if tid in used_tids:
                continue
            try:
                self._tgtadm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", name)
            except TargetError as exc:
                # Another appliance sharing this tgtd may have taken the id since we looked.
                if "exist" in str(exc):
                    used_tids.add(tid)
                    continue
                raise
            log.info("tgt: target %s (tid %s) created", name, tid)
            return _TgtTarget(tid, name, luns={0: _TgtLun(0, "", "", 0, False)})
        raise TargetError("tgt has no free target id")

    def _delete_target(self, target: _TgtTarget) -> None:
        # --force ends the sessions of initiators still logged in.
        self._tgtadm("--op", "delete", "--mode", "target", "--tid", str(target.tid), "--force")
        log.info("tgt: target %s (tid %s) deleted", target.name, target.tid)

    def _sync_acls(self, target: _TgtTarget, host: HostExport) -> None:
        tid = str(target.tid)
        for acl in target.acls:
            if acl not in host.initiators:
                # tgt lists address rules (-I: "ALL", an IP or subnet) with the initiator names
                # (-Q); an address rule bound by hand would let others in, so it goes too.
                kind = "-Q" if acl[:4].lower() in ("iqn.", "eui.", "naa.") else "-I"
                self._tgtadm("--op", "unbind", "--mode", "target", "--tid", tid, kind, acl)
        for initiator in host.initiators:
            if initiator not in target.acls:
                self._tgtadm("--op", "bind", "--mode", "target", "--tid", tid, "-Q", initiator)
        # tgt keeps a session open after its initiator is unbound: end it, so access
        # follows the ACL at once.
        for sid, cid, initiator in target.sessions:
            if initiator not in host.initiators:
                try:
                    self._tgtadm("--op", "delete", "--mode", "conn", "--tid", tid,
                                 "--sid", str(sid), "--cid", str(cid))
                except TargetError as exc:  # it may have logged out meanwhile
                    log.info("tgt: could not end session %s of %s: %s", sid, initiator, exc)

    def _sync_luns(self, target: _TgtTarget, host: HostExport, refresh: frozenset[int]) -> None:
        tid = str(target.tid)
        wanted = {lun.lun: lun for lun in host.luns}
        for number, have in target.luns.items():
            if number == 0:
                continue  # tgt's controller
            want = wanted.get(number)
            if want is None or want.volume_id in refresh or not _same_lun(have, want):
                self._tgtadm("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", str(number))
        for number, want in wanted.items():
            existing = target.luns.get(number)
            if existing is not None and want.volume_id not in refresh and _same_lun(existing, want):
                continue
            self._tgtadm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(number),
                         "-b", want.path)
            try:
                # tgt takes these only once the LUN exists.
                self._tgtadm("--op", "update", "--mode", "logicalunit", "--tid", tid, "--lun", str(number),
                             "--params", f"scsi_sn={want.serial},readonly={int(want.read_only)}")
            except TargetError:
                self._tgtadm("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", str(number))
                raise


def _same_lun(have: _TgtLun, want: LunExport) -> bool:
    # tgt shows sizes in rounded megabytes: a difference within that rounding is not a
    # change (a resize through the API re-creates the LUN through `refresh` anyway).
    return (have.path == want.path and have.serial == want.serial and have.read_only == want.read_only
            and abs(have.size_mb - tgt_size_mb(want.size)) <= 1)


def choose_target_driver(runner: Runner, base_iqn: str) -> TargetDriver:
    """LIO where the kernel offers configfs target support and rtslib-fb is installed, tgt
    where tgtadm is, otherwise a driver that refuses to map."""
    if os.path.isdir(CONFIGFS_TARGET):
        try:
            from .iscsi_lio import LioDriver
            return LioDriver(base_iqn, on_step=runner.step_done)
        except ImportError as exc:
            log.warning("configfs target support found, but rtslib-fb is missing (%s); using tgt", exc)
    if shutil.which("tgtadm"):
        return TgtDriver(runner, base_iqn)
    log.warning("no iSCSI target found (neither LIO configfs nor tgtadm): LUNs cannot be mapped")
    return NoTargetDriver(base_iqn)
