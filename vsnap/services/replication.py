"""Replication to partner appliances: partners (trust), relationships (which volume is kept
where) and sessions (queued transfers of snapshots with `zfs send | ssh | zfs receive`).

Trust: partnering sends the remote's user and password once, over TLS to a certificate
pinned by fingerprint; both sides then authorize each other's replication SSH key, forced
onto `vsnap.worker.serve` (which answers only for relationships with that partner), and pin
each other's SSH host key. Everything after that goes over SSH; no password is kept.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from typing import BinaryIO

from sqlalchemy import update
from sqlalchemy.orm import Session

from ..config import Settings
from ..drivers.partner_api import PartnerApi, PartnerApiError, certificate_fingerprint, file_fingerprint
from ..drivers.pipeline import PipelineStopped, run_pipeline
from ..drivers.runner import CommandError, CommandTimeout, Runner, describe
from ..drivers.ssh import SshDriver, normalize_public_key
from ..drivers.zfs import ZfsDatasetOps
from ..errors import ApiError, ConflictError, NotFoundError, ServiceUnavailableError, ValidationError
from ..logs import request_id_var
from ..store.db import Store
from ..store.models import Partner, Relationship, ReplicationSession, Setting, Volume, now
from .attachments import Attachment
from .catalog import DELETING, FILEBACKED, READY, ApiId, Catalog, parse_id
from .doorbell import Doorbell
from .locking import StorageLock
from .owner import current_owner, owner_alive
from .shares import normalize_host
from .volumes import validate_name

log = logging.getLogger(__name__)

PRIMARY, REPLICA = "primary", "replica"
PENDING, ACTIVE, COMPLETED, FAILED = "PENDING", "ACTIVE", "COMPLETED", "FAILED"
CANCELED = "Canceled"
# An ACTIVE session asked to stop carries this message until the transfer settles how it ended
# (the snapshot may have arrived whole): its status changes once, to the truth.
CANCELING = "Canceling"
_HEX32 = re.compile(r"[0-9a-f]{32}")
_SYSTEM_ID = re.compile(r"[0-9a-f]{8,64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class RemoteError(Exception):
    """A partner could not be reached or refused a request.

    unreachable: no answer came (no connection, SSH failed, or a timeout);
    untrusted: the partner's SSH server refused this appliance (its key is no longer authorized
    there, or the host key changed: the partner was rebuilt or removed the partnership);
    unknown: the partner answered that it does not know what was named (the partnership or
    the relationship);
    refused: the partner answered with an error of its own, having changed nothing. Without
    any of these, how the request ended there is not known (its server stopped while
    answering, say)."""

    def __init__(self, message: str, unreachable: bool = False, untrusted: bool = False,
                 unknown: bool = False, refused: bool = True, reason: str | None = None):
        super().__init__(message)
        self.unreachable = unreachable or untrusted
        self.untrusted = untrusted
        self.unknown = unknown
        self.refused = refused and not self.unreachable and not unknown
        self.reason = reason or message  # the partner's own words, when it answered


def _text(value) -> str | None:
    """Numbers in responses are strings, as in the spec; absent ones stay null."""
    return str(value) if value is not None else None


def _stop_open_sessions(s, which, reason: str, statuses=(PENDING, ACTIVE)) -> None:
    """Sessions matching `which` stop: PENDING ones end FAILED with `reason` (a "Canceled..."
    text); ACTIVE ones are marked (CANCELING...), their transfer sees it within a tick, stops,
    and ends the session FAILED with the reason, or COMPLETED if the snapshot arrived all the
    same."""
    if PENDING in statuses:
        s.execute(update(ReplicationSession).where(which, ReplicationSession.status == PENDING)
                  .values(status=FAILED, message=reason, time_ended=now()))
    if ACTIVE in statuses:
        s.execute(update(ReplicationSession).where(which, ReplicationSession.status == ACTIVE)
                  .values(message=CANCELING + reason.removeprefix(CANCELED)))


def _canceling(row: ReplicationSession) -> bool:
    return row.status == ACTIVE and (row.message or "").startswith(CANCELING)


def validate_port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(f"{what} must be a port number (1-65535)")
    return value


def validate_address(value: object, what: str) -> str:
    """A hostname or IP address (never an option-like word: it reaches ssh's argument list)."""
    try:
        address = normalize_host(value) if isinstance(value, str) else None
    except ValidationError:
        address = None
    if not address or address == "all" or "/" in address:
        raise ValidationError(f"{what} must be a hostname or an IP address, not {str(value)[:100]!r}")
    return address


def _hex_id(value, what: str) -> str:
    if not isinstance(value, str) or not _HEX32.fullmatch(value.lower()):
        raise NotFoundError(f"{what} {value} not found")
    return value.lower()


class PartnerLink:
    """Requests to a partner's forced replication command, over SSH."""

    def __init__(self, ssh: SshDriver, runner: Runner, timeout: float = 120):
        self.ssh = ssh
        self.runner = runner
        self.timeout = timeout

    def call(self, partner: Partner, op: str, *args: str, body: dict | None = None,
             address: str | None = None, timeout: float | None = None) -> dict:
        argv = self.ssh.command(partner.id, address or partner.address, partner.ssh_port, [op, *args])
        try:
            out = self.runner.run(argv, check=False, input=json.dumps(body or {}),
                                  timeout=timeout or self.timeout)
        except CommandTimeout as exc:
            raise RemoteError(f"partner {partner.address} did not answer within {exc.timeout:g} s",
                              unreachable=True) from exc
        if out.returncode == 255:  # ssh's own failure: no connection, or the key was refused
            raise ssh_failure(partner.address, partner.ssh_port, out.stderr)
        try:
            answer = json.loads(out.stdout)
        except ValueError:
            answer = {"error": (out.stderr or out.stdout).strip() or f"exit status {out.returncode}"}
        if out.returncode != 0 or "error" in answer:
            reason = str(answer.get("error"))
            raise RemoteError(f"partner {partner.address} refused {op}: {reason}",
                              unknown=answer.get("type") == NotFoundError.type,
                              refused=isinstance(answer.get("type"), str), reason=reason)
        return answer


def ssh_failure(address: str, port: int, stderr: str) -> RemoteError:
    """ssh's own failure (exit status 255), told apart: refused trust, or no connection."""
    reason = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh failed"
    if "Permission denied" in stderr or "Host key verification failed" in stderr \
            or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return RemoteError(f"partner {address}:{port} no longer accepts this appliance over SSH ({reason}): "
                           "it was rebuilt, or the partnership was removed there", untrusted=True)
    return RemoteError(f"partner {address}:{port} unreachable over SSH: {reason}", unreachable=True)


class ReplicationService(Attachment):
    def __init__(self, settings: Settings, store: Store, catalog: Catalog, volumes, snapshots, pools,
                 network, system, ds: ZfsDatasetOps, ssh: SshDriver, runner: Runner, lock: StorageLock):
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.volumes = volumes
        self.snapshots = snapshots
        self.pools = pools
        self.network = network
        self.system = system
        self.ds = ds
        self.ssh = ssh
        self.runner = runner
        self.link = PartnerLink(ssh, runner)
        self.lock = lock
        self.doorbell = Doorbell(settings.state_dir / "sessions.bell")  # wakes the queue's worker
        self._releasing: set[str] = set()  # relationships whose replica volume is being deleted
        self._releasing_lock = threading.Lock()

    def serve_command(self, partner_id: str) -> list[str]:
        """What a partner's key may run here: the replication command, for that partner only."""
        return [sys.executable, "-m", "vsnap.worker.serve", "--state", str(self.settings.state_dir),
                "--partner", partner_id]

    # == partners ===============================================================================
    @staticmethod
    def render_partner(p: Partner) -> dict:
        return {"id": p.id, "address": p.address, "api_port": str(p.api_port), "ssh_port": str(p.ssh_port),
                "time_created": str(p.time_created), "time_updated": str(p.time_updated)}

    def _partner(self, s, partner_id) -> Partner:
        row = s.get(Partner, _hex_id(partner_id, "Partner"))
        if row is None:
            raise NotFoundError(f"Partner {partner_id} not found")
        return row

    def list_partners(self) -> list[dict]:
        with self.store.session() as s:
            return [self.render_partner(p) for p in s.query(Partner).order_by(Partner.time_created, Partner.id)]

    def get_partner(self, partner_id: str, check_trust: bool = False) -> dict:
        with self.store.session() as s:
            partner = self._partner(s, partner_id)
            s.expunge(partner)
        body = self.render_partner(partner)
        if check_trust:
            body.update(self._trust(partner))
        return body

    def _trust(self, partner: Partner) -> dict:
        """Whether the partnership still works, asked of the partner now (beyond the spec):
        trust_status OK, REFUSED (the partner no longer knows or accepts this appliance) or
        UNREACHABLE, with a message saying what was seen."""
        try:
            self.link.call(partner, "info", timeout=self.settings.partner_check_timeout)
        except RemoteError as exc:
            refused = exc.untrusted or exc.unknown
            return {"trust_status": "REFUSED" if refused else "UNREACHABLE", "trust_message": str(exc)}
        return {"trust_status": "OK", "trust_message": None}

    def _own_identity(self, address: str, api_port: int, ssh_port: int) -> dict:
        return {"system_id": self.system.id, "address": address, "api_port": api_port, "ssh_port": ssh_port,
                "ssh_public_key": self.ssh.public_key(), "ssh_host_key": self.ssh.host_key(),
                "tls_fingerprint": file_fingerprint(self.settings.tls_cert)}

    @staticmethod
    def _local_address_towards(remote: str) -> str:
        """The address this machine uses to reach `remote` (no packet is sent)."""
        family = socket.AF_INET6 if ":" in remote else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((socket.gethostbyname(remote) if family == socket.AF_INET else remote, 9))
                return sock.getsockname()[0]
        except OSError as exc:
            raise ValidationError(f"No route to {remote}: {exc}") from exc

    def create_partner(self, remote_addr: str, remote_user: str, remote_pass: str, local_addr: str | None = None,
                       local_api_port: int | None = None, remote_api_port: int | None = None,
                       local_ssh_port: int | None = None, remote_ssh_port: int | None = None) -> dict:
        remote_addr = validate_address(remote_addr, "remote_addr")
        local_addr = validate_address(local_addr, "local_addr") if local_addr is not None \
            else self._local_address_towards(remote_addr)
        remote_api_port = validate_port(remote_api_port if remote_api_port is not None else 8900, "remote_api_port")
        local_api_port = validate_port(local_api_port if local_api_port is not None else self.settings.port,
                                       "local_api_port")
        local_ssh_port = validate_port(local_ssh_port if local_ssh_port is not None else self.settings.ssh_port,
                                       "local_ssh_port")
        if remote_ssh_port is not None:
            validate_port(remote_ssh_port, "remote_ssh_port")
        if not isinstance(remote_user, str) or not remote_user or not isinstance(remote_pass, str):
            raise ValidationError("remote_user and remote_pass are required")
        try:
            fingerprint = certificate_fingerprint(remote_addr, remote_api_port)
        except PartnerApiError as exc:
            # The address and port are the client's: nothing answers there, and this appliance
            # is fine, so the client is told to check them (a 5xx would read as our failure).
            raise ValidationError(f"Partner {remote_addr}:{remote_api_port} cannot be reached: {exc}; "
                                  "check remote_addr and remote_api_port") from exc
        # Partnering again with an appliance already partnered keeps the partnership's id (its
        # relationships and every script that stored it go on working) and updates its
        # addresses and keys. Known here by its certificate or its address, it is offered
        # under its id; the partner answers with the id it knows this appliance by.
        known = self._known_partner(fingerprint, remote_addr, remote_api_port)
        partner_id = known.id if known is not None else uuid.uuid4().hex
        offer = {"id": partner_id, **self._own_identity(local_addr, local_api_port, local_ssh_port)}
        try:
            answer = PartnerApi(remote_addr, remote_api_port, fingerprint).post(
                "/api/partner/accept", offer, auth=(remote_user, remote_pass))
        except PartnerApiError as exc:
            if exc.status in (401, 403):
                raise ValidationError(f"The partner refused the credentials of {remote_user}: {exc}") from exc
            if exc.status is not None and 400 <= exc.status < 500:
                raise ConflictError(f"The partner refused the partnership: {exc}") from exc
            raise ServiceUnavailableError(f"Partner {remote_addr}:{remote_api_port}: {exc}") from exc
        partner = same = made_here = None
        offered = partner_id
        renewed = isinstance(answer, dict) and answer.get("renewed") is True  # it knew us already
        try:
            if not isinstance(answer, dict):
                raise ValidationError("the partner's answer is not an object")
            system_id = answer.get("system_id")
            if not isinstance(system_id, str) or not _SYSTEM_ID.fullmatch(system_id):
                raise ValidationError("the partner's system id is not valid")
            theirs = answer.get("id", offered)
            if not isinstance(theirs, str) or not _HEX32.fullmatch(theirs):
                raise ValidationError("the partner's id for this appliance is not valid")
            with self.store.session() as s:
                same = s.query(Partner).filter(Partner.system_id == system_id).first()
                # Ours if this appliance knows the partner (its id stays); else the partner's,
                # so both sides name the partnership alike (e.g. after this one was rebuilt).
                if same is None and s.get(Partner, theirs) is not None:
                    raise ConflictError(f"The partner answered with the id of another partnership ({theirs})")
                partner_id = same.id if same is not None else theirs
            partner = Partner(id=partner_id, system_id=system_id, address=remote_addr, api_port=remote_api_port,
                              ssh_port=remote_ssh_port or validate_port(answer.get("ssh_port"), "partner ssh_port"),
                              tls_fingerprint=fingerprint,
                              ssh_host_key=normalize_public_key(answer.get("ssh_host_key")),
                              ssh_public_key=normalize_public_key(answer.get("ssh_public_key")))
            made_here = partner_id if same is None else None
            self.ssh.pin_host_key(partner_id, partner.ssh_host_key)  # first: a withdrawal needs it
            with self.lock.held():
                with self.store.session() as s:
                    self._store_partner(s, partner)
                self.ssh.authorize(partner_id, partner.ssh_public_key, self.serve_command(partner_id))
        except (ApiError, ValueError, OSError) as exc:
            # A new partnership the partner made already is taken back (over SSH, which needs
            # its pinned host key); a renewed one stays as the partner had it.
            if not renewed:
                self._withdraw(partner or self._withdrawal_target(offered, remote_addr, remote_ssh_port, answer))
            if made_here is not None:
                self._forget_partner(made_here)
            if known is None and offered != made_here:
                self._drop_trust(offered)  # the host key pinned for the withdrawal
            if isinstance(exc, ApiError):
                raise
            raise ValidationError(f"The partner's answer is not usable: {exc}") from exc
        log.info("partner %s (%s) %s", partner_id, remote_addr, "renewed" if same is not None else "added")
        return self.get_partner(partner_id)

    def _known_partner(self, fingerprint: str, address: str, api_port: int) -> Partner | None:
        with self.store.session() as s:
            row = s.query(Partner).filter(Partner.tls_fingerprint == fingerprint).first() or \
                s.query(Partner).filter(Partner.address == address, Partner.api_port == api_port).first()
            if row is not None:
                s.expunge(row)
            return row

    @staticmethod
    def _store_partner(s, partner: Partner) -> None:
        """Adds the partner, or updates the row of the same appliance in place (same id)."""
        row = s.get(Partner, partner.id)
        if row is None:
            s.add(partner)
            return
        for field in ("system_id", "address", "api_port", "ssh_port", "tls_fingerprint", "ssh_host_key",
                      "ssh_public_key"):
            setattr(row, field, getattr(partner, field))
        row.time_updated = now()

    def _withdrawal_target(self, partner_id: str, address: str, ssh_port, answer) -> Partner | None:
        """Enough of an unusable answer to reach the partner over SSH: its host key (pinned, so
        the partner is verified) and its port."""
        try:
            host_key = normalize_public_key(answer.get("ssh_host_key"))
            port = ssh_port or validate_port(answer.get("ssh_port"), "partner ssh_port")
        except (AttributeError, ValueError, ApiError):
            log.warning("partner %s answered unusably: remove partner %s there by hand", address, partner_id)
            return None
        self.ssh.pin_host_key(partner_id, host_key)
        return Partner(id=partner_id, address=address, ssh_port=port)

    def _withdraw(self, partner: Partner | None) -> None:
        if partner is None:
            return
        try:
            self.link.call(partner, "unpartner")
        except RemoteError as exc:
            log.warning("partner %s: could not withdraw the half-made partnership: %s", partner.address, exc)

    def _forget_partner(self, partner_id: str) -> None:
        with self.store.session() as s:
            row = s.get(Partner, partner_id)
            if row is not None:
                s.delete(row)
            self._forget_addresses(s, partner_id)
            s.query(Setting).filter(Setting.key.like(f"partner-notice:{partner_id}:%")).delete(
                synchronize_session=False)
        self._drop_trust(partner_id)

    # The partner's replication addresses, as it last gave them (creating a replica, or before a
    # stream): a first session can then stream at once, to the right address. Kept in the
    # settings table (no schema change); a stale list only costs the round trip it saves.
    @staticmethod
    def _addresses_key(partner_id: str) -> str:
        return f"partner-repl-addresses:{partner_id}"

    def _remember_addresses(self, partner_id: str, addresses) -> None:
        if not isinstance(addresses, list):
            return
        value = json.dumps([a for a in addresses if isinstance(a, str)][:64])
        with self.store.session() as s:
            row = s.get(Setting, self._addresses_key(partner_id))
            if row is None:
                s.add(Setting(key=self._addresses_key(partner_id), value=value))
            elif row.value != value:
                row.value = value

    def _remembered_addresses(self, partner_id: str) -> list[str] | None:
        with self.store.session() as s:
            row = s.get(Setting, self._addresses_key(partner_id))
            try:
                return json.loads(row.value) if row is not None and row.value else None
            except ValueError:
                return None

    def _forget_addresses(self, s, partner_id: str) -> None:
        row = s.get(Setting, self._addresses_key(partner_id))
        if row is not None:
            s.delete(row)

    @staticmethod
    def _data_address(partner: Partner, addresses: list[str]) -> str:
        """Where a stream goes: the partner's address if it carries replication, else its
        first replication address."""
        address = partner.address if partner.address in addresses or not addresses else addresses[0]
        return validate_address(address, "the partner's replication address")

    def _drop_trust(self, partner_id: str) -> None:
        """The partner's key no longer gets in here, and its host key is no longer pinned."""
        self.ssh.deauthorize(partner_id)
        self.ssh.unpin_host_key(partner_id)

    def accept_partner(self, offer: dict) -> dict:
        """The remote side of 12.1: another appliance offers a partnership (its user and
        password were checked by the API's authentication)."""
        if not isinstance(offer, dict):
            raise ValidationError("The partnership offer must be an object")
        partner_id = offer.get("id")
        if not isinstance(partner_id, str) or not _HEX32.fullmatch(partner_id):
            raise ValidationError("id must be 32 lower-case hex characters")
        system_id = offer.get("system_id")
        if not isinstance(system_id, str) or not _SYSTEM_ID.fullmatch(system_id):
            raise ValidationError("system_id is not valid")
        if system_id == self.system.id:
            raise ValidationError("An appliance cannot be its own partner")
        address = validate_address(offer.get("address"), "address")
        api_port = validate_port(offer.get("api_port"), "api_port")
        ssh_port = validate_port(offer.get("ssh_port"), "ssh_port")
        fingerprint = offer.get("tls_fingerprint")
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise ValidationError("tls_fingerprint must be a sha256 hex digest")
        try:
            public_key = normalize_public_key(offer.get("ssh_public_key"))
            host_key = normalize_public_key(offer.get("ssh_host_key"))
        except ValueError as exc:
            raise ValidationError(f"SSH keys: {exc}") from exc
        # The offer must come from the appliance that answers at the address it gives.
        try:
            seen = certificate_fingerprint(address, api_port)
        except PartnerApiError as exc:
            raise ValidationError(f"Cannot reach the offering appliance at {address}:{api_port}: {exc}") from exc
        if seen != fingerprint:
            raise ValidationError(f"The appliance at {address}:{api_port} is not the one making the offer "
                                  "(certificate fingerprints differ)")
        with self.lock.held():
            with self.store.session() as s:
                same = s.query(Partner).filter(Partner.system_id == system_id).first()
                clash = s.get(Partner, partner_id)
                if clash is not None and clash is not same:
                    raise ConflictError(f"Partner {partner_id} exists already")
                # An appliance that partners again keeps the id it has here (its relationships
                # here name it); it learns that id from the answer.
                renewed = same is not None
                if renewed:
                    partner_id = same.id
                self._store_partner(s, Partner(id=partner_id, system_id=system_id, address=address,
                                               api_port=api_port, ssh_port=ssh_port, tls_fingerprint=fingerprint,
                                               ssh_host_key=host_key, ssh_public_key=public_key))
            self.ssh.authorize(partner_id, public_key, self.serve_command(partner_id))
            self.ssh.pin_host_key(partner_id, host_key)
        log.info("partner %s (%s) %s", partner_id, address, "renewed" if renewed else "accepted")
        return {"id": partner_id, "renewed": renewed, "system_id": self.system.id,
                "ssh_public_key": self.ssh.public_key(), "ssh_host_key": self.ssh.host_key(),
                "ssh_port": self.settings.ssh_port, "api_port": self.settings.port}

    def delete_partner(self, partner_id: str) -> None:
        with self.store.session() as s:
            partner = self._partner(s, partner_id)
            used = s.query(Relationship).filter(Relationship.partner_id == partner.id).count()
        if used:
            raise ConflictError(f"Partner {partner.id} is used by {used} relationship(s); delete them first")
        self.deliver_notices(partner.id)  # relationships deleted here that it has not heard of yet
        try:
            self.link.call(partner, "unpartner")
        except RemoteError as exc:
            if not (exc.unreachable or exc.unknown):
                raise ConflictError(f"The partner refused to end the partnership: {exc.reason}") from exc
            log.warning("partner %s unreachable or no longer knows us: trust removed here only (%s)",
                        partner.id, exc)
        with self.lock.held():
            self._forget_partner(partner.id)
        log.info("partner %s removed", partner.id)

    # == relationships ============================================================================
    def render_relationship(self, s: Session, rel: Relationship) -> dict:
        volume = s.get(Volume, rel.local_vol_id)
        assert volume is not None, "a relationship goes with its volume (foreign key, on delete cascade)"
        return {
            "id": rel.id, "local_pool_id": str(volume.pool_id), "local_role": rel.local_role,
            "local_vol_id": str(rel.local_vol_id), "local_vol_name": volume.name, "partner_id": rel.partner_id,
            "remote_pool_id": rel.remote_pool_id, "remote_vol_id": rel.remote_vol_id,
            "remote_vol_name": rel.remote_vol_name, "last_sync_status": rel.last_sync_status,
            "last_attempt_snap_id": _text(rel.last_attempt_snap_id),
            "last_success_snap_id": _text(rel.last_success_snap_id),
            "time_created": str(rel.time_created), "time_updated": str(rel.time_updated),
        }

    def _relationship(self, s, rel_id) -> Relationship:
        row = s.get(Relationship, _hex_id(rel_id, "Relationship"))
        if row is None:
            raise NotFoundError(f"Relationship {rel_id} not found")
        return row

    def list_relationships(self, vol_id: ApiId | None = None, vol_name: str | None = None) -> list[dict]:
        view = self.catalog.load()  # relationships of volumes destroyed outside the API go with them
        if vol_id is not None or vol_name is not None:
            wanted = self.volumes.find(view, vol_id, vol_name).row.id
        with self.store.session() as s:
            q = s.query(Relationship).order_by(Relationship.time_created, Relationship.id)
            if vol_id is not None or vol_name is not None:
                q = q.filter(Relationship.local_vol_id == wanted)
            return [self.render_relationship(s, r) for r in q]

    def get_relationship(self, rel_id: str) -> dict:
        with self.store.session() as s:
            return self.render_relationship(s, self._relationship(s, rel_id))

    def create_relationship(self, vol_id: ApiId, partner_id: str, remote_pool_id: ApiId | None = None,
                            remote_vol_name: str | None = None, reuse: bool = False) -> dict:
        if remote_vol_name is not None:
            validate_name(remote_vol_name)
        with self.store.session() as s:
            partner = self._partner(s, partner_id)
        with self.lock.held():
            view = self.catalog.load()
            volume = self.volumes.find(view, vol_id)
            if volume.row.volume_type == FILEBACKED:
                raise ValidationError("A filebackedlun has no dataset of its own: replicate its parent filesystem")
            with self.store.session() as s:
                for rel in s.query(Relationship).filter(Relationship.local_vol_id == volume.row.id):
                    if rel.local_role == REPLICA:
                        raise ConflictError(f"Volume {volume.row.name} is a replica (relationship {rel.id}); "
                                            "a replica cannot be the source of another relationship")
                    if rel.partner_id == partner.id:
                        raise ConflictError(f"Volume {volume.row.name} is already replicated to this partner "
                                            f"(relationship {rel.id})")
            size = None
            if volume.row.volume_type == "lun":
                size = self.volumes.backing(volume, view)[1]
            rel_id = uuid.uuid4().hex
            request = {"rel_id": rel_id, "pool_id": remote_pool_id, "name": remote_vol_name, "reuse": bool(reuse),
                       "volume_type": volume.row.volume_type, "size_total": size,
                       "size_block": volume.row.size_block, "primary_vol_id": str(volume.row.id),
                       "primary_vol_name": volume.row.name, "primary_pool_id": str(volume.row.pool_id)}
        try:
            answer = self.link.call(partner, "create-replica", body=request)
        except RemoteError as exc:
            if exc.unreachable:
                raise ServiceUnavailableError(str(exc)) from exc
            raise ConflictError(str(exc)) from exc
        try:
            with self.store.session() as s:
                s.add(Relationship(id=rel_id, partner_id=partner.id, local_role=PRIMARY,
                                   local_vol_id=volume.row.id, remote_pool_id=str(answer["pool_id"]),
                                   remote_vol_id=str(answer["vol_id"]), remote_vol_name=str(answer["vol_name"])))
        except Exception:
            self._remote_forget(partner, rel_id, preserve=bool(reuse))
            raise
        self._remember_addresses(partner.id, answer.get("repl_addresses"))
        return self.get_relationship(rel_id)

    # -- deleting -------------------------------------------------------------------------------
    # All or nothing on both sides. The primary marks its row (the intent record) and asks the
    # partner, which deletes the replica volume and only then its own row: a refusal (a clone
    # of the replica, say) changes nothing on either side. A partner that cannot be reached or
    # no longer knows the relationship never traps the primary: with preserve_replica the
    # relationship goes here alone (the partner is told when it answers again); without it the
    # answer names that choice.
    def delete_relationship(self, rel_id: str, preserve_replica: bool = False) -> None:
        rel, partner, resumed = self._mark_deleting(rel_id, bool(preserve_replica))
        try:
            # A transfer in flight ends (the replica may be about to go); queued ones wait, and
            # go with the relationship, or run if the delete fails.
            self._stop_sessions(rel.id, "Canceled: the relationship is being deleted", ACTIVE)
            if rel.local_role == PRIMARY:
                self._delete_with_partner(rel, partner, bool(preserve_replica), resumed)
            else:
                self._drop_replica_side(rel.id, bool(preserve_replica))
                self._tell_partner(partner, rel.id)
        except BaseException:
            self._unmark_deleting(rel.id, only_owner=current_owner())
            raise

    def _mark_deleting(self, rel_id, preserve: bool) -> tuple[Relationship, Partner, bool]:
        """The row says a delete is in flight, and by whom; one at a time. `resumed`: an
        earlier delete of it was interrupted (its process died), and may have reached the
        partner."""
        with self.store.session() as s:
            rel = self._relationship(s, rel_id)
            resumed = rel.state == DELETING
            if resumed and owner_alive(rel.owner):
                raise ConflictError(f"Relationship {rel.id} is being deleted")
            claimed = s.execute(update(Relationship).where(Relationship.id == rel.id, Relationship.state == rel.state,
                                                           Relationship.owner.is_(rel.owner))
                                .values(state=DELETING, delete_preserve=preserve, owner=current_owner())).rowcount
            if not claimed:
                raise ConflictError(f"Relationship {rel.id} is being deleted")
            partner = s.get(Partner, rel.partner_id)
            s.expunge(rel)
            s.expunge(partner)
        return rel, partner, resumed

    def _unmark_deleting(self, rel_id: str, only_owner: str) -> None:
        """Rolls the mark back, unless it was left pending for the worker (owner cleared)."""
        with self.store.session() as s:
            s.execute(update(Relationship).where(Relationship.id == rel_id, Relationship.owner == only_owner)
                      .values(state=READY, delete_preserve=None, owner=None))

    def _delete_with_partner(self, rel: Relationship, partner: Partner, preserve: bool, resumed: bool) -> None:
        try:
            self.link.call(partner, "delete-relationship", rel.id, "1" if preserve else "0")
        except RemoteError as exc:
            self._partner_could_not_delete(rel, partner, preserve, resumed, exc)
        self.runner.step_done(f"relationship {rel.id}: the partner's side deleted")
        self._drop_relationship(rel.id)
        log.info("relationship %s deleted%s", rel.id, " (replica kept on the partner)" if preserve else "")

    def _partner_could_not_delete(self, rel: Relationship, partner: Partner, preserve: bool, resumed: bool,
                                  exc: RemoteError) -> None:
        """Returns when the relationship may go here all the same; else raises the answer."""
        here_only = ("pass preserve_replica=true to delete the relationship on this appliance only "
                     "(the replica, if any, stays on the partner)")
        if exc.unknown:
            # The partner has no such relationship: an interrupted delete of ours reached it
            # (resumed), or it was deleted there.
            if preserve or resumed:
                log.warning("relationship %s: the partner no longer knows it; deleted here (%s)", rel.id, exc)
                return
            raise ConflictError(f"The partner {partner.address} does not know relationship {rel.id} "
                                f"({exc.reason}), so no replica can be deleted there: {here_only}")
        if exc.untrusted:
            if preserve:
                log.warning("relationship %s: deleted here only; the partner refuses this appliance (%s)",
                            rel.id, exc)
                return
            raise ConflictError(f"The replica cannot be deleted: {exc}. Delete it on the partner by hand, "
                                f"or {here_only}")
        if exc.unreachable:
            if preserve:
                self._remember_notice(partner.id, rel.id)
                log.warning("relationship %s: deleted here; the partner is told when it answers (%s)", rel.id, exc)
                return
            raise ServiceUnavailableError(f"The replica cannot be deleted now: {exc}. Try again when the partner "
                                          f"answers, or {here_only}")
        if not exc.refused:
            # How it ended there is not known (the partner's server stopped while deleting):
            # the delete stays recorded here, and is finished or rolled back by the worker (or
            # a retried DELETE) once the partner answers again.
            with self.store.session() as s:
                s.execute(update(Relationship).where(Relationship.id == rel.id).values(owner=None))
            raise ServiceUnavailableError(f"The partner stopped answering while deleting its side ({exc.reason}); "
                                          "the delete is finished when it answers again")
        raise ConflictError(f"The partner refused to delete the relationship: {exc.reason}")

    def _drop_relationship(self, rel_id: str) -> None:
        with self.store.session() as s:
            row = s.get(Relationship, rel_id)
            if row is not None:
                s.delete(row)  # its sessions go with it
        self._receive_lock_path(rel_id).unlink(missing_ok=True)

    def _drop_replica_side(self, rel_id: str, preserve: bool) -> None:
        """The replica volume goes first (its shares and mappings with it), then the row: if
        the volume cannot be deleted, the relationship stays whole."""
        with self.store.session() as s:
            rel = s.get(Relationship, rel_id)
            if rel is None:
                return
            vol_id, name = rel.local_vol_id, s.get(Volume, rel.local_vol_id).name
        if not preserve:
            with self._releasing_lock:
                self._releasing.add(rel_id)  # its own guard lets the replica go
            try:
                self.volumes.delete(vol_id)
            except NotFoundError:
                pass  # gone already (an interrupted delete, finished by the volume's recovery)
            except ConflictError as exc:
                raise ConflictError(f"The replica volume {name} cannot be deleted: {exc.message}; "
                                    "or pass preserve_replica=true to keep the replica") from exc
            finally:
                with self._releasing_lock:
                    self._releasing.discard(rel_id)
        self._drop_relationship(rel_id)

    def _remote_forget(self, partner: Partner, rel_id: str, preserve: bool) -> None:
        """Undoes a replica the partner made for a relationship that could not be recorded here."""
        try:
            self.link.call(partner, "delete-relationship", rel_id, "1" if preserve else "0")
        except RemoteError as exc:
            log.warning("relationship %s: the partner could not be told: %s", rel_id, exc)

    def _tell_partner(self, partner: Partner, rel_id: str) -> None:
        """The primary forgets a relationship deleted on the replica's side; told later if it
        cannot be told now."""
        if not self._tell(partner, rel_id):
            self._remember_notice(partner.id, rel_id)
            log.warning("relationship %s: the partner is told when it answers", rel_id)

    def _tell(self, partner: Partner, rel_id: str) -> bool:
        """Tells the partner a relationship went here (it drops its side, keeping the replica).
        False when it must be told again: no answer came, or how its request ended is not known."""
        try:
            self.link.call(partner, "delete-relationship", rel_id, "1")
        except RemoteError as exc:
            # Nothing there to forget, it will never hear from us again, or it answered.
            if not (exc.unknown or exc.untrusted or exc.refused):
                log.info("relationship %s: the partner cannot be told now: %s", rel_id, exc)
                return False
        return True

    # Notices a partner missed (a relationship deleted here while it could not be reached),
    # kept in the settings table and delivered by the worker.
    @staticmethod
    def _notice_key(partner_id: str, rel_id: str) -> str:
        return f"partner-notice:{partner_id}:{rel_id}"

    def _remember_notice(self, partner_id: str, rel_id: str) -> None:
        with self.store.session() as s:
            if s.get(Setting, self._notice_key(partner_id, rel_id)) is None:
                s.add(Setting(key=self._notice_key(partner_id, rel_id), value="delete-relationship"))

    def deliver_notices(self, partner_id: str | None = None) -> None:
        """Run by the worker: each partner (or the one named) hears of the relationships deleted
        here while it was unreachable (it drops its side and keeps the replica)."""
        prefix = f"partner-notice:{partner_id}:" if partner_id else "partner-notice:"
        with self.store.session() as s:
            keys = [k for (k,) in s.query(Setting.key).filter(Setting.key.like(f"{prefix}%"))]
        for key in keys:
            _, partner_id, rel_id = key.split(":", 2)
            with self.store.session() as s:
                partner = s.get(Partner, partner_id)
                if partner is not None:
                    s.expunge(partner)
            if partner is None or self._tell(partner, rel_id):
                with self.store.session() as s:
                    row = s.get(Setting, key)
                    if row is not None:
                        s.delete(row)

    def recover_deletes(self) -> None:
        """Relationship deletes a crash interrupted: finished with the partner, or rolled back
        when it refuses or cannot be reached."""
        with self.store.session() as s:
            rows = [(r.id, bool(r.delete_preserve)) for r in s.query(Relationship)
                    .filter(Relationship.state == DELETING) if not owner_alive(r.owner)]
        for rel_id, preserve in rows:
            try:
                self.delete_relationship(rel_id, preserve)
                log.info("relationship %s: interrupted delete finished", rel_id)
            except (ApiError, CommandError, OSError) as exc:
                log.warning("relationship %s: interrupted delete rolled back: %s", rel_id,
                            getattr(exc, "message", None) or exc)

    # -- guards: a replicated volume stays while its relationships do ------------------------
    def refuse_volume_delete(self, vol_id: int) -> None:
        with self.store.session() as s:
            rel = s.query(Relationship).filter(Relationship.local_vol_id == vol_id).first()
            if rel is not None and rel.id not in self._releasing:
                raise ConflictError(f"Volume {vol_id} is the {rel.local_role} of relationship {rel.id}; "
                                    "delete the relationship first")

    def refuse_volume_rename(self, vol_id: int) -> None:
        with self.store.session() as s:
            rel = s.query(Relationship).filter(Relationship.local_vol_id == vol_id,
                                               Relationship.local_role == REPLICA).first()
            if rel is not None:
                raise ConflictError(f"Volume {vol_id} is a replica (relationship {rel.id}) and cannot be renamed")

    def refuse_pool_delete(self, pool_id: int, pool_name: str) -> None:
        with self.store.session() as s:
            rel = s.query(Relationship).join(Volume, Volume.id == Relationship.local_vol_id) \
                .filter(Volume.pool_id == pool_id).first()
            if rel is not None:
                raise ConflictError(f"Pool {pool_name} holds volumes of relationship {rel.id}; "
                                    "delete its relationships first")

    def is_replica(self, vol_id: int) -> bool:
        with self.store.session() as s:
            return s.query(Relationship).filter(Relationship.local_vol_id == vol_id,
                                                Relationship.local_role == REPLICA).first() is not None

    # == sessions ================================================================================
    @staticmethod
    def render_session(row: ReplicationSession) -> dict:
        return {"id": str(row.id), "rel_id": row.rel_id, "local_snap_id": _text(row.local_snap_id),
                "remote_snap_id": row.remote_snap_id, "local_snap_name": row.local_snap_name,
                "remote_snap_name": row.remote_snap_name, "repl_address": row.repl_address,
                "size_sent": _text(row.size_sent), "status": row.status, "time_queued": str(row.time_queued),
                "time_started": _text(row.time_started), "time_ended": _text(row.time_ended),
                "message": row.message}

    def _session(self, s, session_id) -> ReplicationSession:
        key = parse_id(session_id)
        row = s.get(ReplicationSession, key) if key is not None else None
        if row is None:
            raise NotFoundError(f"Session {session_id} not found")
        return row

    def list_sessions(self, rel_id: str | None = None) -> list[dict]:
        with self.store.session() as s:
            q = s.query(ReplicationSession).order_by(ReplicationSession.id)
            if rel_id is not None:
                q = q.filter(ReplicationSession.rel_id == rel_id)
            return [self.render_session(r) for r in q]

    def get_session(self, session_id: ApiId) -> dict:
        with self.store.session() as s:
            return self.render_session(self._session(s, session_id))

    def start_session(self, rel_id: str, snap_id: ApiId | None = None, remote_snap_name: str | None = None) -> dict:
        if remote_snap_name is not None:
            validate_name(remote_snap_name, "Snapshot")
        with self.store.session() as s:
            rel = self._relationship(s, rel_id)
            if rel.local_role != PRIMARY:
                raise ConflictError("Sessions are started on the primary side of a relationship")
            if rel.state == DELETING:
                raise ConflictError(f"Relationship {rel.id} is being deleted")
            vol_id = rel.local_vol_id
        if snap_id is None:
            snap = self.snapshots.create(vol_id)
        else:
            snap = self.snapshots.get(snap_id=snap_id)
            if snap["parent_id"] != str(vol_id):
                raise ValidationError(f"Snapshot {snap_id} is not a snapshot of the relationship's volume")
        with self.store.session() as s:
            row = ReplicationSession(rel_id=rel.id, local_snap_id=int(snap["id"]), local_snap_name=snap["name"],
                                     remote_snap_name=remote_snap_name or snap["name"], status=PENDING)
            s.add(row)
            s.flush()
            body = self.render_session(row)
        self.doorbell.ring()  # committed: the worker starts it now, not at its next look
        return body

    def cancel_session(self, session_id: ApiId, wait: float | None = None) -> dict:
        """A queued session ends FAILED at once; a running one stops within a second and
        is answered once it has ended (up to `wait` s; then still ACTIVE, "Canceling"), as
        FAILED "Canceled", or COMPLETED when the snapshot had arrived whole."""
        with self.store.session() as s:
            row = self._session(s, session_id)
            if row.status not in (PENDING, ACTIVE):
                raise ConflictError(f"Session {row.id} has ended ({row.status})")
            _stop_open_sessions(s, ReplicationSession.id == row.id, CANCELED)
            key = row.id
        deadline = time.monotonic() + (self.settings.repl_cancel_wait if wait is None else wait)
        while True:
            body = self.get_session(key)
            if body["status"] != ACTIVE or time.monotonic() >= deadline:
                return body
            time.sleep(0.1)

    def _stop_sessions(self, rel_id: str, reason: str, *statuses: str) -> None:
        with self.store.session() as s:
            _stop_open_sessions(s, ReplicationSession.rel_id == rel_id, reason, statuses or (PENDING, ACTIVE))

    # -- the queue (run by the worker) ----------------------------------------------------------
    def fail_interrupted(self) -> None:
        """Sessions that were ACTIVE in a process that died can never finish: FAILED."""
        with self.store.session() as s:
            for row in s.query(ReplicationSession).filter(ReplicationSession.status == ACTIVE):
                if not owner_alive(row.owner):
                    row.status, row.time_ended = FAILED, now()
                    row.message = "Interrupted: the appliance stopped during the transfer; start a new session"
                    log.info("session %s: interrupted by a stop; failed", row.id)

    def claim_next(self, busy_rels: set[str]) -> int | None:
        """Marks the oldest PENDING session of a relationship with nothing running ACTIVE and
        returns its id (sessions of one relationship run one at a time, in order)."""
        with self.store.session() as s:
            active = {r for (r,) in s.query(ReplicationSession.rel_id).filter(ReplicationSession.status == ACTIVE)}
            active |= {r for (r,) in s.query(Relationship.id).filter(Relationship.state == DELETING)}
            for row in s.query(ReplicationSession).filter(ReplicationSession.status == PENDING) \
                    .order_by(ReplicationSession.id):
                if row.rel_id in busy_rels or row.rel_id in active:
                    continue
                claimed = s.execute(update(ReplicationSession)
                                    .where(ReplicationSession.id == row.id, ReplicationSession.status == PENDING)
                                    .values(status=ACTIVE, owner=current_owner(), time_started=now())).rowcount
                if claimed:
                    return row.id
        return None

    def run_session(self, session_id: int) -> None:
        """Sends one session's snapshot. Every way out ends the session COMPLETED or FAILED
        with a message naming the cause."""
        request_id_var.set(f"session-{session_id}")  # this thread's log lines
        try:
            result = self._transfer(session_id)
        except PipelineStopped as exc:
            self._end(session_id, FAILED, str(exc))
        except (RemoteError, ApiError, CommandError, OSError, ValueError) as exc:
            self._end(session_id, FAILED, getattr(exc, "message", None) or describe(exc))
        except Exception as exc:  # a bug must still end the session
            log.exception("session %s failed unexpectedly", session_id)
            self._end(session_id, FAILED, f"Internal error: {exc}")
        else:
            self._end(session_id, COMPLETED, result.pop("message", None), **result)

    def _end(self, session_id: int, status: str, message: str | None, **fields) -> None:
        with self.store.session() as s:
            row = s.get(ReplicationSession, session_id)
            if row is not None and _canceling(row):
                if status == FAILED:  # whatever the stop looked like, a cancel is why
                    message = CANCELED + row.message.removeprefix(CANCELING)
                elif message is None:  # the cancel came after the whole stream had passed
                    message = "Completed: the partner had received the whole snapshot when the cancel came"
            done = s.execute(update(ReplicationSession)
                             .where(ReplicationSession.id == session_id, ReplicationSession.status == ACTIVE)
                             .values(status=status, message=message, time_ended=now(), **fields)).rowcount
            row = s.get(ReplicationSession, session_id)
            rel = s.get(Relationship, row.rel_id) if row else None
            if rel is not None:
                rel.last_sync_status = row.status
                rel.last_attempt_snap_id = row.local_snap_id
                if row.status == COMPLETED:
                    rel.last_success_snap_id = row.local_snap_id
                rel.time_updated = now()
        if done:
            log.info("session %s %s%s", session_id, status, f": {message}" if message else "")

    def _still_active(self, session_id: int) -> str | None:
        """None while the transfer may go on; else why it must stop."""
        with self.store.session() as s:
            row = s.get(ReplicationSession, session_id)
            if row is None:
                return CANCELED  # its relationship went
            if row.status != ACTIVE:
                return row.message or CANCELED
            return CANCELED + row.message.removeprefix(CANCELING) if _canceling(row) else None

    def _transfer(self, session_id: int) -> dict:
        with self.store.session() as s:
            row = s.get(ReplicationSession, session_id)
            rel = s.get(Relationship, row.rel_id)
            partner = s.get(Partner, rel.partner_id)
            volume = s.get(Volume, rel.local_vol_id)
            # The newest ended session: when it did not complete, what the replica holds is
            # asked of the partner (a stream stopped at its very end may have arrived whole).
            last = s.query(ReplicationSession).filter(
                ReplicationSession.rel_id == rel.id, ReplicationSession.status.in_((COMPLETED, FAILED)),
                ReplicationSession.id != session_id).order_by(ReplicationSession.id.desc()).first()
            s.expunge_all()
        view = self.catalog.load(volume.pool_id if volume is not None else None)
        snap = view.snapshots.get(row.local_snap_id)
        if snap is None or snap.volume.row.id != rel.local_vol_id:
            raise ValueError(f"Snapshot {row.local_snap_name} of the primary volume no longer exists")
        ours = sorted((v for v in view.snapshots.values() if v.volume.row.id == rel.local_vol_id),
                      key=lambda v: (int(v.props.get("createtxg") or v.props.get("creation") or 0), v.row.id))
        older = ours[:[v.row.id for v in ours].index(snap.row.id)]
        tried = None
        known = self._without_asking(partner, rel, last, older)
        if known is not None:
            base, address = known
            tried = (base.row.id if base else None, address)
            try:
                return self._send(session_id, row, rel, partner, snap, base, address)
            except RemoteError as exc:
                first_error = exc
                log.info("session %s: sending %s failed (%s); asking the partner for its snapshots", session_id,
                         f"the difference from {base.row.name}" if base else "a full stream", exc)
        # One round trip before the stream: the partner's replication addresses and the
        # replica's snapshots (each SSH request is a request to the partner's server).
        remote = self.link.call(partner, "prepare", rel.id)
        addresses = [a for a in remote.get("repl_addresses", []) if isinstance(a, str)]
        self._remember_addresses(partner.id, addresses)
        address = self._data_address(partner, addresses)
        remote_by_guid = {str(r.get("guid")): r for r in remote.get("snapshots", [])}
        if snap.props.get("guid") in remote_by_guid:  # sent before (e.g. a retried session)
            with self.store.session() as s:
                s.get(ReplicationSession, session_id).repl_address = address
            return {"remote_snap_id": str(remote_by_guid[snap.props["guid"]].get("id")), "size_sent": 0}
        base = None
        for candidate in older:
            if candidate.props.get("guid") in remote_by_guid:
                base = candidate
        if base is None and remote_by_guid:
            raise ValueError("The replica has snapshots, but none in common with the primary's snapshots "
                             f"older than {snap.row.name}: an incremental send has no base")
        if tried is not None and tried == (base.row.id if base else None, address):
            raise first_error  # the same stream to the same place: it would fail the same way
        return self._send(session_id, row, rel, partner, snap, base, address)

    def _without_asking(self, partner: Partner, rel: Relationship, last: ReplicationSession | None,
                        older: list):
        """Where the replica stands, when that is known without asking the partner (a round
        trip before the stream): (base snapshot or None for a full stream, address), or None.

        After a completed session (the newest that ended), the snapshot it sent is the
        replica's newest and its address carried data. Before the first one, the replica is
        empty (unless it was adopted with reuse) and the partner's addresses are known if it
        gave them. A wrong guess costs little: ZFS refuses an incremental whose base is not the
        replica's newest snapshot, the partner refuses a full stream onto a replica with
        snapshots, and then it is asked."""
        try:
            if last is None:
                addresses = self._remembered_addresses(partner.id)
                return None if addresses is None else (None, self._data_address(partner, addresses))
            if last.status != COMPLETED or last.local_snap_id != rel.last_success_snap_id \
                    or not last.repl_address:
                return None
            base = next((v for v in older if v.row.id == last.local_snap_id), None)
            if base is None:  # gone, or not older than the snapshot to send
                return None
            return base, validate_address(last.repl_address, "the partner's replication address")
        except ValidationError:
            return None

    def _send(self, session_id: int, row: ReplicationSession, rel: Relationship, partner: Partner, snap,
              base, address: str) -> dict:
        """Streams `snap` (its difference from `base`, or in full) to the replica at `address`."""
        with self.store.session() as s:
            s.get(ReplicationSession, session_id).repl_address = address
        remote_name = row.remote_snap_name
        assert remote_name is not None, "start_session names the remote snapshot of every session"
        producer = self.ds.send_argv(snap.zfs_name, base.zfs_name if base else None)
        consumer = self.ssh.command(partner.id, address, partner.ssh_port,
                                    ["recv", rel.id, remote_name, "incremental" if base else "full"])

        def progress(moved: int) -> None:
            with self.store.session() as s:
                s.execute(update(ReplicationSession).where(ReplicationSession.id == session_id)
                          .values(size_sent=moved))

        log.info("session %s: sending %s of %s to %s", session_id,
                 f"the difference from {base.row.name}" if base else "a full stream", snap.zfs_name, address)
        started = time.monotonic()
        try:
            result = run_pipeline(producer, consumer, progress=progress,
                                  should_stop=lambda: self._still_active(session_id),
                                  stall_seconds=self.settings.repl_stall_seconds)
        except PipelineStopped as exc:
            # Stopped (a cancel, a stall) after the last byte left, the receive may have
            # committed the snapshot all the same: the partner says, once its receive ended.
            remote_id = self._received_anyway(partner, rel, snap)
            if remote_id is None:
                raise
            log.info("session %s: stopped (%s), but the partner had received %s whole", session_id, exc,
                     snap.zfs_name)
            return {"remote_snap_id": remote_id, "size_sent": exc.bytes_moved,
                    "message": f"Completed: the partner had received the whole snapshot when the transfer "
                               f"was stopped ({exc})"}
        log.info("session %s: %d bytes in %.1f s", session_id, result.bytes_moved, time.monotonic() - started)
        if result.consumer_rc == 255:
            reason = result.consumer_err.strip().splitlines()[-1] if result.consumer_err.strip() else "ssh failed"
            raise RemoteError(f"Partner {address}:{partner.ssh_port} unreachable over SSH: {reason}")
        if result.producer_rc != 0 and not result.producer_killed:
            raise ValueError(f"zfs send failed: {result.producer_err.strip() or result.producer_rc}")
        try:
            answer = json.loads(result.consumer_out)
        except ValueError:
            answer = {"error": (result.consumer_err or result.consumer_out).strip() or
                      f"exit status {result.consumer_rc}"}
        if result.consumer_rc != 0 or "error" in answer:
            raise RemoteError(f"The partner could not receive the snapshot: {answer.get('error')}")
        return {"remote_snap_id": str(answer["snap_id"]), "size_sent": result.bytes_moved}

    def _received_anyway(self, partner: Partner, rel: Relationship, snap) -> str | None:
        """The replica's id of `snap` if the partner holds it (asked once its receive of this
        relationship has ended), else None (also when the partner cannot say)."""
        try:
            remote = self.link.call(partner, "snapshots", rel.id, "settled")
        except RemoteError as exc:
            log.info("relationship %s: the partner cannot say whether the stream arrived: %s", rel.id, exc)
            return None
        for r in remote.get("snapshots", []):
            if isinstance(r, dict) and r.get("guid") == snap.props.get("guid") and r.get("id") is not None:
                return str(r["id"])
        return None

    # == the remote side: requests a partner makes over SSH (vsnap.worker.serve) ===================
    def serve(self, partner_id: str, words: list[str], stdin: BinaryIO) -> dict:
        with self.store.session() as s:
            partner = s.get(Partner, partner_id)
            if partner is None:
                raise NotFoundError("This appliance no longer knows that partner")
            s.expunge(partner)
        op, args = (words[0], words[1:]) if words else ("", [])
        if op == "info":
            return {"system_id": self.system.id, "repl_addresses": self._repl_addresses()}
        if op == "unpartner":
            return self._serve_unpartner(partner)
        if op == "create-replica":
            return self._serve_create_replica(partner, json.load(stdin))
        if op == "snapshots" and len(args) == 1:
            return self._serve_snapshots(partner, args[0])
        if op == "snapshots" and len(args) == 2 and args[1] == "settled":
            with self._receiving(_hex_id(args[0], "Relationship"), wait=self.settings.repl_stall_seconds * 2):
                return self._serve_snapshots(partner, args[0])
        if op == "prepare" and len(args) == 1:
            return {"repl_addresses": self._repl_addresses(), **self._serve_snapshots(partner, args[0])}
        if op == "recv" and len(args) == 3 and args[2] in ("full", "incremental"):
            return self._serve_receive(partner, args[0], validate_name(args[1], "Snapshot"), args[2] == "full",
                                       stdin.fileno())
        if op == "delete-relationship" and len(args) == 2 and args[1] in ("0", "1"):
            return self._serve_delete_relationship(partner, args[0], args[1] == "1")
        raise ValidationError(f"Unknown replication request: {' '.join(words)[:100]!r}")

    def _repl_addresses(self) -> list[str]:
        return [a for iface in self.network.list() if "repl" in iface["services"] for a in iface["ip4_addrs"]]

    def _serve_unpartner(self, partner: Partner) -> dict:
        with self.store.session() as s:
            if s.query(Relationship).filter(Relationship.partner_id == partner.id).first():
                raise ConflictError("Relationships with this partner exist here")
        with self.lock.held():
            self._forget_partner(partner.id)
        return {}

    def _partner_relationship(self, partner: Partner, rel_id: str, role: str | None = None) -> Relationship:
        with self.store.session() as s:
            rel = s.get(Relationship, _hex_id(rel_id, "Relationship"))
            if rel is None or rel.partner_id != partner.id or (role and rel.local_role != role):
                raise NotFoundError(f"Relationship {rel_id} not found")
            s.expunge(rel)
            return rel

    def _serve_create_replica(self, partner: Partner, req: dict) -> dict:
        rel_id = req.get("rel_id")
        if not isinstance(rel_id, str) or not _HEX32.fullmatch(rel_id):
            raise ValidationError("rel_id is not valid")
        kind = req.get("volume_type")
        if kind not in ("filesystem", "lun"):
            raise ValidationError("Only filesystem and lun volumes are replicated")
        primary_name = validate_name(req.get("primary_vol_name"))
        name = validate_name(req.get("name") or f"{primary_name}_replica")
        live = self.pools.live()
        if req.get("pool_id") is not None:
            matches = [(r, p) for r, p in live if str(r.id) == str(req["pool_id"])]
            if not matches:
                raise NotFoundError(f"Pool {req['pool_id']} not found on the partner")
        elif len(live) != 1:
            raise ValidationError(f"The partner has {len(live)} pools: give remote_pool_id")
        else:
            matches = live
        pool_row, summary = matches[0]
        view = self.catalog.load(pool_row.id)
        existing = [v for v in view.volumes.values() if v.row.name == name]
        if existing:
            if not req.get("reuse"):
                raise ConflictError(f"The partner's pool {summary.name} already has a volume named {name} "
                                    "(reuse: true adopts it)")
            volume = existing[0]
            if volume.row.volume_type != kind:
                raise ConflictError(f"{name} on the partner is a {volume.row.volume_type}, not a {kind}")
            with self.store.session() as s:
                for rel in s.query(Relationship).filter(Relationship.local_vol_id == volume.row.id):
                    if rel.partner_id == partner.id and rel.remote_vol_id == str(req.get("primary_vol_id")):
                        s.delete(rel)  # a stale replica of the same volume from the same partner
                    else:
                        raise ConflictError(f"{name} on the partner belongs to relationship {rel.id}")
            vol_id, made_here = volume.row.id, False
        else:
            size = req.get("size_total") if kind == "lun" else None
            made = self.volumes.create(name=name, volume_type=kind, pool_id=str(pool_row.id), size_total=size,
                                       size_block=req.get("size_block") if kind == "lun" else None)
            vol_id, made_here = int(made["id"]), True
        # Clients must not change a replica (a changed replica refuses the next incremental):
        # read-only, and no access-time updates, which ZFS would count as a change (a LUN's
        # zvol has no access times; on zfs-fuse a LUN is a filesystem holding its image).
        dataset = f"{summary.name}/{name}"
        try:
            if kind == "filesystem" or not self.ds.has_zvols:
                self.ds.set(dataset, "atime", "off")
            self.ds.set(dataset, "readonly", "on")
        except (CommandError, OSError):
            if made_here:  # the request failed: the replica it made goes with it
                self.volumes.delete(str(vol_id))
            raise
        with self.store.session() as s:
            s.add(Relationship(id=rel_id, partner_id=partner.id, local_role=REPLICA, local_vol_id=vol_id,
                               remote_pool_id=str(req.get("primary_pool_id")),
                               remote_vol_id=str(req.get("primary_vol_id")), remote_vol_name=primary_name))
        answer: dict[str, object] = {"vol_id": str(vol_id), "vol_name": name, "pool_id": str(pool_row.id)}
        try:  # where its first stream should go; without them the primary asks before it
            answer["repl_addresses"] = self._repl_addresses()
        except (CommandError, OSError) as exc:
            log.warning("replica %s made; its replication addresses are unknown: %s", name, describe(exc))
        return answer

    def _replica_snapshots(self, rel: Relationship):
        with self.store.session() as s:
            row = s.get(Volume, rel.local_vol_id)
            pool_id = row.pool_id if row is not None else None
        if pool_id is None:
            raise NotFoundError("The replica volume no longer exists")
        view = self.catalog.load(pool_id)  # the replica's pool only: not every pool's datasets
        volume = view.volumes.get(rel.local_vol_id)
        if volume is None:
            raise NotFoundError("The replica volume no longer exists")
        return volume, [v for v in view.snapshots.values() if v.volume.row.id == volume.row.id]

    def _serve_snapshots(self, partner: Partner, rel_id: str) -> dict:
        rel = self._partner_relationship(partner, rel_id, REPLICA)
        _, snaps = self._replica_snapshots(rel)
        return {"snapshots": [{"id": str(v.row.id), "name": v.row.name, "guid": v.props.get("guid")}
                              for v in snaps]}

    def _serve_receive(self, partner: Partner, rel_id: str, snap_name: str, full: bool, stdin: int) -> dict:
        rel = self._partner_relationship(partner, rel_id, REPLICA)
        volume, snaps = self._replica_snapshots(rel)
        if any(v.row.name == snap_name for v in snaps):
            raise ConflictError(f"The replica already has a snapshot named {snap_name}")
        if full and snaps:
            raise ConflictError("The replica already has snapshots: only an incremental stream can follow")
        target = f"{volume.dataset}@{snap_name}"
        with self._receiving(rel.id, wait=0):
            return self._receive_into(volume, target, snap_name, full, stdin)

    def _receive_into(self, volume, target: str, snap_name: str, full: bool, stdin: int) -> dict:
        # A zvol (a LUN on OpenZFS) is never mounted: it is received as it is.
        mounted = (volume.props or {}).get("type") != "volume"
        try:
            # Received unmounted: zfs-fuse fails a forced receive onto a mounted dataset, and
            # does not drop the kernel's cached pages of files a receive changed. A replica in
            # use (e.g. shared) still takes an incremental while mounted.
            if mounted:
                try:
                    self.ds.unmount(volume.dataset)
                except CommandError:
                    if full:
                        raise
            try:
                self.ds.receive(target, full=full, stdin=stdin)
            finally:
                if mounted:
                    self.ds.mount(volume.dataset)
        except CommandError as exc:
            raise ConflictError(describe(exc)) from exc
        with self.lock.held():
            view = self.catalog.load(volume.row.pool_id)
        for snap in view.snapshots.values():
            if snap.volume.row.id == volume.row.id and snap.row.name == snap_name:
                return {"snap_id": str(snap.row.id)}
        raise ConflictError(f"The received snapshot {snap_name} is not in the catalog")

    def _receive_lock_path(self, rel_id: str):
        return self.settings.state_dir / "run" / f"receive-{rel_id}.lock"

    @contextlib.contextmanager
    def _receiving(self, rel_id: str, wait: float):
        """Held while a stream into the relationship's replica is received (in any process);
        `wait` seconds at most to get it (0: a receive already running is a conflict)."""
        path = self._receive_lock_path(rel_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ConflictError("A stream into this replica is being received") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # and the lock with it

    def _serve_delete_relationship(self, partner: Partner, rel_id: str, preserve: bool) -> dict:
        rel = self._partner_relationship(partner, rel_id)
        if rel.local_role == REPLICA:
            # A receive the primary just stopped ends first; then refused whole, or done whole.
            with self._receiving(rel.id, wait=self.settings.repl_stall_seconds):
                self._drop_replica_side(rel.id, preserve)
        else:
            self._stop_sessions(rel.id, "Canceled: the relationship was deleted on the partner")
            self._drop_relationship(rel.id)  # the primary volume is never deleted
        return {}
