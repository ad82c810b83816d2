"""LIO, the Linux kernel iSCSI target, driven through rtslib-fb.

The appliance owns exactly two kinds of things in the LIO configuration, and nothing else is
ever changed or deleted:

* the iSCSI target named `base_iqn` (with everything inside it), and
* the storage objects (backstores) named `vsnap-<tag>-<volume id>`, where <tag> is derived
  from `base_iqn`, so two appliances sharing a kernel (or a restored saveconfig.json from
  another machine) never take each other's objects.

Masking: one target, TPG 1, no demo mode. Each initiator gets a node ACL; each LUN a host
sees is a mapped LUN in that host's ACLs, pointing at the TPG LUN of the volume. A volume
has one storage object and one TPG LUN however many hosts see it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .iscsi_base import HostExport, LunExport, TargetDriver, TargetError, TargetPort, numbered

log = logging.getLogger(__name__)

FABRIC = "iscsi"
TPG_TAG = 1
PORTAL = ("0.0.0.0", 3260)
# No demo mode: only initiators with a node ACL log in, and they see their mapped LUNs only.
TPG_ATTRIBUTES = {
    "authentication": "0",
    "generate_node_acls": "0",
    "demo_mode_write_protect": "1",
    "cache_dynamic_acls": "0",
}
DBROOT = "/etc/target"  # rtslib-fb's preferred dbroot (RTSRoot._preferred_dbroot)
MAX_TPG_LUN = 65535  # rtslib's LUN.MAX_TARGET_LUN
_READING_STEPS = ("reading", "looking")  # _step()s that change nothing
MAX_DEV_NAME = 255  # the kernel keeps fd_dev_name/udev_path in 256 bytes with the NUL

# rtslib's own tests for initiator names (rtslib.utils.normalize_wwn), after lower-casing.
_INITIATOR_NAME = (
    re.compile(r"iqn\.[0-9]{4}-[0-1][0-9]\.[^ _]*\.[^ _]*"),
    re.compile(r"eui\.[0-9a-f]{16}"),
    re.compile(r"naa\.[125c-f][0-9a-f]{15}"),
)


def normalize_wwn(wwn: str) -> str:
    """The form rtslib stores and lists a WWN in (rtslib.utils._cleanse_wwn): IQNs are
    lower-cased, EUI/NAA names also lose ':' and '-'. Names are compared in this form, or an
    initiator given in upper case would look different on every apply."""
    wwn = wwn.strip().lower()
    if not wwn.startswith("iqn."):
        wwn = wwn.removeprefix("0x").replace("-", "").replace(":", "")
    return wwn


def path_kind(path: str) -> str:
    """What is behind a LUN's path: 'block', 'file', 'missing' or 'other'."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if stat.S_ISBLK(mode):
        return "block"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


@dataclass
class _Acl:
    """One initiator as it is wanted: the name it was given in and its LUNs."""

    initiator: str
    host_id: int
    luns: dict[int, LunExport] = field(default_factory=dict)  # mapped LUN number -> export


@dataclass
class _Current:
    """The owned part of the LIO configuration as read at the start of an apply."""

    target: Any = None
    tpg: Any = None
    other_tpgs: list[Any] = field(default_factory=list)
    sos: dict[int, list[Any]] = field(default_factory=dict)  # volume id -> its storage objects
    garbage_sos: list[Any] = field(default_factory=list)  # our prefix, but no volume id
    luns: dict[int, Any] = field(default_factory=dict)  # volume id -> its TPG LUN
    stray_luns: list[Any] = field(default_factory=list)  # TPG LUNs of nothing we own
    acls: dict[str, Any] = field(default_factory=dict)  # normalized initiator -> NodeACL


class LioDriver(TargetDriver):
    """One target named `base_iqn` with per-initiator ACLs; see the module docstring."""

    name = "lio"
    first_lun = 0
    max_lun = 255

    def __init__(self, base_iqn: str, rtslib: Any = None,
                 path_kind: Callable[[str], str] = path_kind, dbroot: str | None = DBROOT,
                 on_step: Callable[[str], None] | None = None):
        super().__init__(base_iqn)
        self.on_step = on_step  # told of each change made in configfs (Runner.step_done)
        self.dbroot = dbroot
        if rtslib is None:
            # Imported here so that importing vsnap never needs rtslib-fb (tgt machines).
            import rtslib_fb
            rtslib = rtslib_fb
        self.rtslib = rtslib
        self.path_kind = path_kind
        self.wwn = normalize_wwn(base_iqn)
        self.tag = hashlib.sha1(self.wwn.encode()).hexdigest()[:12]
        self.so_prefix = f"vsnap-{self.tag}-"

    # -- naming -------------------------------------------------------------------------------
    def so_name(self, volume_id: int) -> str:
        return f"{self.so_prefix}{volume_id}"

    def _volume_id(self, so_name: str) -> int | None:
        return numbered(so_name, self.so_prefix)

    # -- errors -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _step(self, what: str) -> Iterator[None]:
        """rtslib raises RTSLibError for what it checks and OSError for what configfs or
        the kernel refuses; both become TargetError saying what was being done. A step that
        changed the kernel's configuration is told to `on_step` (the crash tests' kill points)."""
        try:
            yield
        except (self.rtslib.RTSLibError, OSError) as exc:
            raise TargetError(f"LIO: {what}: {exc}") from exc
        if self.on_step is not None and not what.startswith(_READING_STEPS):
            self.on_step(f"LIO: {what}")

    # -- reading ------------------------------------------------------------------------------
    def _find_target(self) -> Any:
        for target in self.rtslib.FabricModule(FABRIC).targets:
            if target.wwn == self.wwn:
                return target
        return None

    def _owned_sos(self) -> Iterable[Any]:
        if self.dbroot:
            # rtslib-fb points LIO's dbroot (where the kernel keeps persistent reservation
            # and ALUA state) at /etc/target, and refuses to go on if that directory is
            # missing, as it is on a machine without targetcli's saved configuration. Ours
            # is regenerated from the database, so an empty directory is all it needs.
            os.makedirs(self.dbroot, mode=0o755, exist_ok=True)
        return (so for so in self.rtslib.RTSRoot().storage_objects if so.name.startswith(self.so_prefix))

    def _lun_so(self, lun: Any) -> Any:
        """The storage object of a TPG LUN, or None if its link is broken."""
        try:
            return lun.storage_object
        except self.rtslib.RTSLibError:
            return None

    def _mlun_tpg_lun(self, mlun: Any) -> int | None:
        """The TPG LUN index a mapped LUN points at, or None if its link is broken."""
        try:
            return mlun.tpg_lun.lun
        except self.rtslib.RTSLibError:
            return None

    def _so_size(self, so: Any) -> int | None:
        """A fileio object's size; None where the kernel's info cannot be parsed (rtslib
        then fails with ValueError/TypeError rather than its own error)."""
        try:
            return int(so.size)
        except (self.rtslib.RTSLibError, OSError, ValueError, TypeError):
            return None

    def _read(self) -> _Current:
        cur = _Current()
        for so in self._owned_sos():
            volume_id = self._volume_id(so.name)
            if volume_id is None:
                cur.garbage_sos.append(so)
            else:
                cur.sos.setdefault(volume_id, []).append(so)
        cur.target = self._find_target()
        if cur.target is None:
            return cur
        for tpg in cur.target.tpgs:
            if tpg.tag == TPG_TAG:
                cur.tpg = tpg
            else:
                cur.other_tpgs.append(tpg)
        if cur.tpg is None:
            return cur
        for lun in sorted(cur.tpg.luns, key=lambda entry: entry.lun):
            so = self._lun_so(lun)
            volume_id = self._volume_id(so.name) if so is not None else None
            # One TPG LUN per volume: a second one (never made by this driver) is a stray.
            if volume_id is None or volume_id in cur.luns:
                cur.stray_luns.append(lun)
            else:
                cur.luns[volume_id] = lun
        for acl in cur.tpg.node_acls:
            cur.acls[normalize_wwn(acl.node_wwn)] = acl
        return cur

    def _so_matches(self, so: Any, want: LunExport, kind: str) -> bool:
        if so.udev_path != want.path or so.wwn != want.serial:
            return False
        # A path that is momentarily missing (a zvol node re-created by udev) does not
        # tear down a storage object that holds the device open and otherwise matches.
        if kind != "missing" and so.plugin != ("block" if kind == "block" else "fileio"):
            return False
        if so.plugin == "fileio":
            return self._so_size(so) == want.size  # a file's size is fixed at creation
        return True  # block devices: LIO reads the size from the device on every command

    # -- the wanted configuration --------------------------------------------------------------
    def _wanted(self, hosts: list[HostExport]) -> tuple[dict[int, LunExport], dict[str, _Acl]]:
        """Checks `hosts` before anything is changed, so that a bad request fails whole:
        volumes -> their backing, normalized initiator -> its ACL."""
        volumes: dict[int, LunExport] = {}
        acls: dict[str, _Acl] = {}
        for host in hosts:
            numbers: set[int] = set()
            for export in host.luns:
                if not self.first_lun <= export.lun <= self.max_lun:
                    raise TargetError(f"LUN {export.lun} of host {host.host_id} is outside "
                                      f"{self.first_lun}..{self.max_lun}")
                if export.lun in numbers:
                    raise TargetError(f"host {host.host_id} has LUN {export.lun} twice")
                numbers.add(export.lun)
                _check_backing(export)
                have = volumes.setdefault(export.volume_id, export)
                if (have.path, have.serial, have.size) != (export.path, export.serial, export.size):
                    raise TargetError(f"volume {export.volume_id} is exported with different "
                                      f"paths, serials or sizes")
            for initiator in host.initiators:
                norm = normalize_wwn(initiator)
                if not any(p.fullmatch(norm) for p in _INITIATOR_NAME):
                    raise TargetError(f"{initiator!r} is not a valid iSCSI initiator name")
                acl = acls.setdefault(norm, _Acl(initiator, host.host_id))
                # An initiator listed by two hosts sees both hosts' LUNs (as it would log in
                # to both hosts' targets under tgt), unless their LUN numbers collide.
                for export in host.luns:
                    other = acl.luns.setdefault(export.lun, export)
                    if (other.volume_id, other.read_only) != (export.volume_id, export.read_only):
                        raise TargetError(f"initiator {initiator} belongs to hosts {acl.host_id} "
                                          f"and {host.host_id}, which both use LUN {export.lun}")
        return volumes, acls

    # -- changing -----------------------------------------------------------------------------
    def apply(self, hosts: list[HostExport], refresh: frozenset[int] = frozenset()) -> None:
        volumes, acls = self._wanted(hosts)
        with self._step("looking at the volumes' paths"):
            kinds = {vid: self.path_kind(export.path) for vid, export in volumes.items()}
        self._forget_backstore_cache()
        with self._step("reading the configuration"):
            cur = self._read()

            # Which storage objects stay: wanted, unchanged and not to be refreshed.
            keep_sos: dict[int, Any] = {}
            drop_sos: list[Any] = list(cur.garbage_sos)
            for vid, sos in sorted(cur.sos.items()):
                if (vid in volumes and vid not in refresh and len(sos) == 1
                        and self._so_matches(sos[0], volumes[vid], kinds[vid])):
                    keep_sos[vid] = sos[0]
                else:
                    drop_sos.extend(sos)
            keep_luns = {vid: lun for vid, lun in cur.luns.items() if vid in keep_sos}
            drop_luns = cur.stray_luns + [lun for vid, lun in cur.luns.items() if vid not in keep_sos]
            keep_index = {vid: lun.lun for vid, lun in keep_luns.items()}

            # A storage object of ours exported by some other target: deleting it would take
            # that LUN away too (rtslib deletes attached LUNs), so refuse before any change.
            for so in drop_sos:
                for lun in so.attached_luns:
                    target = lun.parent_tpg.parent_target
                    if (target.fabric_module.name, target.wwn) != (FABRIC, self.wwn):
                        raise TargetError(
                            f"LIO: storage object {so.plugin}/{so.name} is also exported by "
                            f"{target.fabric_module.name} target {target.wwn}; remove it there first")

            # Mapped LUNs that stay: same LUN number, same kept TPG LUN, same write protection.
            drop_mluns: list[Any] = []
            for norm, acl in cur.acls.items():
                if norm not in acls:
                    continue  # the whole ACL goes
                for mlun in acl.mapped_luns:
                    wanted = acls[norm].luns.get(mlun.mapped_lun)
                    index = keep_index.get(wanted.volume_id) if wanted is not None else None
                    # A changed read-only flag re-creates the mapped LUN rather than flipping
                    # write_protect in place: the initiator then gets a "LUNs changed" unit
                    # attention and a reason to look again.
                    if (wanted is None or index is None or self._mlun_tpg_lun(mlun) != index
                            or bool(mlun.write_protect) != wanted.read_only):
                        drop_mluns.append(mlun)

        # Access first: the TPG's own gates, then whole ACLs, then single mapped LUNs;
        # only then the objects behind them.
        tpg = self._ensure_tpg(cur)
        for other in cur.other_tpgs:
            with self._step(f"deleting TPG {other.tag} of {self.wwn}"):
                other.delete()
            log.info("LIO: TPG %s of %s deleted", other.tag, self.wwn)
        for norm, acl in cur.acls.items():
            if norm not in acls:
                with self._step(f"deleting the ACL of {acl.node_wwn}"):
                    acl.delete()
                log.info("LIO: ACL %s deleted", acl.node_wwn)
        for mlun in drop_mluns:
            with self._step(f"unmapping LUN {mlun.mapped_lun} from {mlun.node_wwn}"):
                mlun.delete()
        for lun in drop_luns:
            with self._step(f"deleting TPG LUN {lun.lun}"):
                lun.delete()
        for so in drop_sos:
            with self._step(f"deleting storage object {so.plugin}/{so.name}"):
                so.delete()
            log.info("LIO: storage object %s/%s deleted", so.plugin, so.name)

        # Then build up: backstore, TPG LUN, ACL, mapped LUN, so nothing is mapped before
        # its serial is set.
        tpg_luns = dict(keep_luns)
        used = set(keep_index.values())
        for vid in sorted(volumes):
            so = keep_sos[vid] if vid in keep_sos else self._create_so(vid, volumes[vid], kinds[vid])
            if vid not in tpg_luns:
                index = next((i for i in range(MAX_TPG_LUN + 1) if i not in used), None)
                if index is None:
                    raise TargetError("LIO: no free TPG LUN index")
                with self._step(f"creating TPG LUN {index} for {so.name}"):
                    tpg_luns[vid] = self.rtslib.LUN(tpg, index, storage_object=so)
                used.add(index)
        for norm, want in sorted(acls.items()):
            acl = cur.acls.get(norm)
            if acl is None:
                with self._step(f"creating the ACL of {want.initiator}"):
                    acl = self.rtslib.NodeACL(tpg, want.initiator, mode="create")
                log.info("LIO: ACL %s created for host %s", want.initiator, want.host_id)
                have = set()
            else:
                with self._step(f"reading the mapped LUNs of {want.initiator}"):
                    have = {m.mapped_lun for m in acl.mapped_luns}
            for number, export in sorted(want.luns.items()):
                if number in have:
                    continue
                with self._step(f"mapping LUN {number} to {want.initiator}"):
                    self.rtslib.MappedLUN(acl, number, tpg_lun=tpg_luns[export.volume_id],
                                          write_protect=export.read_only)
        self._ensure_portal_and_enable(tpg)

    def _forget_backstore_cache(self) -> None:
        """rtslib caches backstore indexes per process (rtslib.tcm.bs_cache) and fills the
        cache only while it is empty. In a long-running server it goes stale as soon as
        anything else (targetcli, a target.service restore) changes the backstores, and
        then creating a storage object fails with "exists" or takes a used index. An empty
        cache makes rtslib read configfs again."""
        cache = getattr(getattr(self.rtslib, "tcm", None), "bs_cache", None)
        if isinstance(cache, dict):
            cache.clear()

    def _ensure_tpg(self, cur: _Current) -> Any:
        """The target and TPG 1, with the attributes that close it to unknown initiators.
        A new TPG stays disabled until it is filled (`_ensure_portal_and_enable`)."""
        if cur.target is None:
            with self._step(f"creating target {self.wwn}"):
                cur.target = self.rtslib.Target(self.rtslib.FabricModule(FABRIC), self.wwn,
                                                mode="create")
            log.info("LIO: target %s created", self.wwn)
        tpg = cur.tpg
        if tpg is None:
            with self._step(f"creating TPG {TPG_TAG} of {self.wwn}"):
                tpg = cur.tpg = self.rtslib.TPG(cur.target, TPG_TAG, mode="create")
        for attribute, value in TPG_ATTRIBUTES.items():
            with self._step(f"setting {attribute} of {self.wwn}"):
                if str(tpg.get_attribute(attribute)).strip() != value:
                    tpg.set_attribute(attribute, value)
        return tpg

    def _ensure_portal_and_enable(self, tpg: Any) -> None:
        ip, port = PORTAL
        with self._step(f"adding portal {ip}:{port}"):
            if not any((p.ip_address, p.port) == PORTAL for p in tpg.network_portals):
                self.rtslib.NetworkPortal(tpg, ip, port, mode="create")
        with self._step(f"enabling TPG {TPG_TAG} of {self.wwn}"):
            if not tpg.enable:
                tpg.enable = True

    def _create_so(self, volume_id: int, want: LunExport, kind: str) -> Any:
        name = self.so_name(volume_id)
        if kind == "missing":
            raise TargetError(f"LIO: {want.path} (volume {volume_id}) does not exist")
        if kind not in ("block", "file"):
            raise TargetError(f"LIO: {want.path} (volume {volume_id}) is neither a file nor a block device")
        if kind == "file" and want.size <= 0:
            raise TargetError(f"LIO: volume {volume_id} has no size ({want.size}) for its file")
        with self._step(f"creating storage object {name} for {want.path}"):
            if kind == "block":
                # Read-only is per host (the mapped LUN's write_protect), never the backstore's.
                so = self.rtslib.BlockStorageObject(name, dev=want.path, wwn=want.serial)
            else:
                so = self.rtslib.FileIOStorageObject(name, dev=want.path, size=want.size,
                                                     wwn=want.serial, write_back=False)
        log.info("LIO: storage object %s/%s created for %s", so.plugin, name, want.path)
        return so

    # -- looking ------------------------------------------------------------------------------
    def state(self) -> tuple:
        with self._step("reading the configuration"):
            sos = tuple(sorted(
                (so.plugin, so.name, so.udev_path, so.wwn,
                 self._so_size(so) if so.plugin == "fileio" else None)
                for so in self._owned_sos()))
            target = self._find_target()
            if target is None:
                return (None, (), sos)
            tpgs = []
            for tpg in sorted(target.tpgs, key=lambda t: t.tag):
                attributes = tuple(str(tpg.get_attribute(a)).strip() for a in TPG_ATTRIBUTES)
                portals = tuple(sorted((p.ip_address, p.port) for p in tpg.network_portals))
                luns = {}
                for lun in tpg.luns:
                    so = self._lun_so(lun)
                    luns[lun.lun] = None if so is None else (so.plugin, so.name, so.udev_path, so.wwn)
                acls = tuple(sorted(
                    (acl.node_wwn, tuple(sorted(
                        (m.mapped_lun, bool(m.write_protect), luns.get(self._mlun_tpg_lun(m)))
                        for m in acl.mapped_luns)))
                    for acl in tpg.node_acls))
                tpgs.append((tpg.tag, bool(tpg.enable), attributes, portals,
                             tuple(sorted(luns.items(), key=lambda kv: kv[0])), acls))
            return (target.wwn, tuple(tpgs), sos)

    def targets(self) -> list[TargetPort]:
        with self._step("reading the configuration"):
            return [TargetPort(self.base_iqn, None)] if self._find_target() is not None else []


def _check_backing(export: LunExport) -> None:
    """What the kernel would garble rather than refuse: rtslib passes the path inside a
    comma-separated control string, and reads the serial back stripped (an empty serial
    makes rtslib invent one) - either would make every apply see a change."""
    path, serial = export.path, export.serial
    if not path.startswith("/") or len(path) > MAX_DEV_NAME or any(c in path for c in ",\n\t "):
        raise TargetError(f"volume {export.volume_id}: {path!r} cannot be a LIO backstore path")
    if not serial or serial != serial.strip() or not (serial.isascii() and serial.isprintable()):
        raise TargetError(f"volume {export.volume_id}: {serial!r} cannot be a SCSI unit serial")
