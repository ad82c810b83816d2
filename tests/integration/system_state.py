"""The real system this appliance drives, read with its own tools and files, independently of
the server under test: ZFS, the NFS exports, Samba's shares and tgt's targets."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from vsnap.config import Settings

from . import stack
from .conftest import STATE


def zfs_tree(pool: str) -> dict[str, dict[str, str]]:
    """{dataset: {property: value}} of every dataset and snapshot of the pool, with vsnap's
    stamps."""
    out = subprocess.run(["zfs", "get", "-Hp", "-r", "-o", "name,property,value",
                          "type,com.vsnap:vol_id,com.vsnap:snap_id", pool],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    tree: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, prop, value = line.split("\t")
        tree.setdefault(name, {})[prop] = value
    return tree


def settings() -> Settings:
    """The appliance's settings as it reads them (the lab's lab.env included)."""
    return Settings.from_env({"VSNAP_STATE": str(STATE)})


def kernel_exports_file() -> Path:
    """This appliance's file under /etc/exports.d (the lab names it in lab.env)."""
    return settings().kernel_exports


def ganesha_pid() -> int:
    """The lab's one nfs-ganesha, which serves every appliance on the machine."""
    return int(settings().ganesha_pidfile.read_text())


def nfs_exports() -> dict[int, str]:
    """{share id: path} of the NFS server's exports: nfs-ganesha's exports file; or, with the
    kernel NFS server, this appliance's exports file, each entry checked to be in the kernel's
    table as exportfs applied it (/var/lib/nfs/etab). Export ids are the share's id from the
    appliance's base (the lab gives each appliance on the machine a range of its own)."""
    base = settings().nfs_export_id_base
    if not stack.KERNEL:
        text = (STATE / "nfs" / "exports.conf").read_text()
        return {int(i) - base: p for i, p in re.findall(r'Export_Id = (\d+);\s*Path = "([^"]*)";', text)}
    ours = {int(i): p for p, i in re.findall(r'^"([^"]*)" \S+?\(\S*?fsid=(\d+)',
                                             kernel_exports_file().read_text(), re.M)}
    applied = {(p, int(i)) for p, i in re.findall(r"^(\S+)\t\S+?\(\S*?fsid=(\d+)",
                                                  Path("/var/lib/nfs/etab").read_text(), re.M)}
    missing = {(p, i) for i, p in ours.items()} - applied
    assert not missing, f"exports in {kernel_exports_file()} that the kernel does not serve: {missing}"
    return {i - base: p for i, p in ours.items()}


def smb_shares() -> dict[str, str]:
    """{share name: path} of Samba's shares file."""
    text = (STATE / "samba" / "shares.conf").read_text()
    return dict(re.findall(r"^\[([^\]]+)\]\s*\n\s*path = (.*)$", text, re.M))


def base_iqn() -> str:
    return "iqn.2026-11.local.vsnap:" + (STATE / "system-id").read_text().strip()


def tgt_targets_by_name() -> dict[str, tuple[set[str], dict[int, str]]]:
    """Every tgt target: {target name: ({ACL}, {lun: backing file})}; LUN 0 (tgt's controller)
    left out."""
    out = subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    targets: dict[str, tuple[set[str], dict[int, str]]] = {}
    current, section, lun = None, None, None
    for raw in out.splitlines():
        if m := re.match(r"^Target \d+: (\S+)$", raw):
            current, section = targets.setdefault(m.group(1), (set(), {})), None
            continue
        line = raw.strip()
        if current is None or not line:
            continue
        if line.endswith("information:"):
            section = line
        elif section == "LUN information:":
            if m := re.match(r"^LUN: (\d+)$", line):
                lun = int(m.group(1))
            elif line.startswith("Backing store path:") and lun:
                current[1][lun] = line.split(":", 1)[1].strip()
        elif section == "ACL information:":
            current[0].add(line)
    return targets


def tgt_targets() -> dict[int, tuple[set[str], dict[int, str]]]:
    """This appliance's targets, one per host: {host id: ({ACL}, {lun: backing file})}."""
    prefix = base_iqn() + ":host"
    return {int(name[len(prefix):]): target for name, target in tgt_targets_by_name().items()
            if name.startswith(prefix) and name[len(prefix):].isdigit()}


def lio_acls() -> dict[str, dict[int, str]]:
    """LIO's view of this appliance's one target, read from configfs: {initiator (as LIO keeps
    it, lower case): {mapped LUN: backing path}}, following each mapped LUN's link to its TPG
    LUN and that LUN's link to its storage object."""
    wwn = base_iqn().lower()
    acls: dict[str, dict[int, str]] = {}
    for acl in Path("/sys/kernel/config/target/iscsi", wwn).glob("tpgt_*/acls/*"):
        luns = {}
        for mapped in acl.glob("lun_*"):
            [tpg_lun] = [link.resolve() for link in mapped.iterdir() if link.is_symlink()]
            [backstore] = [link.resolve() for link in tpg_lun.iterdir() if link.is_symlink()]
            luns[int(mapped.name[len("lun_"):])] = (backstore / "udev_path").read_text().strip()
        acls[acl.name] = luns
    return acls
