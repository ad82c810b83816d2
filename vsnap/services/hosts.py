"""Hosts (storage clients known by their iSCSI initiator names) and the LUNs mapped to them.

Every change is written to the database, then the target is made to match (targets.py); if
the target refuses, the database change is undone. A crash between the two is settled at
the next start, when the target is rebuilt from the database.
"""
from __future__ import annotations

import builtins
import logging
import re

from ..errors import ConflictError, NotFoundError, ValidationError
from ..store.db import Store
from ..store.models import Host, HostInitiator, LunMapping, Volume, now, row_fields
from .attachments import Attachment, Undo
from .catalog import FILEBACKED, READY, ApiId, Catalog, parse_id
from .locking import StorageLock
from .targets import TargetService

log = logging.getLogger(__name__)

MAX_HOST_NAME = 255
MAX_INITIATORS = 64
MAX_IQN = 223  # RFC 3720: iSCSI names are at most 223 bytes
MAPPABLE = ("lun", FILEBACKED)

# RFC 3720/3721: iqn.<yyyy-mm>.<reversed domain>[:<anything unique>], eui.<16 hex>,
# naa.<16 or 32 hex>. Names compare case-insensitively; iqn names are kept lower case, eui
# and naa hex upper case, as initiators show them.
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_IQN = re.compile(rf"iqn\.[0-9]{{4}}-(0[1-9]|1[0-2])\.{_LABEL}(\.{_LABEL})*(:[a-z0-9.:-]+)?")
_EUI = re.compile(r"eui\.[0-9A-F]{16}")
_NAA = re.compile(r"naa\.([0-9A-F]{16}|[0-9A-F]{32})")


def normalize_iqn(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("iqns entries must be non-empty strings")
    if len(value) > MAX_IQN:
        raise ValidationError(f"Initiator name is too long: at most {MAX_IQN} characters")
    kind = value[:4].lower()
    if kind == "iqn.":
        name = value.lower()
        if _IQN.fullmatch(name):
            return name
    elif kind in ("eui.", "naa."):
        name = kind + value[4:].upper()
        if (_EUI if kind == "eui." else _NAA).fullmatch(name):
            return name
    raise ValidationError(
        f"{value!r} is not an iSCSI initiator name: expected iqn.yyyy-mm.reversed.domain[:identifier] "
        "(letters, digits, '-', '.', ':'), eui. and 16 hex digits, or naa. and 16 or 32 hex digits")


def normalize_iqns(values: object) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise ValidationError("iqns must be a list of initiator names")
    if len(values) > MAX_INITIATORS:
        raise ValidationError(f"A host has at most {MAX_INITIATORS} initiators")
    result: list[str] = []
    for value in values:
        name = normalize_iqn(value)
        if name not in result:
            result.append(name)
    return result


_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # as every other name: a host name, an FQDN


def validate_host_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("Host name is required")
    if len(name) > MAX_HOST_NAME:
        raise ValidationError(f"Host name is too long: at most {MAX_HOST_NAME} characters")
    if not _HOST_NAME.fullmatch(name):
        raise ValidationError("Host name must start with a letter or digit and contain only letters, digits, "
                              "'_', '-' and '.'")
    return name


class HostService(Attachment):
    def __init__(self, store: Store, targets: TargetService, catalog: Catalog, volumes, lock: StorageLock):
        self.store = store
        self.targets = targets
        self.catalog = catalog
        self.volumes = volumes
        self.lock = lock

    # -- reading ----------------------------------------------------------------------------
    def _row(self, s, host_id=None, name=None) -> Host:
        if host_id is not None:
            row_id = parse_id(host_id)
            row = s.get(Host, row_id) if row_id is not None else None
            if row is None or (name is not None and row.name != name):
                raise NotFoundError(f"Host {host_id} not found")
            return row
        row = s.query(Host).filter(Host.name == name).first()
        if row is None:
            raise NotFoundError(f"Host {name} not found")
        return row

    def _render(self, s, host: Host, detail: bool) -> dict:
        iqns = [i.iqn for i in s.query(HostInitiator).filter(HostInitiator.host_id == host.id)
                .order_by(HostInitiator.position)]
        body = {"id": str(host.id), "name": host.name, "iqns": iqns}
        if detail:
            body["mapped_luns"] = [{"lun": str(m.lun), "vol_id": str(m.volume_id)} for m in
                                   s.query(LunMapping).filter(LunMapping.host_id == host.id).order_by(LunMapping.lun)]
        body["time_created"] = str(host.time_created)
        body["time_updated"] = str(host.time_updated)
        return body

    def list(self) -> list[dict]:
        self.catalog.load()  # mappings of volumes destroyed outside the API go with them
        with self.store.session() as s:
            return [self._render(s, h, False) for h in s.query(Host).order_by(Host.id)]

    def get(self, host_id: ApiId | None = None, name: str | None = None) -> dict:
        self.catalog.load()
        with self.store.session() as s:
            return self._render(s, self._row(s, host_id, name), True)

    def describe_volume(self, row: Volume, body: dict) -> None:
        with self.store.session() as s:
            body["host_ids"] = [str(m.host_id) for m in s.query(LunMapping)
                                .filter(LunMapping.volume_id == row.id).order_by(LunMapping.host_id)]

    # -- hosts ------------------------------------------------------------------------------
    def _check_initiators_free(self, s, iqns: builtins.list[str], host_id: int | None) -> None:
        taken = s.query(HostInitiator).filter(HostInitiator.iqn.in_(iqns)).all()
        for row in taken:
            if row.host_id != host_id:
                owner = s.get(Host, row.host_id)
                raise ConflictError(f"Initiator {row.iqn} already belongs to host {owner.name} "
                                    f"(id {owner.id})")

    def _check_name_free(self, s, name: str, host_id: int | None) -> None:
        other = s.query(Host).filter(Host.name == name).first()
        if other is not None and other.id != host_id:
            raise ConflictError(f"A host named {name} already exists (id {other.id})")

    def create(self, name: str, iqns: builtins.list[str] | None = None) -> dict:
        validate_host_name(name)
        iqns = normalize_iqns(iqns)
        with self.lock.held():
            with self.store.session() as s:
                self._check_name_free(s, name, None)
                self._check_initiators_free(s, iqns, None)
                host = Host(name=name)
                s.add(host)
                s.flush()
                host_id = host.id
                s.add_all(HostInitiator(iqn=iqn, host_id=host_id, position=i) for i, iqn in enumerate(iqns))
            self.targets.apply_or_undo(lambda: self._drop_host(host_id))
        return self.get(host_id)

    def update(self, host_id: ApiId, name: str | None = None, iqns: builtins.list[str] | None = None) -> dict:
        if name is not None:
            validate_host_name(name)
        if iqns is not None:
            iqns = normalize_iqns(iqns)
        with self.lock.held():
            with self.store.session() as s:
                host = self._row(s, host_id)
                saved = self._save_host(s, host)
                if name is not None:
                    self._check_name_free(s, name, host.id)
                    host.name = name
                if iqns is not None:
                    self._check_initiators_free(s, iqns, host.id)
                    s.query(HostInitiator).filter(HostInitiator.host_id == host.id).delete()
                    s.flush()
                    s.add_all(HostInitiator(iqn=iqn, host_id=host.id, position=i) for i, iqn in enumerate(iqns))
                host.time_updated = now()
                host_id = host.id
            if iqns is not None:  # access follows the new initiator list at once
                self.targets.apply_or_undo(lambda: self._restore_host(saved))
        return self.get(host_id)

    def delete(self, host_id: ApiId) -> None:
        """Deletes a host; its LUNs are unmapped first (10.7)."""
        with self.lock.held():
            with self.store.session() as s:
                host = self._row(s, host_id)
                saved = self._save_host(s, host)
            self._drop_host(host.id)
            self.targets.apply_or_undo(lambda: self._restore_host(saved))

    @staticmethod
    def _save_host(s, host: Host) -> dict:
        return {"host": row_fields(host),
                "initiators": [row_fields(r) for r in s.query(HostInitiator).filter(HostInitiator.host_id == host.id)],
                "mappings": [row_fields(r) for r in s.query(LunMapping).filter(LunMapping.host_id == host.id)]}

    def _restore_host(self, saved: dict) -> None:
        with self.store.session() as s:
            host_id = saved["host"]["id"]
            s.query(HostInitiator).filter(HostInitiator.host_id == host_id).delete()
            s.merge(Host(**saved["host"]))
            s.flush()
            s.add_all(HostInitiator(**f) for f in saved["initiators"])
            s.add_all(LunMapping(**f) for f in saved["mappings"]
                      if s.get(Volume, f["volume_id"]) is not None and s.get(LunMapping, f["id"]) is None)

    def _drop_host(self, host_id: int) -> None:
        with self.store.session() as s:
            host = s.get(Host, host_id)
            if host is not None:
                s.delete(host)  # initiators and mappings go with it (ON DELETE CASCADE)

    # -- mapping ----------------------------------------------------------------------------
    def map(self, host_id: ApiId, vol_id: ApiId) -> dict:
        with self.lock.held():
            view = self.catalog.load()
            with self.store.session() as s:
                host = self._row(s, host_id)
            volume = self.volumes.find(view, vol_id)
            if volume.row.volume_type not in MAPPABLE:
                raise ValidationError(f"Volume {volume.row.name} is a {volume.row.volume_type}: only lun "
                                      "and filebackedlun volumes can be mapped to hosts")
            if volume.row.state != READY:
                raise ConflictError(f"Volume {volume.row.name} is busy ({volume.row.state})")
            self.volumes.backing(volume, view)  # refuses a LUN whose data cannot be served
            driver = self.targets.driver
            with self.store.session() as s:
                mine = s.query(LunMapping).filter(LunMapping.host_id == host.id).all()
                for m in mine:
                    if m.volume_id == volume.row.id:
                        raise ConflictError(f"Volume {volume.row.name} is already mapped to host "
                                            f"{host.name} as LUN {m.lun}")
                used = {m.lun for m in mine}
                lun = next((n for n in range(driver.first_lun, driver.max_lun + 1) if n not in used), None)
                if lun is None:
                    raise ConflictError(f"Host {host.name} has no free LUN number "
                                        f"({driver.first_lun}-{driver.max_lun} are all in use)")
                mapping = LunMapping(host_id=host.id, volume_id=volume.row.id, lun=lun)
                s.add(mapping)
                s.flush()
                mapping_id = mapping.id
            self.targets.apply_or_undo(lambda: self._drop_mappings(LunMapping.id == mapping_id), view)
        return {"vol_id": str(volume.row.id), "lun": str(lun)}

    def unmap(self, host_id: ApiId, vol_id: ApiId) -> None:
        with self.lock.held():
            view = self.catalog.load()
            with self.store.session() as s:
                host = self._row(s, host_id)
            volume = self.volumes.find(view, vol_id)
            saved = self._drop_mappings((LunMapping.host_id == host.id) & (LunMapping.volume_id == volume.row.id))
            if not saved:
                raise NotFoundError(f"Volume {volume.row.name} is not mapped to host {host.name}")
            self.targets.apply_or_undo(lambda: self._restore_mappings(saved), view)

    def _drop_mappings(self, which) -> builtins.list[dict]:
        with self.store.session() as s:
            rows = s.query(LunMapping).filter(which).all()
            saved = [row_fields(r) for r in rows]
            for row in rows:
                s.delete(row)
        return saved

    def _restore_mappings(self, saved: builtins.list[dict]) -> None:
        with self.store.session() as s:
            for fields in saved:
                if s.get(Host, fields["host_id"]) and s.get(Volume, fields["volume_id"]):
                    s.merge(LunMapping(**fields))

    # -- what LUN mappings hold: an Attachment of volumes and pools (attachments.py) ----------
    # Each letting-go returns the undo that puts things back if the delete or rename then fails.
    def _unmap_all(self, which) -> Undo | None:
        saved = self._drop_mappings(which)
        if not saved:
            return None
        self.targets.apply_or_undo(lambda: self._restore_mappings(saved))

        def undo():
            self._restore_mappings(saved)
            self.targets.apply()
        return undo

    def volume_going(self, vol_id: int) -> Undo | None:
        return self._unmap_all(LunMapping.volume_id == vol_id)

    def pool_going(self, pool_id: int, pool_name: str) -> Undo | None:
        with self.store.session() as s:
            vol_ids = [v.id for v in s.query(Volume).filter(Volume.pool_id == pool_id)]
        return self._unmap_all(LunMapping.volume_id.in_(vol_ids))

    def volume_renaming(self, vol_id: int) -> Undo | None:
        # The target holds the LUN's file open, which keeps the dataset from unmounting.
        self.targets.apply(exclude_volume=vol_id)
        return self.targets.apply

    def pool_renaming(self, pool_name: str) -> Undo | None:
        self.targets.apply(exclude_pool=pool_name)
        return self.targets.apply

    def volume_renamed(self, vol_id: int, old_dataset: str, new_dataset: str) -> None:
        self.targets.apply()

    def pool_renamed(self, old_name: str, new_name: str) -> None:
        self.targets.apply()

    def volume_resized(self, vol_id: int) -> None:
        self.targets.apply(refresh=frozenset({vol_id}))

    def volume_released(self, vol_id: int) -> None:
        self.targets.apply(exclude_volume=vol_id)

    def pool_released(self, pool_name: str) -> None:
        self.targets.apply(exclude_pool=pool_name)
