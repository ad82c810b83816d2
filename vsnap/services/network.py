from __future__ import annotations

import builtins
import contextlib
import logging
from pathlib import Path

from ..drivers.firewall import IFNAME, FirewallDriver, FirewallError, Ports, Restriction, render, smb_conf_ports
from ..drivers.network import Interface, NetworkDriver
from ..errors import NotFoundError, ServiceUnavailableError, ValidationError
from ..store.db import Store
from ..store.models import NetworkServices, now
from .locking import StorageLock

log = logging.getLogger(__name__)

SERVICES = ("mgmt", "nfs", "smb", "iscsi", "repl")
# The services an interface can be kept from serving by the packet filter (repl only picks
# the addresses replication uses; SSH, which the admin logs in over, is never filtered).
FILTERED = ("mgmt", "nfs", "smb", "iscsi")
NFS_PORTS = (111, 2049)  # rpcbind and nfsd; mountd, nlockmgr, statd: wherever rpcbind says
SMB_PORTS = (139, 445)
ISCSI_PORTS = (3260,)


class ServicePorts:
    """The ports each filtered service is reached on, on this appliance."""

    def __init__(self, mgmt_port: int, smb_conf: Path | None, firewall: FirewallDriver | None):
        self.mgmt_port = mgmt_port
        self.smb_conf = smb_conf
        self.firewall = firewall

    def __call__(self, service: str) -> Ports:
        if service == "mgmt":
            return Ports(tcp=(self.mgmt_port,))
        if service == "nfs":
            rpc = self.firewall.rpc_ports() if self.firewall is not None else Ports()
            return Ports(tcp=tuple(sorted({*NFS_PORTS, *rpc.tcp})), udp=tuple(sorted({*NFS_PORTS, *rpc.udp})))
        if service == "smb":
            extra = smb_conf_ports(self.smb_conf) if self.smb_conf is not None else []
            return Ports(tcp=tuple(sorted({*SMB_PORTS, *extra})))
        if service == "iscsi":
            return Ports(tcp=ISCSI_PORTS)
        raise ValueError(service)


def is_loopback(iface: Interface) -> bool:
    return iface.name == "lo" or iface.loopback


def normalize_services(services: list[str]) -> list[str]:
    unknown = [s for s in services if s != "all" and s not in SERVICES]
    if unknown:
        raise ValidationError(
            f"Unknown service(s) {', '.join(map(repr, unknown))}; valid: all, {', '.join(SERVICES)}")
    if "all" in services:
        return list(SERVICES)
    return [s for s in SERVICES if s in services]


class NetworkService:
    def __init__(self, store: Store, driver: NetworkDriver, firewall: FirewallDriver | None = None,
                 ports=None, lock: StorageLock | None = None):
        self.store = store
        self.driver = driver
        self.firewall = firewall  # None: services are recorded only (no packet filter at all)
        self.ports = ports or ServicePorts(8900, None, firewall)
        self.lock = lock
        self._last_error: str | None = None

    def _interfaces(self) -> list[tuple[str, Interface]]:
        """Each interface with its API id: its MAC, or its name where it has no unique MAC."""
        interfaces = self.driver.interfaces()
        macs = [i.hw_addr for i in interfaces if i.hw_addr]
        return [(i.hw_addr if i.hw_addr and macs.count(i.hw_addr) == 1 else i.name, i)
                for i in interfaces]

    @staticmethod
    def _render(iface_id: str, iface: Interface, row: NetworkServices | None) -> dict:
        return {
            "id": iface_id,
            "name": iface.name,
            "hw_addr": iface.hw_addr,
            "ip4_addrs": iface.ip4_addrs,
            "ip6_addrs": iface.ip6_addrs,
            # An interface nobody has configured carries every service.
            "services": list(row.services) if row else list(SERVICES),
        }

    @staticmethod
    def _row(session, iface_id: str, iface: Interface) -> NetworkServices | None:
        """The saved services of an interface. Its id can change (a VLAN comes to share its MAC,
        so the id falls back to the name): then the row saved under its name is re-keyed, so a
        restricted interface never silently goes back to carrying every service."""
        row = session.get(NetworkServices, iface_id)
        if row is None:
            row = session.query(NetworkServices).filter_by(name=iface.name).first()
            if row is not None:
                row.id = iface_id
        return row

    def list(self) -> list[dict]:
        with self.store.session() as s:
            return [self._render(i, iface, self._row(s, i, iface)) for i, iface in self._interfaces()]

    def get(self, iface_id: str) -> dict:
        for i, iface in self._interfaces():
            if i == iface_id:
                with self.store.session() as s:
                    return self._render(i, iface, self._row(s, i, iface))
        raise NotFoundError(f"Network interface {iface_id} not found")

    def update(self, iface_id: str, services: builtins.list[str]) -> dict:
        """Stores an interface's services and makes them take effect at once: the packet
        filter is applied before the change is committed, so when it fails nothing changes."""
        wanted = normalize_services(services)
        with self._locked():
            interfaces = self._interfaces()
            for i, iface in interfaces:
                if i == iface_id:
                    restricting = not is_loopback(iface) and any(s not in wanted for s in FILTERED)
                    if restricting and not IFNAME.fullmatch(iface.name):
                        raise ValidationError(f"Interface {iface.name!r} has a name the packet filter cannot "
                                              "match: it must carry every service")
                    with self.store.session() as s:
                        row = self._row(s, i, iface)
                        if row is None:
                            row = NetworkServices(id=i, name=iface.name, services=wanted)
                            s.add(row)
                        row.name, row.services, row.time_updated = iface.name, wanted, now()
                        s.flush()
                        self._apply_for_update(s, interfaces, restricting)
                        return self._render(i, iface, row)
        raise NotFoundError(f"Network interface {iface_id} not found")

    # -- the packet filter ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        """One change of the packet filter at a time across the server's processes, each made
        from the whole stored state (so two updates of different interfaces cannot undo each other)."""
        if self.lock is None:
            yield
        else:
            with self.lock.held():
                yield

    def _restrictions(self, session, interfaces: builtins.list[tuple[str, Interface]]) -> builtins.list[Restriction]:
        """Every interface that does not carry some filtered service, with those services' ports.
        A saved interface that is absent now (unplugged, renamed back later) is restricted by its
        name, so it is restricted the moment it comes back."""
        restrictions: list[Restriction] = []
        present = set()
        cache: dict[str, Ports] = {}

        def ports(service: str) -> Ports:
            if service not in cache:
                cache[service] = self.ports(service)
            return cache[service]

        def add(name: str, ip4: list[str], ip6: list[str], services: list[str]) -> None:
            missing = [s for s in FILTERED if s not in services]
            if not missing:
                return
            if not IFNAME.fullmatch(name):
                log.warning("network services: interface %r cannot be matched by the packet filter; "
                            "it is not restricted", name)
                return
            restrictions.append(Restriction(name, list(ip4), list(ip6), {s: ports(s) for s in missing}))

        matched = set()
        for i, iface in interfaces:
            present.add(iface.name)
            row = self._row(session, i, iface)
            if row is not None:
                matched.add(row.id)
                if not is_loopback(iface):
                    add(iface.name, iface.ip4_addrs, iface.ip6_addrs, list(row.services))
        for row in session.query(NetworkServices).order_by(NetworkServices.id):
            if row.id not in matched and row.name not in present and row.name != "lo":
                add(row.name, [], [], list(row.services))
        return restrictions

    def _script(self, firewall: FirewallDriver, session, interfaces) -> tuple[str, builtins.list[Restriction]]:
        restrictions = self._restrictions(session, interfaces)
        return render(firewall.table, restrictions), restrictions

    @staticmethod
    def _describe(restrictions: builtins.list[Restriction]) -> str:
        return "; ".join(f"{r.name}: no {', '.join(r.blocked)}" for r in restrictions) or "nothing restricted"

    def _apply_for_update(self, session, interfaces, restricting: bool) -> None:
        firewall = self.firewall
        if firewall is None:
            return
        if not firewall.available():
            if restricting:
                raise ServiceUnavailableError(
                    "The packet filter is unavailable on this appliance (nft is not installed: "
                    "install nftables): an interface cannot be kept from serving mgmt, nfs, smb or iscsi")
            return
        script, restrictions = self._script(firewall, session, interfaces)
        try:
            firewall.apply(script)
        except (FirewallError, ValueError) as exc:
            log.error("network services: the packet filter could not be applied: %s", exc)
            raise ServiceUnavailableError(f"The packet filter could not be changed, so the services "
                                          f"were not changed: {exc}") from exc
        log.info("network services: packet filter applied (%s)", self._describe(restrictions))

    def enforce(self, startup: bool = False) -> bool:
        """Makes the packet filter what the stored services say, for the interfaces and
        addresses there are now: at start-up always, afterwards (the worker, every few seconds)
        only when that differs from what was last applied or the table went missing (a reboot,
        an `nft flush ruleset`). Returns whether it applied anything."""
        firewall = self.firewall
        if firewall is None:
            return False
        with self._locked():
            interfaces = self._interfaces()
            with self.store.session() as s:
                if not firewall.available():
                    if startup:
                        restricted = self._restrictions(s, interfaces)
                        log.warning("network services: nft is not installed (package nftables): %s",
                                    f"NOT ENFORCED: {self._describe(restricted)}" if restricted
                                    else "no interface can be kept from serving mgmt, nfs, smb or iscsi")
                    return False
                script, restrictions = self._script(firewall, s, interfaces)
            # (The kernel is asked only when there should be a table: an absent one is the
            # routine state of most appliances, and `nft list` of it fails.)
            why = "at start-up" if startup else None
            if why is None and script != firewall.applied():
                why = "for a change of interfaces, addresses or ports"
            if why is None and restrictions and not self._table_present(firewall):
                why = "again: its table had been removed from the kernel"
            if why is None:
                log.debug("network services: packet filter unchanged")
                return False
            try:
                firewall.apply(script)
            except FirewallError as exc:
                if startup or str(exc) != self._last_error:  # not every few seconds
                    log.error("network services: the packet filter could not be applied: %s", exc)
                self._last_error = str(exc)
                return False
            self._last_error = None
            log.info("network services: packet filter applied %s (%s)", why, self._describe(restrictions))
            return True

    @staticmethod
    def _table_present(firewall: FirewallDriver) -> bool:
        try:
            return firewall.present()
        except FirewallError:  # nft did not answer: applying it again says why, once
            return False

    def addresses_for(self, service: str) -> builtins.list[str]:
        """IPv4 addresses of the interfaces that carry `service` (replication picks from these)."""
        return [addr for iface in self.list() if service in iface["services"]
                for addr in iface["ip4_addrs"]]
