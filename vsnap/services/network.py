from __future__ import annotations

from ..drivers.network import Interface, NetworkDriver
from ..errors import NotFoundError, ValidationError
from ..store.db import Store
from ..store.models import NetworkServices, now

SERVICES = ("mgmt", "nfs", "smb", "iscsi", "repl")


def normalize_services(services: list[str]) -> list[str]:
    unknown = [s for s in services if s != "all" and s not in SERVICES]
    if unknown:
        raise ValidationError(
            f"Unknown service(s) {', '.join(map(repr, unknown))}; valid: all, {', '.join(SERVICES)}")
    if "all" in services:
        return list(SERVICES)
    return [s for s in SERVICES if s in services]


class NetworkService:
    def __init__(self, store: Store, driver: NetworkDriver):
        self.store = store
        self.driver = driver

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

    def update(self, iface_id: str, services: list[str]) -> dict:
        wanted = normalize_services(services)
        for i, iface in self._interfaces():
            if i == iface_id:
                with self.store.session() as s:
                    row = self._row(s, i, iface)
                    if row is None:
                        row = NetworkServices(id=i, name=iface.name, services=wanted)
                        s.add(row)
                    row.name, row.services, row.time_updated = iface.name, wanted, now()
                    s.flush()
                    return self._render(i, iface, row)
        raise NotFoundError(f"Network interface {iface_id} not found")

    def addresses_for(self, service: str) -> list[str]:
        """IPv4 addresses of the interfaces that carry `service` (replication picks from these)."""
        return [addr for iface in self.list() if service in iface["services"]
                for addr in iface["ip4_addrs"]]
