"""The appliance itself: identity, versions, and initialisation."""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable

from sqlalchemy import select, update

from ..config import Settings
from ..drivers.packages import PackageDriver
from ..drivers.zfs import ZfsDriver
from ..errors import ApiError, ConflictError
from ..store.db import Store
from ..store.models import Setting
from .owner import current_owner, owner_alive

log = logging.getLogger(__name__)

NOT_INITIALIZED, INITIALIZING, READY, FAILED = "Not Initialized", "Initializing", "Ready", "Failed"
API_VERSION = "1.0"


def load_or_create_system_id(path: Path) -> str:
    """The appliance's 32-hex id, made once. It lives beside the database, not in it, so that a
    lost database can still recognise the pools this appliance stamped."""
    try:
        return _valid_system_id(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(uuid.uuid4().hex + "\n")
    try:
        os.link(tmp, path)  # atomic create-if-absent: two racing first starts agree on one id
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _valid_system_id(path)


def _valid_system_id(path: Path) -> str:
    value = path.read_text().strip()
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        # Never replaced silently: the id is stamped on this appliance's pools.
        raise RuntimeError(f"{path} is corrupt (expected 32 hex characters); restore it from a backup")
    return value


class ApplianceIdentity:
    """Who this appliance is (its id, stamped on its pools) and whether it keeps several pools:
    what the pool service needs of the system, apart from the system's init, which needs pools."""

    def __init__(self, settings: Settings, store: Store):
        self.store = store
        self.id = load_or_create_system_id(settings.system_id_file)

    @property
    def multipool(self) -> bool:
        with self.store.session() as s:
            row = s.get(Setting, "multipool")
            return row is not None and row.value == "true"


class SystemService:
    def __init__(self, settings: Settings, store: Store, packages: PackageDriver, zfs: ZfsDriver,
                 identity: ApplianceIdentity | None = None,
                 make_default_pool: Callable[[], object] | None = None):
        """`make_default_pool`: what init runs to make the default pool (the pool service's
        create_default); without one, init can only be asked with skip_pool."""
        self.settings = settings
        self.store = store
        self.packages = packages
        self.zfs = zfs
        self.identity = identity or ApplianceIdentity(settings, store)
        self.id = self.identity.id
        self._init_lock = threading.Lock()
        self.make_default_pool = make_default_pool

    # -- settings ---------------------------------------------------------------------------
    def _get(self, session, key: str, default: str | None = None) -> str | None:
        row = session.get(Setting, key)
        return row.value if row else default

    def _set(self, session, key: str, value: str | None) -> None:
        row = session.get(Setting, key)
        if row is None:
            session.add(Setting(key=key, value=value))
        else:
            row.value = value

    @property
    def multipool(self) -> bool:
        return self.identity.multipool

    # -- info -------------------------------------------------------------------------------
    def _status(self) -> tuple[str | None, str | None]:  # (status, message); the column is nullable
        keys = ("init_status", "init_message", "init_owner")
        with self.store.session() as s:
            # One statement, one snapshot: reads one by one could see an init's start in one and
            # its end in the next (a status still Initializing beside the owner it cleared).
            query = select(Setting.key, Setting.value).where(Setting.key.in_(keys))
            rows = {key: value for key, value in s.execute(query)}
            status = rows["init_status"] if "init_status" in rows else NOT_INITIALIZED
            message, owner = rows.get("init_message"), rows.get("init_owner")
            if status != INITIALIZING or owner_alive(owner):
                return status, message
            # The process running init died (crash, kill -9): say so instead of spinning forever,
            # recorded only if that init is still the one in the database.
            owner_now = select(Setting.value).where(Setting.key == "init_owner").scalar_subquery()
            failed = s.execute(update(Setting).where(Setting.key == "init_status", Setting.value == INITIALIZING,
                                                     owner_now.is_not_distinct_from(owner))
                               .values(value=FAILED))
            if failed.rowcount != 1:  # it ended, or another began, meanwhile
                s.rollback()
                return self._status()
            message = "Initialization was interrupted; run init again"
            self._set(s, "init_message", message)
            return FAILED, message

    def stats(self, pools: list[str]) -> dict:
        """ZFS cache and dedup-table figures in bytes (strings), null where the ZFS
        implementation does not report them. The dedup table is summed over `pools` (no pool:
        no table, "0")."""
        arc = self.zfs.arc_stats()

        def arc_value(*names: str) -> str | None:
            for name in names:
                if name in arc:
                    return str(arc[name])
            return None
        disk = core = 0
        known = True
        for pool in pools:
            sizes = self.zfs.ddt_sizes(pool)
            if sizes is None:
                known = False
                break
            disk, core = disk + sizes[0], core + sizes[1]
        return {
            "size_arc_max": arc_value("c_max"),
            "size_arc_used": arc_value("size"),
            "size_ddt_core": str(core) if known else None,
            "size_ddt_disk": str(disk) if known else None,
            # OpenZFS before 2.2 has arc_meta_limit/arc_meta_used; 2.2 has no meta limit.
            "size_zfs_arc_meta_max": arc_value("arc_meta_limit", "arc_meta_max"),
            "size_zfs_arc_meta_used": arc_value("arc_meta_used", "metadata_size"),
        }

    def info(self) -> dict:
        versions = self.packages.versions(["nfs-ganesha", "nfs-kernel-server", "nginx", "samba"])
        os_name, os_version = self.packages.os_release()
        status, message = self._status()
        try:
            vsnap_version = metadata.version("vsnap")
        except metadata.PackageNotFoundError:
            vsnap_version = None
        try:
            gunicorn_version = metadata.version("gunicorn")
        except metadata.PackageNotFoundError:
            gunicorn_version = None
        hostname = socket.gethostname()
        fqdn = socket.getfqdn()
        if fqdn.startswith("localhost"):  # /etc/hosts maps us to loopback only: no domain known
            fqdn = hostname
        info = {
            "fqdn": fqdn,
            "hostname": hostname,
            "id": self.id,
            "init_status": status,
            "multipool": self.multipool,
            "api_version": API_VERSION,
            "nfs_version": versions["nfs-kernel-server"] or versions["nfs-ganesha"],
            "nginx_version": versions["nginx"],
            "os_name": os_name,
            "os_version": os_version,
            "samba_version": versions["samba"],
            # vsnap serves through gunicorn, not uWSGI: the field carries the WSGI server's version.
            "uwsgi_version": gunicorn_version,
            "vsnap_version": vsnap_version,
            "zfs_version": self.zfs.version(),
            "features": self.features(),
        }
        if message:
            info["message"] = message
        return info

    def features(self) -> list[str]:
        """What this appliance offers beyond vSnap 1.0, so clients can tell: a bandwidth limit
        per relationship (the appliance's own relay: everywhere); where ZFS can (OpenZFS, not
        zfs-fuse), compressed replication streams, transfers that resume where they broke off,
        bookmarks that keep a relationship's incrementals going when its snapshots are deleted, and
        encrypted pools."""
        found = ["bandwidth_limit"]
        streams = self.zfs.stream_features()
        if "compressed" in streams:
            found.append("compressed_send")
        if "resumable" in streams:
            found.append("resumable_send")
        if "bookmarks" in streams:
            found.append("replication_bookmarks")
        if "encryption" in streams and "raw" in streams:  # encrypted pools, replicated raw (send -w)
            found.append("encryption")
        return sorted(found)

    # -- init -------------------------------------------------------------------------------
    def init(self, *, run_async: bool, multipool: bool | None, skip_pool: bool) -> dict:
        """Changes only what it is given: multipool None leaves the setting as it is."""
        with self._init_lock:
            with self.store.session() as s:
                status = self._get(s, "init_status", NOT_INITIALIZED)
                if status == INITIALIZING and owner_alive(self._get(s, "init_owner")):
                    raise ConflictError("Initialization is already in progress")
                self._set(s, "init_status", INITIALIZING)
                self._set(s, "init_message", None)
                self._set(s, "init_owner", current_owner())
                if multipool is not None:
                    self._set(s, "multipool", "true" if multipool else "false")
        if run_async:
            threading.Thread(target=self._run_init, args=(skip_pool,), name="vsnap-init",
                             daemon=True).start()
        else:
            failure = self._run_init(skip_pool)
            if isinstance(failure, ApiError):
                raise failure  # a synchronous caller gets the reason as an error, too
        return self.info()

    def _run_init(self, skip_pool: bool) -> Exception | None:
        try:
            if not skip_pool:
                if self.make_default_pool is None:
                    raise RuntimeError("this appliance was built without a way to make its default pool")
                self.make_default_pool()
        except Exception as exc:  # reported through init_status, as the spec asks
            log.exception("init failed")
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self._finish(FAILED, message)
            return exc
        self._finish(READY, None)
        return None

    def _finish(self, status: str, message: str | None) -> None:
        with self.store.session() as s:
            self._set(s, "init_status", status)
            self._set(s, "init_message", message)
            self._set(s, "init_owner", None)

