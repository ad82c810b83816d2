"""The metadata index. ZFS is the truth for what exists; these tables give objects their API
IDs and keep what ZFS cannot."""
from __future__ import annotations

import time

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> int:
    return int(time.time())


def row_fields(row) -> dict:
    """A row's column values: what an undo needs to put the row back as it was."""
    return {c.name: getattr(row, c.name) for c in row.__table__.columns}


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Small appliance-wide values: init status, multipool."""

    __tablename__ = "setting"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text, nullable=True)


class NetworkServices(Base):
    """The services an interface carries, by interface id (MAC without colons, or its name)."""

    __tablename__ = "network_services"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    services: Mapped[list] = mapped_column(JSON)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class Pool(Base):
    """A pool this appliance made or adopted. The row is also the intent record of a change in
    flight (state creating/renaming/deleting, with the process doing it), so a start after a crash
    can finish or roll back what was half-done. An update of several properties records them
    in `pending` while it runs (see PoolService.update)."""

    __tablename__ = "pool"
    __table_args__ = {"sqlite_autoincrement": True}  # IDs are never reused
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guid: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    name: Mapped[str] = mapped_column(String(256))
    pool_type: Mapped[str] = mapped_column(String(16))
    diskgroup_size: Mapped[int] = mapped_column(Integer, default=8)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    pending_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # An update in flight: {"name": [before, after] | None, "props": {property: [before, after]}};
    # the row stays ready (state renaming while the rename runs).
    pending: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # services/owner.py
    time_created: Mapped[int] = mapped_column(Integer, default=now)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class Volume(Base):
    """A volume: a dataset directly under a pool (filesystem, or LUN as zvol or image file), or
    a file-backed LUN naming a file inside a filesystem volume. Matched to ZFS by guid, which
    survives renames; state/owner mark a change in flight, as for pools; `pending` (with owner)
    an update in flight, while the volume stays ready."""

    __tablename__ = "volume"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    volume_type: Mapped[str] = mapped_column(String(16))
    guid: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    is_clone: Mapped[bool] = mapped_column(Boolean, default=False)
    serial: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_block: Mapped[int | None] = mapped_column(Integer, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    parent_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    # An update in flight: {"name": [before, after] | None, "size_total": [before, after] | None}
    pending: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    time_created: Mapped[int] = mapped_column(Integer, default=now)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class Snapshot(Base):
    """A snapshot, matched to ZFS by (volume, guid): a received snapshot keeps the guid of the
    one it came from, so a guid can recur under different volumes."""

    __tablename__ = "snapshot"
    __table_args__ = (UniqueConstraint("volume_id", "guid"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    volume_id: Mapped[int] = mapped_column(ForeignKey("volume.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    guid: Mapped[str | None] = mapped_column(String(32), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    time_created: Mapped[int] = mapped_column(Integer, default=now)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class Share(Base):
    """An NFS or SMB share of a filesystem volume (one per volume)."""

    __tablename__ = "share"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    volume_id: Mapped[int] = mapped_column(ForeignKey("volume.id", ondelete="CASCADE"), unique=True)
    share_type: Mapped[str] = mapped_column(String(8))
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed_hosts: Mapped[list] = mapped_column(JSON, default=list)
    time_created: Mapped[int] = mapped_column(Integer, default=now)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class SmbPassword(Base):
    """Which password Samba holds for a vsnap account, as a salted scrypt hash: Samba's entry
    is rewritten only when an API login shows the password changed."""

    __tablename__ = "smb_password"
    user: Mapped[str] = mapped_column(String(256), primary_key=True)
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(128))


class AuthFailure(Base):
    """A failed login, kept for the throttle's window so every server process counts them."""

    __tablename__ = "auth_failure"
    __table_args__ = (Index("ix_auth_failure_address_at", "address", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)


class Host(Base):
    """A storage client that LUNs are mapped to, known by its iSCSI initiator names."""

    __tablename__ = "host"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    time_created: Mapped[int] = mapped_column(Integer, default=now)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class HostInitiator(Base):
    """An initiator name belongs to one host only: a target could not tell two hosts apart
    by it."""

    __tablename__ = "host_initiator"
    iqn: Mapped[str] = mapped_column(String(256), primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("host.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # the order the client gave


class LunMapping(Base):
    """A LUN volume mapped to a host under a LUN number that stays while it is mapped."""

    __tablename__ = "lun_mapping"
    __table_args__ = (UniqueConstraint("host_id", "lun"), UniqueConstraint("host_id", "volume_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("host.id", ondelete="CASCADE"), index=True)
    volume_id: Mapped[int] = mapped_column(ForeignKey("volume.id", ondelete="CASCADE"), index=True)
    lun: Mapped[int] = mapped_column(Integer)
    time_created: Mapped[int] = mapped_column(Integer, default=now)


class Partner(Base):
    """Another appliance this one replicates with. Trust is pinned here: its TLS certificate
    and SSH host key fingerprints; its replication key is in our sshd's authorized_keys. No
    password is ever kept."""

    __tablename__ = "partner"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the same on both sides
    system_id: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    api_port: Mapped[int] = mapped_column(Integer)
    ssh_port: Mapped[int] = mapped_column(Integer)
    tls_fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of its certificate, hex
    ssh_host_key: Mapped[str] = mapped_column(Text)
    ssh_public_key: Mapped[str] = mapped_column(Text)  # its replication key, authorized here
    time_created: Mapped[int] = mapped_column(Integer, default=now)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class Relationship(Base):
    """A volume replicated to a partner: role primary on the side that sends, replica on the
    side that receives; the id is the same on both."""

    __tablename__ = "relationship"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partner.id"), index=True)
    local_role: Mapped[str] = mapped_column(String(8))
    local_vol_id: Mapped[int] = mapped_column(ForeignKey("volume.id", ondelete="CASCADE"), index=True)
    remote_pool_id: Mapped[str] = mapped_column(String(32))
    remote_vol_id: Mapped[str] = mapped_column(String(32))
    remote_vol_name: Mapped[str] = mapped_column(String(256))
    last_sync_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_attempt_snap_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_success_snap_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_rate: Mapped[int | None] = mapped_column(Integer, nullable=True)  # bytes per second; None: no limit
    # The newest snapshot both sides hold (the primary bookmarks it: see replication.relationships).
    common_snap_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    common_snap_guid: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The intent record of a delete in flight (state deleting, whether the replica is kept, the
    # process doing it): a start after a crash finishes it with the partner or rolls it back.
    state: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")
    delete_preserve: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    time_created: Mapped[int] = mapped_column(Integer, default=now)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)


class ReplicationSession(Base):
    """One transfer of a snapshot to a relationship's replica. The queue is these rows:
    PENDING ones run in id order, one at a time per relationship."""

    __tablename__ = "session"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rel_id: Mapped[str] = mapped_column(ForeignKey("relationship.id", ondelete="CASCADE"), index=True)
    local_snap_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    local_snap_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    remote_snap_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    remote_snap_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    repl_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size_sent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate: Mapped[int | None] = mapped_column(Integer, nullable=True)  # bytes per second, now or on average
    size_resumed: Mapped[int | None] = mapped_column(Integer, nullable=True)  # kept from an interrupted try
    rollback_replica: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # asked for a diverged replica
    status: Mapped[str] = mapped_column(String(16), default="PENDING", index=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the process sending it
    time_queued: Mapped[int] = mapped_column(Integer, default=now)
    time_started: Mapped[int | None] = mapped_column(Integer, nullable=True)
    time_ended: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AuditEvent(Base):
    """A change asked of the API: who, what, when, and how it ended. Never a password."""

    __tablename__ = "audit_event"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the request body, secrets removed
    status: Mapped[int] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)  # the error's, if it failed
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
