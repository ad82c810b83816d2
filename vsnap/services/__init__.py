"""The service layer: what the API asks for, done through the drivers and recorded in the store."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import Settings
from ..drivers.accounts import AccountDriver
from ..drivers.disks import DiskDriver
from ..drivers.firewall import FirewallDriver, table_name
from ..drivers.iscsi import TargetError, choose_target_driver
from ..drivers.lunfile import LunFileDriver
from ..drivers.network import NetworkDriver
from ..drivers.nfs import choose_nfs_driver
from ..drivers.packages import PackageDriver
from ..drivers.runner import CommandNotFound, CommandTimeout, Runner
from ..drivers.smb import SambaDriver
from ..drivers.ssh import SshDriver
from ..drivers.zfs import ZfsDatasetOps, ZfsDriver, ZfsPoolOps
from ..errors import ApiError, ServiceUnavailableError
from ..faults import runner_for
from ..store.db import Store
from ..store.generation import Generation
from .attachments import Attachments
from .audit import AuditService
from .auth import AuthService, StoredFailures
from .catalog import Catalog
from .disks import DiskService
from .hosts import HostService
from .locking import StorageLock
from .network import NetworkService, ServicePorts
from .pools import PoolService
from .replication import ReplicationService
from .shares import ShareService
from .snapshots import SnapshotService
from .system import ApplianceIdentity, SystemService
from .targets import TargetService
from .users import UserService
from .volumes import VolumeService


@dataclass
class Services:
    settings: Settings
    store: Store
    auth: AuthService
    system: SystemService
    users: UserService
    network: NetworkService
    targets: TargetService
    disks: DiskService
    pools: PoolService
    catalog: Catalog
    volumes: VolumeService
    snapshots: SnapshotService
    shares: ShareService
    hosts: HostService
    replication: ReplicationService
    audit: AuditService

    @classmethod
    def build(cls, settings: Settings, runner: Runner | None = None) -> "Services":
        generation = Generation(settings.catalog_generation_file)
        runner = runner or runner_for(settings.command_timeout, on_storage_change=generation.bump)
        store = Store(settings.database_url, on_catalog_change=generation.bump)
        accounts = AccountDriver(runner, settings.pam_service)
        zfs = ZfsDriver(runner)
        disk_driver = DiskDriver(runner)
        disks = DiskService(settings, disk_driver, zfs)
        identity = ApplianceIdentity(settings, store)
        lock = StorageLock(settings.lock_file)
        # What holds volumes and pools, or guards them; registered below, once they are built.
        attachments = Attachments()
        pools = PoolService(settings, store, zfs, ZfsPoolOps(runner), disks, disk_driver, identity, lock,
                            attachments)
        system = SystemService(settings, store, PackageDriver(runner), zfs, identity,
                               make_default_pool=pools.create_default)
        datasets = ZfsDatasetOps(runner, zfs)
        catalog = Catalog(store, datasets, pools, lock, generation=generation, max_age=settings.catalog_max_age)
        volumes = VolumeService(store, datasets, LunFileDriver(), catalog, pools, lock, attachments)
        snapshots = SnapshotService(store, datasets, catalog, volumes, lock)
        shares = ShareService(
            store, catalog, volumes,
            choose_nfs_driver(runner, settings.nfs_exports_file, settings.ganesha_pidfile, settings.kernel_exports,
                              settings.nfs_export_id_base, settings.ganesha_log),
            SambaDriver(runner, settings.smb_conf_file, settings.smb_shares_file, settings.admin_group),
            lock, settings.admin_group)
        targets = TargetService(settings, system, store, catalog, volumes, lock,
                                lambda base_iqn: choose_target_driver(runner, base_iqn))
        hosts = HostService(store, targets, catalog, volumes, lock)
        firewall = FirewallDriver(runner, table_name(settings.state_dir),
                                  record=settings.state_dir / "network-filter.nft")
        network = NetworkService(store, NetworkDriver(runner), firewall,
                                 ServicePorts(settings.port, settings.smb_conf_file, firewall),
                                 StorageLock(settings.state_dir / "network.lock"))
        ssh = SshDriver(runner, settings.ssh_dir, settings.ssh_host_key_files, settings.ssh_user)
        replication = ReplicationService(settings, store, catalog, volumes, snapshots, pools, network, system,
                                         datasets, ssh, runner, lock)
        # In this order: replication's guards refuse before anything lets go; then the shares
        # let go of a volume or pool, then its LUN mappings (undone in the reverse order).
        attachments.register(replication.relationships, shares, hosts)
        auth = AuthService(settings, accounts, failures=StoredFailures(
            store, Generation(settings.state_dir / "auth-failures.generation")),
            on_login=shares.sync_smb_password)  # Samba keeps the API's passwords
        return cls(
            settings=settings,
            store=store,
            auth=auth,
            system=system,
            users=UserService(settings, accounts),
            network=network,
            targets=targets,
            disks=disks,
            pools=pools,
            catalog=catalog,
            volumes=volumes,
            snapshots=snapshots,
            shares=shares,
            hosts=hosts,
            replication=replication,
            audit=AuditService(store),
        )

    def recover(self) -> None:
        """At start: the interfaces' services take effect (the packet filter's table is gone
        after a reboot); finish or roll back what a crash left half-done, adopt our own pools."""
        try:
            self.network.enforce(startup=True)
        except Exception:  # storage recovery goes on; the worker tries again every few seconds
            logging.getLogger(__name__).exception("network services: the packet filter could not be applied")
        self.pools.recover()
        if self.pools.zfs.available():
            self.volumes.recover()
            self.snapshots.recover()
            self.catalog.load(fresh=True)  # picks up what was made or destroyed outside the API
            self.shares.recover({u["name"] for u in self.users.list()})
            self.targets.recover()


def system_error(exc: Exception) -> ApiError | None:
    """A failure of the system under us (not a bug of ours) as the error a client sees."""
    if isinstance(exc, CommandTimeout):
        return ServiceUnavailableError(
            f"The storage system did not answer in time ({exc.argv[0]}, {exc.timeout:g} s)")
    if isinstance(exc, TargetError):
        return ServiceUnavailableError(f"The iSCSI target service failed: {exc}")
    if isinstance(exc, CommandNotFound):
        return ServiceUnavailableError(f"{exc.argv[0]} is not installed on this appliance")
    return None
