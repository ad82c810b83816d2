"""The iSCSI target: its configuration is generated whole from the database (hosts, their
initiators, LUN mappings) and the catalog (where each LUN's data lives), so it never drifts
from what the API reports. It is applied after every change, at start, and whenever a
watchdog sees that it changed underneath (tgt forgets everything when it restarts)."""
from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable

from ..config import Settings
from ..drivers.iscsi_base import HostExport, LunExport, TargetDriver, TargetError
from ..errors import ApiError, ServiceUnavailableError
from ..store.db import Store
from ..store.models import Host, HostInitiator, LunMapping
from .catalog import READY, Catalog, CatalogView
from .locking import StorageLock
from .system import SystemService

log = logging.getLogger(__name__)


class TargetService:
    def __init__(self, settings: Settings, system: SystemService, store: Store, catalog: Catalog,
                 volumes, lock: StorageLock, choose_driver):
        self.settings = settings
        self.system = system
        self.store = store
        self.catalog = catalog
        self.volumes = volumes
        self.lock = lock
        self._choose_driver = choose_driver
        self._driver: TargetDriver | None = None
        self._driver_lock = threading.Lock()
        self._applied: object = None  # the driver's state() right after our last apply
        self._failing = False

    @property
    def base_iqn(self) -> str:
        """`iqn.<yyyy-mm>.<reversed domain>.vsnap:<system id>`."""
        return f"{self.settings.iqn_prefix}:{self.system.id}"

    @property
    def driver(self) -> TargetDriver:
        # Chosen on first use: the base name needs the system id, made at bootstrap.
        with self._driver_lock:
            if self._driver is None:
                self._driver = self._choose_driver(self.base_iqn)
                log.info("iSCSI target driver: %s", self._driver.name)
            return self._driver

    def list(self) -> list[dict]:
        try:
            ports = self.driver.targets()
        except TargetError as exc:
            raise ServiceUnavailableError(f"The iSCSI target service is not available: {exc}") from exc
        return [{"type": "iqn", "wwn": p.wwn, "host_id": str(p.host_id) if p.host_id is not None else None}
                for p in ports]

    # -- the wanted configuration -----------------------------------------------------------
    def wanted(self, view: CatalogView, exclude_volume: int | None = None,
               exclude_pool: str | None = None) -> builtins.list[HostExport]:
        """Every host with its initiators and the LUNs that can be served now. A LUN whose data
        cannot be reached (its pool is gone, a file-backed LUN's file vanished) is left out and
        logged; it comes back once its data does."""
        with self.store.session() as s:
            hosts = s.query(Host).order_by(Host.id).all()
            initiators = s.query(HostInitiator).order_by(HostInitiator.host_id, HostInitiator.position).all()
            mappings = s.query(LunMapping).order_by(LunMapping.host_id, LunMapping.lun).all()
        backing: dict[int, tuple[str, int] | None] = {}
        for m in mappings:
            if m.volume_id in backing:
                continue
            v = view.volumes.get(m.volume_id)
            # A renamed filesystem takes along the file-backed LUNs whose files it holds.
            if v is None or v.row.state != READY or v.pool_name == exclude_pool \
                    or (exclude_volume is not None and exclude_volume in (v.row.id, v.row.parent_id)):
                backing[m.volume_id] = None
                continue
            try:
                backing[m.volume_id] = self.volumes.backing(v, view)
            except (ApiError, OSError) as exc:
                log.warning("LUN of volume %s (%s) left out of the target: %s",
                            v.row.id, v.row.name, getattr(exc, "message", exc))
                backing[m.volume_id] = None
        result = []
        for host in hosts:
            luns = []
            for m in mappings:
                served = backing[m.volume_id]
                if m.host_id != host.id or served is None:
                    continue
                path, size = served
                serial = view.volumes[m.volume_id].row.serial
                assert serial is not None, "every LUN is given a serial when it is made"
                luns.append(LunExport(lun=m.lun, volume_id=m.volume_id, path=path, serial=serial, size=size))
            result.append(HostExport(host.id, tuple(i.iqn for i in initiators if i.host_id == host.id),
                                     tuple(luns)))
        return result

    # -- applying ---------------------------------------------------------------------------
    def apply(self, view: CatalogView | None = None, *, exclude_volume: int | None = None,
              exclude_pool: str | None = None, refresh: frozenset[int] = frozenset()) -> None:
        """Makes the target what the database says. Raises TargetError if the target refuses."""
        with self.lock.held():
            view = view or self.catalog.load()
            self.driver.apply(self.wanted(view, exclude_volume, exclude_pool), refresh)
            self._applied = self.driver.state()
            if self._failing:
                log.info("iSCSI target configuration applied again")
            self._failing = False

    def apply_or_undo(self, undo: Callable[[], object], view: CatalogView | None = None) -> None:
        """Applies a change already written to the database; if the target refuses it, the
        database change is undone and the target put back as it was."""
        try:
            self.apply(view)
        except TargetError as exc:
            undo()
            try:
                self.apply(view)
            except TargetError:
                log.exception("could not put the iSCSI target configuration back")
            raise ServiceUnavailableError(f"The iSCSI target refused the change: {exc}") from exc

    def check(self, full: bool = False) -> None:
        """The watchdog's tick: if the target changed underneath (restarted, edited by hand),
        it is rebuilt. Cheap when nothing changed: one read of the target's configuration.
        `full` rebuilds regardless (e.g. a LUN whose volume was destroyed outside the API)."""
        try:
            if not full and self._applied is not None:
                if self.driver.state() == self._applied:
                    return
                log.warning("the iSCSI target differs from what was applied (restarted, or changed by "
                            "hand): building it again from the database")
            self.apply()
        except TargetError as exc:
            if not self._failing:
                log.error("iSCSI target configuration could not be applied: %s", exc)
            self._failing = True

    def recover(self) -> None:
        """At start: the target rebuilt from the database."""
        try:
            self.apply()
        except TargetError as exc:
            self._failing = True
            log.error("iSCSI target configuration could not be applied at start: %s", exc)
