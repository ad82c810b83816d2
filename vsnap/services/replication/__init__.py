"""Replication to partner appliances: partners (trust), relationships (which volume is kept
where) and sessions (queued transfers of snapshots with `zfs send | ssh | zfs receive`).
ReplicationService is all the API, the worker and the CLI see: it builds the parts, each with
only the collaborators it uses. A part imports only those to its left (no cycle):

    common  <-  partners, sessions  <-  relationships  <-  receiver
                partners, sessions  <-  sender
"""
from __future__ import annotations

from typing import BinaryIO

from sqlalchemy.orm import Session

from ...config import Settings
from ...drivers.runner import Runner
from ...drivers.ssh import SshDriver
from ...drivers.zfs import ZfsDatasetOps
from ...store.db import Store
from ...store.models import Partner, Relationship, ReplicationSession
from ..catalog import ApiId, Catalog
from ..doorbell import Doorbell
from ..locking import StorageLock
from .bookmarks import Bookmarks
from .common import (
    ACTIVE,
    CANCELED,
    CANCELING,
    COMPLETED,
    FAILED,
    PENDING,
    PRIMARY,
    REPLICA,
    PartnerLink,
    RemoteError,
    Request,
    ssh_failure,
    validate_address,
    validate_port,
)
from .partners import Partners
from .receiver import Receiver
from .relationships import Relationships
from .sender import Sender
from .sessions import Sessions

__all__ = ["ACTIVE", "CANCELED", "CANCELING", "COMPLETED", "FAILED", "PENDING", "PRIMARY", "REPLICA",
           "PartnerLink", "RemoteError", "ReplicationService", "Request", "ssh_failure", "validate_address",
           "validate_port"]


class ReplicationService:
    def __init__(self, settings: Settings, store: Store, catalog: Catalog, volumes, snapshots, pools,
                 network, system, ds: ZfsDatasetOps, ssh: SshDriver, runner: Runner, lock: StorageLock):
        self.link = PartnerLink(ssh, runner)
        self.doorbell = Doorbell(settings.state_dir / "sessions.bell")  # wakes the queue's worker
        self.partners = Partners(settings, store, system, ssh, self.link, lock)
        self.sessions = Sessions(settings, store, snapshots, self.doorbell)
        self.bookmarks = Bookmarks(store, ds)
        self.relationships = Relationships(settings, store, catalog, volumes, self.link, lock, self.partners,
                                           self.sessions, runner, self.bookmarks)
        self.sender = Sender(settings, store, catalog, ds, ssh, self.link, self.partners, self.sessions,
                             self.bookmarks)
        self.receiver = Receiver(settings, store, catalog, volumes, pools, network, system, ds, lock,
                                 self.partners, self.relationships, self.sessions, self.bookmarks)

    # == partners ===============================================================================
    def serve_command(self, partner_id: str) -> list[str]:
        return self.partners.serve_command(partner_id)

    @staticmethod
    def render_partner(p: Partner) -> dict:
        return Partners.render_partner(p)

    def list_partners(self) -> list[dict]:
        return self.partners.list_partners()

    def get_partner(self, partner_id: str, check_trust: bool = False) -> dict:
        return self.partners.get_partner(partner_id, check_trust)

    def create_partner(self, remote_addr: str, remote_user: str, remote_pass: str, local_addr: str | None = None,
                       local_api_port: int | None = None, remote_api_port: int | None = None,
                       local_ssh_port: int | None = None, remote_ssh_port: int | None = None) -> dict:
        return self.partners.create_partner(remote_addr, remote_user, remote_pass, local_addr=local_addr,
                                            local_api_port=local_api_port, remote_api_port=remote_api_port,
                                            local_ssh_port=local_ssh_port, remote_ssh_port=remote_ssh_port)

    def accept_partner(self, offer: dict) -> dict:
        return self.partners.accept_partner(offer)

    def delete_partner(self, partner_id: str) -> None:
        self.partners.delete_partner(partner_id)

    def deliver_notices(self, partner_id: str | None = None) -> None:
        self.partners.deliver_notices(partner_id)

    # == relationships ============================================================================
    def render_relationship(self, s: Session, rel: Relationship) -> dict:
        return self.relationships.render_relationship(s, rel)

    def list_relationships(self, vol_id: ApiId | None = None, vol_name: str | None = None) -> list[dict]:
        return self.relationships.list_relationships(vol_id, vol_name)

    def get_relationship(self, rel_id: str) -> dict:
        return self.relationships.get_relationship(rel_id)

    def create_relationship(self, vol_id: ApiId, partner_id: str, remote_pool_id: ApiId | None = None,
                            remote_vol_name: str | None = None, reuse: bool = False,
                            max_rate: int | None = None) -> dict:
        return self.relationships.create_relationship(vol_id, partner_id, remote_pool_id=remote_pool_id,
                                                      remote_vol_name=remote_vol_name, reuse=reuse,
                                                      max_rate=max_rate)

    def update_relationship(self, rel_id: str, *, max_rate: int | None) -> dict:
        return self.relationships.update_relationship(rel_id, max_rate=max_rate)

    def delete_relationship(self, rel_id: str, preserve_replica: bool = False) -> None:
        self.relationships.delete_relationship(rel_id, preserve_replica)

    def recover_deletes(self) -> None:
        self.relationships.recover_deletes()

    def is_replica(self, vol_id: int) -> bool:
        return self.relationships.is_replica(vol_id)

    # == sessions ================================================================================
    @staticmethod
    def render_session(row: ReplicationSession) -> dict:
        return Sessions.render_session(row)

    def list_sessions(self, rel_id: str | None = None) -> list[dict]:
        return self.sessions.list_sessions(rel_id)

    def get_session(self, session_id: ApiId) -> dict:
        return self.sessions.get_session(session_id)

    def start_session(self, rel_id: str, snap_id: ApiId | None = None, remote_snap_name: str | None = None,
                      rollback_replica: bool = False) -> dict:
        return self.sessions.start_session(rel_id, snap_id, remote_snap_name, rollback_replica)

    def cancel_session(self, session_id: ApiId, wait: float | None = None) -> dict:
        return self.sessions.cancel_session(session_id, wait)

    # -- the queue (run by the worker) ----------------------------------------------------------
    def fail_interrupted(self) -> None:
        """Interrupted sessions end FAILED, and let go of the snapshots they held."""
        for rel_id in self.sessions.fail_interrupted():
            self.relationships.release_holds(rel_id)

    def claim_next(self, busy_rels: set[str]) -> int | None:
        return self.sessions.claim_next(busy_rels)

    def run_session(self, session_id: int) -> None:
        self.sender.run_session(session_id)

    # == the remote side: requests a partner makes over SSH (vsnap.worker.serve) ===================
    def serve(self, partner_id: str, words: list[str], stdin: BinaryIO) -> dict:
        return self.receiver.serve(partner_id, words, stdin)
