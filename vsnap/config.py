"""Settings, read once from the environment.

`$VSNAP_STATE/lab/lab.env` (written by the lab) supplies defaults such as VSNAP_DISKS;
a variable set in the environment always wins.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def _split_list(value: str | None) -> list[str]:
    if not value:
        return []
    return [item for item in value.replace(",", " ").split() if item]


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    port: int = 8900
    disks: list[str] = field(default_factory=list)  # device paths or fnmatch patterns
    admin_user: str = "vsnapadmin"
    admin_group: str = "vsnap"
    pam_service: str = "vsnap"
    auth_cache_seconds: float = 3.0
    auth_fail_limit: int = 10
    auth_fail_window: float = 60.0
    command_timeout: float = 120.0
    iqn_prefix: str = "iqn.2026-11.local.vsnap"
    trusted_proxy: bool = False
    ssh_port: int = 8922
    mount_root: str = "/vsnap"  # pools mount at <mount_root>/<pool>, never over system paths
    nfs_exports: Path | None = None  # the file nfs-ganesha %includes; default in the state dir
    ganesha_pidfile: Path | None = None
    ganesha_log: Path | None = None  # followed to know when ganesha has reread the exports
    # Added to a share's id to make its NFS export id (fsid): appliances sharing one NFS
    # server (the lab's) each get a range of their own.
    nfs_export_id_base: int = 0
    # The kernel NFS server's exports file of ours (one per appliance on a machine).
    kernel_exports: Path = Path("/etc/exports.d/vsnap.exports")
    smb_conf: Path | None = None  # smbd's configuration; shares.conf beside it is ours
    # The background worker: how often it checks that the iSCSI target still holds our
    # configuration (tgt forgets it on restart), and rebuilds it in full regardless.
    worker_enabled: bool = True
    target_check_interval: float = 5.0
    target_resync_interval: float = 60.0
    # Replication: sessions of different relationships that may run at once, how long a
    # transfer may make no progress before it is ended, and the login used on partners.
    repl_parallel: int = 2
    repl_stall_seconds: float = 60.0
    # How long GET /api/partner/<id> waits for the partner to say the trust still works, and
    # how often the worker retries telling a partner what it missed (a relationship deleted
    # here while it was unreachable).
    partner_check_timeout: float = 10.0
    repl_cancel_wait: float = 30.0  # how long a cancel of a running session waits for its end
    partner_notice_interval: float = 30.0
    ssh_user: str = "root"
    # Reads of ZFS are kept while nothing changed through the appliance (any process), and at
    # most this long (or ten times what the last full read took) for changes made outside it.
    catalog_max_age: float = 2.0
    ssh_host_key: Path | None = None  # the public host key partners pin; see ssh_host_key_files

    @property
    def database_path(self) -> Path:
        return self.state_dir / "vsnap.db"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database_path}"

    @property
    def tls_cert(self) -> Path:
        return self.state_dir / "tls" / "vsnap.crt"

    @property
    def tls_key(self) -> Path:
        return self.state_dir / "tls" / "vsnap.key"

    @property
    def nfs_exports_file(self) -> Path:
        return self.nfs_exports or self.state_dir / "nfs" / "exports.conf"

    @property
    def smb_conf_file(self) -> Path:
        return self.smb_conf or self.state_dir / "samba" / "smb.conf"

    @property
    def smb_shares_file(self) -> Path:
        return self.smb_conf_file.parent / "shares.conf"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "storage.lock"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def ssh_host_key_files(self) -> list[Path]:
        """The lab's sshd keeps its host key in the state directory; a production appliance
        uses the system sshd's."""
        if self.ssh_host_key:
            return [self.ssh_host_key]
        return [self.ssh_dir / "ssh_host_ed25519_key.pub", Path("/etc/ssh/ssh_host_ed25519_key.pub")]

    @property
    def catalog_generation_file(self) -> Path:
        return self.state_dir / "catalog.generation"

    @property
    def worker_lock_file(self) -> Path:
        return self.state_dir / "worker.lock"

    @property
    def system_id_file(self) -> Path:
        return self.state_dir / "system-id"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        state_dir = Path(env.get("VSNAP_STATE", "/var/lib/vsnap"))
        merged = {**_read_env_file(state_dir / "lab" / "lab.env"), **env}
        return cls(
            state_dir=state_dir,
            port=int(merged.get("VSNAP_PORT", 8900)),
            disks=_split_list(merged.get("VSNAP_DISKS")),
            admin_user=merged.get("VSNAP_ADMIN_USER", "vsnapadmin"),
            admin_group=merged.get("VSNAP_GROUP", "vsnap"),
            pam_service=merged.get("VSNAP_PAM_SERVICE", "vsnap"),
            auth_cache_seconds=float(merged.get("VSNAP_AUTH_CACHE_SECONDS", 3.0)),
            auth_fail_limit=int(merged.get("VSNAP_AUTH_FAIL_LIMIT", 10)),
            auth_fail_window=float(merged.get("VSNAP_AUTH_FAIL_WINDOW", 60.0)),
            command_timeout=float(merged.get("VSNAP_COMMAND_TIMEOUT", 120.0)),
            iqn_prefix=merged.get("VSNAP_IQN_PREFIX", "iqn.2026-11.local.vsnap"),
            trusted_proxy=merged.get("VSNAP_TRUSTED_PROXY", "0").lower() in ("1", "true", "yes"),
            ssh_port=int(merged.get("VSNAP_SSH_PORT", 8922)),
            mount_root=merged.get("VSNAP_MOUNT_ROOT", "/vsnap"),
            nfs_exports=Path(merged["VSNAP_NFS_EXPORTS"]) if merged.get("VSNAP_NFS_EXPORTS") else None,
            ganesha_pidfile=Path(merged.get("VSNAP_GANESHA_PIDFILE") or "/var/lib/vsnap-lab/run/ganesha.pid"),
            nfs_export_id_base=int(merged.get("VSNAP_NFS_EXPORT_ID_BASE", 0)),
            ganesha_log=Path(merged["VSNAP_GANESHA_LOG"]) if merged.get("VSNAP_GANESHA_LOG") else None,
            kernel_exports=Path(merged.get("VSNAP_KERNEL_EXPORTS") or cls.kernel_exports),
            smb_conf=Path(merged["VSNAP_SMB_CONF"]) if merged.get("VSNAP_SMB_CONF") else None,
            worker_enabled=merged.get("VSNAP_WORKER", "1").lower() not in ("0", "false", "no"),
            target_check_interval=float(merged.get("VSNAP_TARGET_CHECK_INTERVAL", 5.0)),
            target_resync_interval=float(merged.get("VSNAP_TARGET_RESYNC_INTERVAL", 60.0)),
            repl_parallel=max(1, int(merged.get("VSNAP_REPL_PARALLEL", 2))),
            repl_stall_seconds=float(merged.get("VSNAP_REPL_STALL_SECONDS", 60.0)),
            partner_check_timeout=float(merged.get("VSNAP_PARTNER_CHECK_TIMEOUT", 10.0)),
            repl_cancel_wait=float(merged.get("VSNAP_REPL_CANCEL_WAIT", 30.0)),
            partner_notice_interval=float(merged.get("VSNAP_PARTNER_NOTICE_INTERVAL", 30.0)),
            ssh_user=merged.get("VSNAP_SSH_USER", "root"),
            catalog_max_age=float(merged.get("VSNAP_CATALOG_MAX_AGE", 2.0)),
            ssh_host_key=Path(merged["VSNAP_SSH_HOST_KEY"]) if merged.get("VSNAP_SSH_HOST_KEY") else None,
        )
