"""What both iSCSI target drivers share: the wanted configuration (`HostExport`s of
`LunExport`s), the interface a driver keeps (`TargetDriver`), its error and what it reports.

A module of its own so that iscsi.py (tgt, and the choice of driver) and iscsi_lio.py (LIO)
both import it, and neither imports the other at load time.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LunExport:
    """One LUN as one host sees it."""

    lun: int  # the LUN number the host sees
    volume_id: int
    path: str  # the file or block device behind it
    serial: str  # the SCSI unit serial number (VPD page 0x80)
    size: int  # bytes; a driver that fixes the size at creation re-creates the LUN on change
    read_only: bool = False


@dataclass(frozen=True)
class HostExport:
    host_id: int
    initiators: tuple[str, ...]
    luns: tuple[LunExport, ...] = ()


@dataclass(frozen=True)
class TargetPort:
    """A target name initiators log in to; host_id where the target serves one host only."""

    wwn: str
    host_id: int | None = None


def numbered(name: str, prefix: str) -> int | None:
    """N of a name `<prefix>N` (N in canonical decimal); None for any other name, which is
    then not ours."""
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isascii() and rest.isdigit() and rest == str(int(rest)) else None


class TargetError(Exception):
    """The target service refused a change or is not there."""


class TargetDriver:
    """The interface both drivers keep. `base_iqn` names what this appliance owns; nothing
    else in the target configuration is ever touched."""

    name = "none"
    first_lun = 0  # the lowest LUN number a volume may get
    max_lun = 255

    def __init__(self, base_iqn: str):
        self.base_iqn = base_iqn

    def apply(self, hosts: list[HostExport], refresh: frozenset[int] = frozenset()) -> None:
        """Makes the owned configuration exactly `hosts`. LUNs of volumes in `refresh` are
        re-created even when they look the same (their size changed)."""
        raise NotImplementedError

    def state(self) -> object:
        """A comparable picture of the owned configuration as it is now: equal pictures mean
        nothing changed underneath (e.g. the target service did not restart)."""
        raise NotImplementedError

    def targets(self) -> list[TargetPort]:
        """The owned targets that exist now."""
        raise NotImplementedError
