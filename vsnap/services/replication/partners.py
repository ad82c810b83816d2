"""Partners: the trust between this appliance and another. Partnering sends the remote's user
and password once, over TLS to a certificate pinned by fingerprint; both sides then authorize each
other's replication SSH key, forced onto `vsnap.worker.serve` (which answers only for relationships
with that partner), and pin each other's SSH host key. Everything after that goes over SSH; no
password is kept. Kept here too, per partner: its replication addresses as it last gave them, and
the notices of relationships deleted here that it has yet to hear of."""
from __future__ import annotations

import json
import logging
import socket
import sys
import uuid

from ...config import Settings
from ...drivers.partner_api import PartnerApi, PartnerApiError, certificate_fingerprint, file_fingerprint
from ...drivers.ssh import SshDriver, normalize_public_key
from ...errors import ApiError, ConflictError, ServiceUnavailableError, ValidationError
from ...store.db import Store
from ...store.models import Partner, Relationship, Setting, now
from ..locking import StorageLock
from .common import (
    _FINGERPRINT,
    _HEX32,
    _SYSTEM_ID,
    PartnerLink,
    RemoteError,
    Request,
    partner_row,
    validate_address,
    validate_port,
)

log = logging.getLogger(__name__)


class Partners:
    def __init__(self, settings: Settings, store: Store, system, ssh: SshDriver, link: PartnerLink,
                 lock: StorageLock):
        self.settings = settings
        self.store = store
        self.system = system
        self.ssh = ssh
        self.link = link
        self.lock = lock

    def serve_command(self, partner_id: str) -> list[str]:
        """What a partner's key may run here: the replication command, for that partner only."""
        return [sys.executable, "-m", "vsnap.worker.serve", "--state", str(self.settings.state_dir),
                "--partner", partner_id]

    @staticmethod
    def render_partner(p: Partner) -> dict:
        return {"id": p.id, "address": p.address, "api_port": str(p.api_port), "ssh_port": str(p.ssh_port),
                "time_created": str(p.time_created), "time_updated": str(p.time_updated)}

    def list_partners(self) -> list[dict]:
        with self.store.session() as s:
            return [self.render_partner(p) for p in s.query(Partner).order_by(Partner.time_created, Partner.id)]

    def get_partner(self, partner_id: str, check_trust: bool = False) -> dict:
        with self.store.session() as s:
            partner = partner_row(s, partner_id)
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
            self.link.call(partner, Request.INFO, timeout=self.settings.partner_check_timeout)
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
                self.forget_partner(made_here)
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
            self.link.call(partner, Request.UNPARTNER)
        except RemoteError as exc:
            log.warning("partner %s: could not withdraw the half-made partnership: %s", partner.address, exc)

    def forget_partner(self, partner_id: str) -> None:
        with self.store.session() as s:
            row = s.get(Partner, partner_id)
            if row is not None:
                s.delete(row)
            self._forget_addresses(s, partner_id)
            row = s.get(Setting, self._features_key(partner_id))
            if row is not None:
                s.delete(row)
            s.query(Setting).filter(Setting.key.like(f"partner-notice:{partner_id}:%")).delete(
                synchronize_session=False)
        self._drop_trust(partner_id)

    # The partner's replication addresses, as it last gave them (creating a replica, or before a
    # stream): a first session can then stream at once, to the right address. Kept in the
    # settings table (no schema change); a stale list only costs the round trip it saves.
    @staticmethod
    def _addresses_key(partner_id: str) -> str:
        return f"partner-repl-addresses:{partner_id}"

    def remember_addresses(self, partner_id: str, addresses) -> None:
        if isinstance(addresses, list):
            self._remember(self._addresses_key(partner_id), [a for a in addresses if isinstance(a, str)][:64])

    def remembered_addresses(self, partner_id: str) -> list[str] | None:
        found = self._remembered(self._addresses_key(partner_id))
        return found if isinstance(found, list) else None

    # The partner's stream features (ZfsDriver.stream_features), as it last gave them before a
    # stream: which stream flags it can receive. An appliance that never says has none.
    @staticmethod
    def _features_key(partner_id: str) -> str:
        return f"partner-stream-features:{partner_id}"

    def remember_features(self, partner_id: str, features) -> None:
        self._remember(self._features_key(partner_id), sorted({f for f in features if isinstance(f, str)})[:32]
                       if isinstance(features, list) else [])

    def remembered_features(self, partner_id: str) -> frozenset[str] | None:
        found = self._remembered(self._features_key(partner_id))
        return frozenset(f for f in found if isinstance(f, str)) if isinstance(found, list) else None

    def _remember(self, key: str, value: list) -> None:
        """What a partner said, kept in the settings table (no schema change) as JSON."""
        text = json.dumps(value)
        with self.store.session() as s:
            row = s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=text))
            elif row.value != text:
                row.value = text

    def _remembered(self, key: str):
        with self.store.session() as s:
            row = s.get(Setting, key)
            try:
                return json.loads(row.value) if row is not None and row.value else None
            except ValueError:
                return None

    def _forget_addresses(self, s, partner_id: str) -> None:
        row = s.get(Setting, self._addresses_key(partner_id))
        if row is not None:
            s.delete(row)

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
            partner = partner_row(s, partner_id)
            used = s.query(Relationship).filter(Relationship.partner_id == partner.id).count()
        if used:
            raise ConflictError(f"Partner {partner.id} is used by {used} relationship(s); delete them first")
        self.deliver_notices(partner.id)  # relationships deleted here that it has not heard of yet
        try:
            self.link.call(partner, Request.UNPARTNER)
        except RemoteError as exc:
            if not (exc.unreachable or exc.unknown):
                raise ConflictError(f"The partner refused to end the partnership: {exc.reason}") from exc
            log.warning("partner %s unreachable or no longer knows us: trust removed here only (%s)",
                        partner.id, exc)
        with self.lock.held():
            self.forget_partner(partner.id)
        log.info("partner %s removed", partner.id)

    def tell_partner(self, partner: Partner, rel_id: str) -> None:
        """The primary forgets a relationship deleted on the replica's side; told later if it
        cannot be told now."""
        if not self._tell(partner, rel_id):
            self.remember_notice(partner.id, rel_id)
            log.warning("relationship %s: the partner is told when it answers", rel_id)

    def _tell(self, partner: Partner, rel_id: str) -> bool:
        """Tells the partner a relationship went here (it drops its side, keeping the replica).
        False when it must be told again: no answer came, or how its request ended is not known."""
        try:
            self.link.call(partner, Request.DELETE_RELATIONSHIP, rel_id, Request.PRESERVE_REPLICA)
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

    def remember_notice(self, partner_id: str, rel_id: str) -> None:
        with self.store.session() as s:
            if s.get(Setting, self._notice_key(partner_id, rel_id)) is None:
                s.add(Setting(key=self._notice_key(partner_id, rel_id), value=Request.DELETE_RELATIONSHIP))

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
