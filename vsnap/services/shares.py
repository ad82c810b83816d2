"""NFS and SMB shares of filesystem volumes.

The export and share configurations are generated whole from the database after every
change and at start, so they can never drift from what the API reports. Samba's password
entries follow the vsnap accounts: an API login with a password Samba does not hold yet
updates Samba's entry.
"""
from __future__ import annotations

import builtins
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import threading

from sqlalchemy import select

from ..drivers.nfs import NfsExport
from ..drivers.smb import SambaDriver, SmbShare
from ..errors import ConflictError, NotFoundError, ServiceUnavailableError, ValidationError
from ..store.db import Store
from ..store.models import Share, SmbPassword, Volume, now, row_fields
from .attachments import Attachment, Undo
from .catalog import ApiId, Catalog, CatalogView, VolumeView
from .locking import StorageLock

log = logging.getLogger(__name__)

SHARE_TYPES = ("nfs", "smb")
ALL = "all"
MAX_HOSTS = 256
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_SAFE_IN_CONFIG = re.compile(r"[0-9A-Za-z.:/-]+")


def normalize_host(entry: object) -> str:
    """One allowed_hosts entry: 'all', an IP address, a CIDR subnet or a hostname."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValidationError("allowed_hosts entries must be non-empty strings")
    entry = entry.strip()
    if entry.lower() == ALL:
        return ALL
    if "%" in entry:  # an IPv6 scope id may hold any text: it would reach the config files
        raise ValidationError(f"allowed_hosts entry {entry!r}: scoped IPv6 addresses are not supported")
    try:
        if "/" in entry:
            return str(ipaddress.ip_network(entry, strict=False))
        return str(ipaddress.ip_address(entry))
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(entry) and not entry.replace(".", "").isdigit():
        return entry.lower()
    raise ValidationError(f"allowed_hosts entry {entry!r} is not a hostname, IP address, "
                          "subnet (CIDR) or 'all'")


def normalize_options(share_type: str, options: object) -> tuple[bool, list[str]]:
    if share_type not in SHARE_TYPES:
        raise ValidationError(f"share_type must be one of: {', '.join(SHARE_TYPES)}")
    options = options or {}
    if not isinstance(options, dict):
        raise ValidationError("share_options must be an object")
    if share_type == "smb":
        if options:
            raise ValidationError("smb shares take no share_options")
        return False, []
    unknown = set(options) - {"read_only", "allowed_hosts"}
    if unknown:
        raise ValidationError(f"Unknown share_options: {', '.join(sorted(unknown))}")
    read_only = options.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ValidationError("share_options.read_only must be true or false")
    hosts = options.get("allowed_hosts", [])
    if hosts is None:
        hosts = []
    if not isinstance(hosts, list) or len(hosts) > MAX_HOSTS:
        raise ValidationError(f"share_options.allowed_hosts must be a list of at most {MAX_HOSTS} entries")
    normalized = []
    for host in hosts:
        value = normalize_host(host)
        if not _SAFE_IN_CONFIG.fullmatch(value):  # the last word before a config file
            raise ValidationError(f"allowed_hosts entry {host!r} is not allowed")
        if value not in normalized:
            normalized.append(value)
    return read_only, normalized


class ShareService(Attachment):
    def __init__(self, store: Store, catalog: Catalog, volumes, nfs, smb: SambaDriver,
                 lock: StorageLock, group: str):
        self.store = store
        self.catalog = catalog
        self.volumes = volumes
        self.nfs = nfs
        self.smb = smb
        self.lock = lock
        self.group = group
        self._smb_sync = threading.Lock()
        self._memo_key = os.urandom(32)
        self._matched: dict[str, tuple[str, bytes]] = {}  # user -> (salt, keyed hash) known to match

    # -- rendering --------------------------------------------------------------------------
    @staticmethod
    def share_name(share: Share, volume: VolumeView) -> str:
        """What a client uses: the export path for NFS, `<pool>_<volume>` for SMB."""
        if share.share_type == "nfs":
            return volume.zfs_props["mountpoint"]  # shares are of filesystem volumes
        return f"{volume.pool_name}_{volume.row.name}"

    def render(self, share: Share, volume: VolumeView, detail: bool) -> dict:
        body: dict[str, object] = {"id": str(share.id), "name": self.share_name(share, volume),
                                   "vol_id": str(share.volume_id), "share_type": share.share_type}
        if detail:
            body["share_options"] = ({"read_only": share.read_only, "allowed_hosts": list(share.allowed_hosts)}
                                     if share.share_type == "nfs" else {})
        body["time_created"] = str(share.time_created)
        body["time_updated"] = str(share.time_updated)
        return body

    def describe_volume(self, row: Volume, body: dict) -> None:
        with self.store.session() as s:
            share = s.query(Share).filter(Share.volume_id == row.id).first()
            body["share_id"] = str(share.id) if share else None

    def _shares(self, view: CatalogView) -> list[tuple[Share, VolumeView]]:
        with self.store.session() as s:
            shares = s.query(Share).order_by(Share.id).all()
        return [(share, view.volumes[share.volume_id]) for share in shares if share.volume_id in view.volumes]

    def list(self) -> list[dict]:
        return [self.render(share, volume, False) for share, volume in self._shares(self.catalog.load())]

    def _find(self, share_id: ApiId | None = None, vol_id: ApiId | None = None,
              view: CatalogView | None = None) -> tuple[Share, VolumeView]:
        view = view or self.catalog.load()
        for share, volume in self._shares(view):
            if (share_id is not None and str(share.id) == str(share_id)) or \
                    (vol_id is not None and str(share.volume_id) == str(vol_id)):
                return share, volume
        if vol_id is not None:
            self.volumes.find(view, vol_id)  # 404 for an unknown volume first
            raise NotFoundError(f"Volume {vol_id} has no share")
        raise NotFoundError(f"Share {share_id} not found")

    def get(self, share_id: ApiId | None = None, vol_id: ApiId | None = None) -> dict:
        return self.render(*self._find(share_id, vol_id), True)

    # -- changing ---------------------------------------------------------------------------
    def create(self, vol_id: ApiId, share_type: str, share_options: object = None) -> dict:
        read_only, hosts = normalize_options(share_type, share_options)
        with self.lock.held():
            volume, view = self.volumes.view(vol_id)
            if volume.row.volume_type != "filesystem":
                raise ValidationError(f"Volume {volume.row.name} is a {volume.row.volume_type}: only "
                                      "filesystem volumes can be shared (LUNs are mapped to hosts)")
            self._check_smb_name(view, volume.row.id, share_type)
            with self.store.session() as s:
                if s.query(Share).filter(Share.volume_id == volume.row.id).first():
                    raise ConflictError(f"Volume {volume.row.name} is already shared")
                share = Share(volume_id=volume.row.id, share_type=share_type, read_only=read_only,
                              allowed_hosts=hosts)
                s.add(share)
                s.flush()
                share_id = share.id
            if share_id > self.nfs.max_share_id:
                self._drop(share_id)
                raise ConflictError("No more share ids are available")
            self._apply_or_undo(lambda: self._drop(share_id), view)
        return self.get(share_id=share_id)

    def update(self, vol_id: ApiId, share_type: str, share_options: object = None) -> dict:
        read_only, hosts = normalize_options(share_type, share_options)
        with self.lock.held():
            view = self.catalog.load()
            share, _ = self._find(vol_id=vol_id, view=view)
            self._check_smb_name(view, share.volume_id, share_type)
            before = (share.share_type, share.read_only, list(share.allowed_hosts))
            self._set(share.id, share_type, read_only, hosts)
            self._apply_or_undo(lambda: self._set(share.id, *before), view)
        return self.get(share_id=share.id)

    def delete(self, share_id: ApiId | None = None, vol_id: ApiId | None = None) -> None:
        with self.lock.held():
            share, _ = self._find(share_id, vol_id)
            self._drop(share.id)
            self.apply()

    def _set(self, share_id: int, share_type: str, read_only: bool, hosts: builtins.list[str]) -> None:
        with self.store.session() as s:
            row = s.get(Share, share_id)
            row.share_type, row.read_only, row.allowed_hosts, row.time_updated = \
                share_type, read_only, hosts, now()

    def _drop(self, share_id: int) -> None:
        with self.store.session() as s:
            row = s.get(Share, share_id)
            if row is not None:
                s.delete(row)

    def _apply_or_undo(self, undo, view: CatalogView) -> None:
        try:
            self.apply(view=view)
        except Exception as exc:
            undo()
            try:
                self.apply(view=view)
            except Exception:
                log.exception("could not restore the file sharing configuration")
            raise ServiceUnavailableError(f"The file sharing service refused the change: {exc}") from exc

    def _check_smb_name(self, view: CatalogView, vol_id: int, share_type: str) -> None:
        """SMB share names are `<pool>_<volume>`, and '_' may stand in either name: two shares
        must never meet under one name (Samba would merge them)."""
        if share_type != "smb":
            return
        wanted = f"{view.volumes[vol_id].pool_name}_{view.volumes[vol_id].row.name}".lower()
        for share, volume in self._shares(view):
            if share.share_type == "smb" and share.volume_id != vol_id \
                    and self.share_name(share, volume).lower() == wanted:
                raise ConflictError(f"SMB share name {wanted} is taken by the share of volume "
                                    f"{volume.row.name}; rename one of the volumes")

    def apply(self, exclude_pool: str | None = None, exclude_volume: int | None = None,
              view: CatalogView | None = None) -> None:
        """Writes the NFS exports and SMB shares from the database and reloads both servers;
        a pool or volume about to be renamed is left out, so the servers let go of it. The
        shares come from the database; `view` (the volumes' paths) is read when not given."""
        view = view or self.catalog.load()
        exports, smb = [], []
        for share, volume in self._shares(view):
            if volume.pool_name == exclude_pool or volume.row.id == exclude_volume:
                continue
            path = volume.zfs_props["mountpoint"]
            if share.share_type == "nfs":
                clients = ["*"] if ALL in share.allowed_hosts else list(share.allowed_hosts)
                exports.append(NfsExport(share.id, path, share.read_only, clients))
            else:
                smb.append(SmbShare(self.share_name(share, volume), path))
        self.nfs.apply(exports)
        self.smb.apply(smb)

    # -- what shares hold: an Attachment of volumes and pools (attachments.py) ----------------
    # Each letting-go returns the undo that puts things back if the delete or rename then fails.
    def volume_going(self, vol_id: int) -> Undo | None:
        return self._drop_and_apply(Share.volume_id == vol_id)

    def pool_going(self, pool_id: int, pool_name: str) -> Undo | None:
        return self._drop_and_apply(Share.volume_id.in_(
            select(Volume.id).where(Volume.pool_id == pool_id)))

    def _drop_and_apply(self, which):
        with self.store.session() as s:
            rows = s.query(Share).filter(which).all()
            saved = [row_fields(r) for r in rows]
            for row in rows:
                s.delete(row)
        if not saved:
            return None
        try:
            self.apply()
        except Exception:
            self._restore(saved)
            raise
        return lambda: self._restore(saved)

    def _restore(self, saved: builtins.list[dict]) -> None:
        with self.store.session() as s:
            for fields in saved:
                s.merge(Share(**fields))
        self.apply()

    def volume_renaming(self, vol_id: int) -> Undo | None:
        self.apply(exclude_volume=vol_id)
        return self.apply

    def pool_renaming(self, pool_name: str) -> Undo | None:
        # The pool is exported and imported under its new name: its shares must let go first.
        self.apply(exclude_pool=pool_name)
        return self.apply

    def volume_renamed(self, vol_id: int, old_dataset: str, new_dataset: str) -> None:
        self.apply()

    def pool_renamed(self, old_name: str, new_name: str) -> None:
        self.apply()

    def volume_released(self, vol_id: int) -> None:
        self.apply(exclude_volume=vol_id)

    def pool_released(self, pool_name: str) -> None:
        self.apply(exclude_pool=pool_name)

    # -- Samba's passwords ------------------------------------------------------------------
    def sync_smb_password(self, user: str, password: str) -> None:
        """Called after a successful API login: makes Samba hold the same password."""
        # scrypt is slow on purpose: a password already found to match the stored digest is
        # remembered in this process (as a keyed hash), so later logins skip it.
        known = hmac.new(self._memo_key, f"{user}\0{password}".encode("utf-8", "surrogatepass"),
                         hashlib.sha256).digest()
        with self._smb_sync:
            with self.store.session() as s:
                row = s.get(SmbPassword, user)
                if row and (self._matched.get(user) == (row.salt, known) or _digest(password, row.salt) == row.digest):
                    self._matched[user] = (row.salt, known)
                    return
            try:
                self.smb.set_password(user, password)
            except Exception as exc:  # SMB must not break API logins
                log.error("could not set the Samba password of %s: %s", user, exc)
                return
            salt = os.urandom(16).hex()
            with self.store.session() as s:
                row = s.get(SmbPassword, user) or SmbPassword(user=user)
                row.salt, row.digest = salt, _digest(password, salt)
                s.merge(row)
            self._matched[user] = (salt, known)

    def prune_smb_users(self, members: set[str]) -> None:
        """Accounts that left the vsnap group lose their Samba entry."""
        for user in self.smb.users():
            if user not in members:
                self.smb.remove_user(user)
                with self.store.session() as s:
                    row = s.get(SmbPassword, user)
                    if row:
                        s.delete(row)

    def recover(self, members: set[str]) -> None:
        """At start: the servers' configurations rewritten from the database."""
        with self.lock.held():
            self.apply()
        self.prune_smb_users(members)


def _digest(password: str, salt: str) -> str:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=bytes.fromhex(salt),
                          n=1 << 14, r=8, p=1).hex()
