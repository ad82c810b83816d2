"""What the parts of replication share, and what both appliances of a partnership agree on: the
states of relationships and sessions, the checks of ids, ports and addresses, the errors of a
partner's answers, the link that carries requests to a partner over SSH, and the words of those
requests."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ...drivers.runner import CommandTimeout, Runner
from ...drivers.ssh import SshDriver
from ...errors import NotFoundError, ValidationError
from ...store.models import Partner, Relationship
from ..shares import normalize_host

PRIMARY, REPLICA = "primary", "replica"
PENDING, ACTIVE, COMPLETED, FAILED = "PENDING", "ACTIVE", "COMPLETED", "FAILED"
CANCELED = "Canceled"
# An ACTIVE session asked to stop carries this message until the transfer settles how it ended
# (the snapshot may have arrived whole): its status changes once, to the truth.
CANCELING = "Canceling"
_HEX32 = re.compile(r"[0-9a-f]{32}")
_SYSTEM_ID = re.compile(r"[0-9a-f]{8,64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class Request:
    """The requests one appliance makes of another over SSH: the words after the forced command
    (SSH_ORIGINAL_COMMAND, answered by the receiver's serve()). Partners running other versions
    send and expect these very words: never change one."""

    INFO = "info"  # the partner's system id and replication addresses
    UNPARTNER = "unpartner"  # the partner forgets this appliance (no relationship left with it)
    CREATE_REPLICA = "create-replica"  # the replica volume of a new relationship (the request on stdin)
    SNAPSHOTS = "snapshots"  # <rel id> [settled]: the replica's snapshots,
    SETTLED = "settled"  # ... once no stream into the replica is being received
    PREPARE = "prepare"  # <rel id>: INFO's addresses and the replica's SNAPSHOTS, in one round trip
    RECEIVE = "recv"  # <rel id> <snapshot name> full|incremental|resume: the stream on stdin
    FULL, INCREMENTAL = "full", "incremental"
    # A raw full stream of an encrypted volume (send -w): received as a new encrypted dataset in
    # place of the empty replica (ZFS refuses it over an existing one, even with -F).
    FULL_RAW = "full-raw"
    RESUME = "resume"  # the rest of an interrupted stream (`zfs send -t`), from the replica's token
    # After an incremental RECEIVE's words, each optional and followed by its value:
    FROM = "from"  # <guid>: the stream's base, which must be the replica's newest snapshot
    ROLLBACK_TO = "rollback-to"  # <snapshot name>: the replica is rolled back to it first (asked for)
    DELETE_RELATIONSHIP = "delete-relationship"  # <rel id> 1|0: the replica volume is kept (1), or not
    PRESERVE_REPLICA, DELETE_REPLICA = "1", "0"


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


def text_or_none(value) -> str | None:
    """Numbers in responses are strings, as in the spec; absent ones stay null."""
    return str(value) if value is not None else None


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


def hex_id(value, what: str) -> str:
    if not isinstance(value, str) or not _HEX32.fullmatch(value.lower()):
        raise NotFoundError(f"{what} {value} not found")
    return value.lower()


# Rows named by an id a client or a partner gave (an id of the wrong shape is not found).
def partner_row(s, partner_id) -> Partner:
    row = s.get(Partner, hex_id(partner_id, "Partner"))
    if row is None:
        raise NotFoundError(f"Partner {partner_id} not found")
    return row


def relationship_row(s, rel_id) -> Relationship:
    row = s.get(Relationship, hex_id(rel_id, "Relationship"))
    if row is None:
        raise NotFoundError(f"Relationship {rel_id} not found")
    return row


def receive_lock_path(state_dir: Path, rel_id: str) -> Path:
    """The lock a receive into the relationship's replica holds (receiver.py); the file goes
    with the relationship (relationships.py)."""
    return state_dir / "run" / f"receive-{rel_id}.lock"


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
