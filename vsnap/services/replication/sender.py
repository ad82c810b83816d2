"""The sending side: runs one claimed session (run_session). It plans the stream (from which
base, to which address: known from the last completed session, or asked of the partner in one
round trip), pipes `zfs send` into `ssh <partner> recv`, and ends the session as it went."""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

from sqlalchemy import update

from ...config import Settings
from ...drivers.pipeline import PipelineStopped, run_pipeline
from ...drivers.runner import CommandError, describe
from ...drivers.ssh import SshDriver
from ...drivers.zfs import ZfsDatasetOps
from ...errors import ApiError, ValidationError
from ...logs import request_id_var
from ...store.db import Store
from ...store.models import Partner, Relationship, ReplicationSession, Volume
from ..catalog import Catalog
from .bookmarks import Bookmark, Bookmarks
from .common import COMPLETED, FAILED, PartnerLink, RemoteError, Request, validate_address
from .partners import Partners
from .sessions import Sessions

log = logging.getLogger(__name__)

RATE_WINDOW = 5.0  # seconds: a session's current rate is its stream's average over the last few
# Stream flags used where both appliances' ZFS have the feature (ZfsDriver.stream_features):
# compressed blocks cross the wire as stored, large blocks whole, embedded data as is.
STREAM_OPTIONS = (("compressed", "-c"), ("large_blocks", "-L"), ("embedded_data", "-e"))
# An encrypted volume is sent raw (-w): its blocks cross the wire and land on the partner as they
# are stored, encrypted, and the partner never holds the key. Never sent decrypted instead.
RAW = "-w"


def base_label(base) -> str:
    """How a log line or message names an incremental's base: a snapshot or a bookmark."""
    return base.label if isinstance(base, Bookmark) else base.row.name


def base_guid(base) -> str:
    return base.guid if isinstance(base, Bookmark) else base.props.get("guid")


def replica_snapshots(answer) -> list[dict]:
    """The replica's snapshots as the partner listed them, oldest first (by the transaction
    group each was taken in, where it says; else in the order given), with a guid each."""
    found = [r for r in answer if isinstance(r, dict) and r.get("guid") is not None] \
        if isinstance(answer, list) else []
    for r in found:
        r["guid"] = str(r["guid"])
    return sorted(found, key=lambda r: int(r["createtxg"]) if str(r.get("createtxg", "")).isdigit() else 0)


class Sender:
    def __init__(self, settings: Settings, store: Store, catalog: Catalog, ds: ZfsDatasetOps, ssh: SshDriver,
                 link: PartnerLink, partners: Partners, sessions: Sessions, bookmarks: Bookmarks):
        self.settings = settings
        self.bookmarks = bookmarks
        self.store = store
        self.catalog = catalog
        self.ds = ds
        self.ssh = ssh
        self.link = link
        self.partners = partners
        self.sessions = sessions

    def run_session(self, session_id: int) -> None:
        """Sends one session's snapshot. Every way out ends the session COMPLETED or FAILED
        with a message naming the cause."""
        request_id_var.set(f"session-{session_id}")  # this thread's log lines
        try:
            result = self._transfer(session_id)
        except PipelineStopped as exc:
            self.sessions.end(session_id, FAILED, str(exc))
        except (RemoteError, ApiError, CommandError, OSError, ValueError) as exc:
            self.sessions.end(session_id, FAILED, getattr(exc, "message", None) or describe(exc))
        except Exception as exc:  # a bug must still end the session
            log.exception("session %s failed unexpectedly", session_id)
            self.sessions.end(session_id, FAILED, f"Internal error: {exc}")
        else:
            self.sessions.end(session_id, COMPLETED, result.pop("message", None), **result)

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
        dataset = snap.volume.dataset
        # Held while it is sent, and its base while it is sent from: a snapshot deleted
        # meanwhile would break the stream. Holds a crash left are released first.
        self.bookmarks.release_all(rel.id, dataset)
        try:
            self.bookmarks.hold(rel.id, snap.zfs_name)
            result = self._plan_and_send(session_id, row, rel, partner, snap, older, last)
        finally:
            try:
                self.bookmarks.release_all(rel.id, dataset)
            except (CommandError, OSError) as exc:  # released before the next session
                log.warning("session %s: could not release its holds: %s", session_id, describe(exc))
        problem = self.bookmarks.remember_common(rel.id, dataset, snap.row.name, snap.props.get("guid"))
        if problem is not None:
            result["message"] = (f"{result.get('message') or 'Completed'}; the snapshot could not be bookmarked "
                                 f"({problem}), so the next incremental needs it kept")
        return result

    def _plan_and_send(self, session_id: int, row: ReplicationSession, rel: Relationship, partner: Partner,
                       snap, older: list, last: ReplicationSession | None) -> dict:
        """Sends `snap` from the newest snapshot (or bookmark) both sides hold, to an address of
        the partner's: as the last completed session left it, else as the partner says."""
        bookmark = self.bookmarks.bookmark_of_common(rel, snap.volume.dataset)
        if bookmark is not None and bookmark.createtxg >= self._createtxg(snap):
            bookmark = None  # not older than the snapshot to send: no base for it
        tried = None
        encrypted = self.ds.encrypted(snap.volume.dataset)
        # An encrypted volume needs a partner that receives raw streams: asked first when that
        # is not known, so that no stream leaves before it is.
        known = None if encrypted and "raw" not in (self.partners.remembered_features(partner.id) or ()) \
            else self._without_asking(partner, rel, last, older, bookmark)
        if known is not None:
            base, address = known
            tried = (base.zfs_name if base else None, address)
            try:
                return self._from_bookmark_said(self._send(session_id, row, rel, partner, snap, base, address), base)
            except RemoteError as exc:
                first_error = exc
                log.info("session %s: sending %s failed (%s); asking the partner for its snapshots", session_id,
                         f"the difference from {base_label(base)}" if base else "a full stream", exc)
        # One round trip before the stream: the partner's replication addresses and the
        # replica's snapshots (each SSH request is a request to the partner's server).
        remote = self.link.call(partner, Request.PREPARE, rel.id)
        addresses = [a for a in remote.get("repl_addresses", []) if isinstance(a, str)]
        self.partners.remember_addresses(partner.id, addresses)
        self.partners.remember_features(partner.id, remote.get("stream_features", []))
        address = self._data_address(partner, addresses)
        replica = replica_snapshots(remote.get("snapshots", []))
        remote_by_guid = {r["guid"]: r for r in replica}
        if snap.props.get("guid") in remote_by_guid:  # sent before (e.g. a retried session)
            with self.store.session() as s:
                s.get(ReplicationSession, session_id).repl_address = address
            return {"remote_snap_id": str(remote_by_guid[snap.props["guid"]].get("id")), "size_sent": 0}
        dropped = earlier = None
        if remote.get("resume_token") is not None:  # a transfer broke off: go on where it stopped
            resumed = self._resume(session_id, row, rel, partner, [snap, *older], address, remote["resume_token"])
            if isinstance(resumed, str):
                dropped = resumed
            else:
                earlier, of = resumed
                if of is snap:
                    earlier["message"] = f"Completed: {earlier['message']}"
                    return earlier
                # now the replica's newest, and one both hold
                replica.append({"id": earlier["remote_snap_id"], "name": self._sent_as(rel.id, of),
                                "guid": of.props["guid"]})
        base, newer = self._common_base(snap, older, bookmark, replica)
        rollback_to = None
        if newer:
            names = ", ".join(str(r.get("name")) for r in newer)
            if not row.rollback_replica:
                raise ValueError(f"The replica has diverged: it has snapshots newer than {base_label(base)}, the "
                                 f"newest snapshot both sides hold: {names}. A replica is never rolled back unless "
                                 "asked: start a session with rollback_replica true to destroy them on the replica "
                                 "and send from there")
            rollback_to = str(next(r for r in replica if r["guid"] == base_guid(base))["name"])
            log.info("session %s: rolling the replica back to %s, destroying %s, as asked", session_id,
                     rollback_to, names)
        if tried is not None and tried == (base.zfs_name if base else None, address) and rollback_to is None:
            raise first_error  # the same stream to the same place: it would fail the same way
        result = self._send(session_id, row, rel, partner, snap, base, address, rollback_to=rollback_to)
        if earlier is not None:
            result["size_sent"] += earlier["size_sent"]
            result["message"] = f"Completed: {earlier['message']} first"
        elif dropped is not None:
            result["message"] = f"Completed: {dropped}; the snapshot was sent from the start"
        elif rollback_to is not None:
            result["message"] = (f"Completed: the replica was rolled back to {rollback_to} as asked, destroying its "
                                 f"later snapshots {', '.join(str(r.get('name')) for r in newer)}")
        return self._from_bookmark_said(result, base)

    @staticmethod
    def _from_bookmark_said(result: dict, base) -> dict:
        if isinstance(base, Bookmark) and "message" not in result:
            result["message"] = f"Completed: sent from {base.label} (the snapshot itself was deleted)"
        return result

    def _createtxg(self, snap) -> int:
        """When `snap` was taken, in ZFS's transaction groups (asked only where a bookmark may
        be its base; 0 where ZFS cannot say)."""
        value = snap.props.get("createtxg") or self.ds.get(snap.zfs_name, ["createtxg"]).get("createtxg", "")
        return int(value) if value.isdigit() else 0

    @staticmethod
    def _common_base(snap, older: list, bookmark: Bookmark | None, replica: list[dict]):
        """(the newest of the primary's snapshots older than `snap`, or its bookmark, that the
        replica holds: the base of the incremental, None for a full stream; the replica's
        snapshots newer than it, which the primary did not send after it)."""
        candidates: dict[str, Any] = {}
        if bookmark is not None:
            candidates[bookmark.guid] = bookmark
        candidates.update((v.props.get("guid"), v) for v in older)  # the snapshot itself before its bookmark
        common = [i for i, r in enumerate(replica) if r["guid"] in candidates]
        if not common:
            if replica:
                raise ValueError("The replica has snapshots, but none in common with the primary's snapshots "
                                 f"older than {snap.row.name}: an incremental send has no base")
            return None, []
        return candidates[replica[common[-1]]["guid"]], replica[common[-1] + 1:]

    def _resume(self, session_id: int, row: ReplicationSession, rel: Relationship, partner: Partner,
                candidates: list, address: str, token) -> tuple[dict, Any] | str:
        """Sends the rest of an interrupted stream, from where the replica's resume token says,
        if it carries one of `candidates` (the session's snapshot, or an older one a session
        began to send): (the result, its message saying so, and the snapshot it completed).
        Otherwise why the replica's partial state is dropped (it is, before a stream from the
        start)."""
        if "resumable" not in self.ds.zfs.stream_features():
            return "this appliance cannot resume the interrupted transfer the replica kept"
        target = self.ds.resume_target(token) if isinstance(token, str) else None
        if target is None:
            return "the interrupted transfer the replica kept no longer works here (its snapshot is gone)"
        guid, kept = target
        of = next((c for c in candidates if c.props.get("guid") == guid), None)
        remote_name = row.remote_snap_name if of is candidates[0] else self._sent_as(rel.id, of)
        if of is None or remote_name is None:
            return "the interrupted transfer the replica kept was of a snapshot this session does not send"
        if of is candidates[0]:
            with self.store.session() as s:
                s.get(ReplicationSession, session_id).size_resumed = kept
        try:
            result = self._send(session_id, row, rel, partner, of, None, address, resume_token=token,
                                remote_name=remote_name)
        except (RemoteError, ValueError) as exc:
            log.info("session %s: resuming failed (%s); sending from the start", session_id, exc)
            with self.store.session() as s:
                s.get(ReplicationSession, session_id).size_resumed = None
            return f"resuming the interrupted transfer failed ({getattr(exc, 'message', None) or exc})"
        what = "" if of is candidates[0] else f" of {of.row.name}"
        result["message"] = (f"resumed the interrupted transfer{what}, {kept} bytes of which the replica had "
                             f"kept; {result['size_sent']} bytes sent now")
        return result, of

    def _sent_as(self, rel_id: str, snap) -> str | None:
        """The replica's name for `snap`, as the newest session that sent it asked."""
        with self.store.session() as s:
            row = s.query(ReplicationSession).filter(ReplicationSession.rel_id == rel_id,
                                                     ReplicationSession.local_snap_id == snap.row.id) \
                .order_by(ReplicationSession.id.desc()).first()
            return row.remote_snap_name if row is not None else None

    def _without_asking(self, partner: Partner, rel: Relationship, last: ReplicationSession | None,
                        older: list, bookmark: Bookmark | None):
        """Where the replica stands, when that is known without asking the partner (a round
        trip before the stream): (base snapshot or None for a full stream, address), or None.

        After a completed session (the newest that ended), the snapshot it sent is the
        replica's newest and its address carried data. Before the first one, the replica is
        empty (unless it was adopted with reuse) and the partner's addresses are known if it
        gave them. When that snapshot was deleted since, its bookmark is the base. A wrong
        guess costs little: ZFS refuses an incremental whose base is not the replica's newest
        snapshot, the partner refuses a full stream onto a replica with snapshots, and then it
        is asked."""
        try:
            if last is None:
                addresses = self.partners.remembered_addresses(partner.id)
                return None if addresses is None else (None, self._data_address(partner, addresses))
            if last.status != COMPLETED or last.local_snap_id != rel.last_success_snap_id \
                    or not last.repl_address:
                return None
            base = next((v for v in older if v.row.id == last.local_snap_id), None)
            if base is None and bookmark is not None and bookmark.snap_name == last.local_snap_name \
                    and last.local_snap_id not in {v.row.id for v in older}:
                base = bookmark  # the snapshot was deleted (it is not among the older ones)
            if base is None:  # gone, or not older than the snapshot to send
                return None
            return base, validate_address(last.repl_address, "the partner's replication address")
        except ValidationError:
            return None

    @staticmethod
    def _data_address(partner: Partner, addresses: list[str]) -> str:
        """Where a stream goes: the partner's address if it carries replication, else its
        first replication address."""
        address = partner.address if partner.address in addresses or not addresses else addresses[0]
        return validate_address(address, "the partner's replication address")

    def _send(self, session_id: int, row: ReplicationSession, rel: Relationship, partner: Partner, snap,
              base, address: str, resume_token: str | None = None, remote_name: str | None = None,
              rollback_to: str | None = None) -> dict:
        """Streams `snap` (its difference from `base`, a snapshot or a bookmark, or in full; or
        the rest of an interrupted stream, by the replica's token) to the replica at `address`;
        `rollback_to`: the replica's snapshot it is first rolled back to (asked for)."""
        with self.store.session() as s:
            s.get(ReplicationSession, session_id).repl_address = address
        remote_name = remote_name or row.remote_snap_name
        assert remote_name is not None, "start_session names the remote snapshot of every session"
        if resume_token is not None:
            producer = self.ds.send_resume_argv(resume_token)  # the flags it was begun with are in the token
            mode = Request.RESUME
        else:
            if base is not None and not isinstance(base, Bookmark):
                self.bookmarks.hold(rel.id, base.zfs_name)
            encrypted = self.ds.encrypted(snap.volume.dataset)
            producer = self.ds.send_argv(snap.zfs_name, base.zfs_name if base else None,
                                         self._stream_options(partner, encrypted))
            mode = Request.INCREMENTAL if base else Request.FULL_RAW if encrypted else Request.FULL
        words = [Request.RECEIVE, rel.id, remote_name, mode]
        if rollback_to is not None:
            words += [Request.ROLLBACK_TO, rollback_to]
        elif base is not None and resume_token is None and base_guid(base):
            words += [Request.FROM, str(base_guid(base))]
        consumer = self.ssh.command(partner.id, address, partner.ssh_port, words)

        recent: deque[tuple[float, int]] = deque()  # (when, bytes moved) over the last RATE_WINDOW

        def progress(moved: int) -> None:
            at = time.monotonic()
            recent.append((at, moved))
            while at - recent[0][0] > RATE_WINDOW:
                recent.popleft()
            since, then = recent[0]
            rate = int((moved - then) / (at - since)) if at > since else None
            with self.store.session() as s:
                s.execute(update(ReplicationSession).where(ReplicationSession.id == session_id)
                          .values(size_sent=moved, rate=rate))

        log.info("session %s: sending %s of %s to %s", session_id,
                 "the rest of an interrupted stream" if resume_token else
                 f"the difference from {base_label(base)}" if base else "a full stream", snap.zfs_name, address)
        started = time.monotonic()
        try:
            result = run_pipeline(producer, consumer, progress=progress,
                                  should_stop=lambda: self.sessions.still_active(session_id),
                                  stall_seconds=self.settings.repl_stall_seconds, max_rate=rel.max_rate)
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
        took = time.monotonic() - started
        log.info("session %s: %d bytes in %.1f s", session_id, result.bytes_moved, took)
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
        return {"remote_snap_id": str(answer["snap_id"]), "size_sent": result.bytes_moved,
                "rate": int(result.bytes_moved / took) if took > 0 else None}  # the stream's average

    def _stream_options(self, partner: Partner, encrypted: bool = False) -> list[str]:
        both = self.ds.zfs.stream_features() & (self.partners.remembered_features(partner.id) or frozenset())
        options = [flag for feature, flag in STREAM_OPTIONS if feature in both]
        if encrypted:
            if "raw" not in both:
                raise ValueError("The volume is encrypted and is sent only raw (zfs send -w), which the "
                                 "partner's ZFS cannot receive (it lacks native encryption, e.g. zfs-fuse); "
                                 "it is never sent decrypted")
            options.insert(0, RAW)
        return options

    def _received_anyway(self, partner: Partner, rel: Relationship, snap) -> str | None:
        """The replica's id of `snap` if the partner holds it (asked once its receive of this
        relationship has ended), else None (also when the partner cannot say)."""
        try:
            remote = self.link.call(partner, Request.SNAPSHOTS, rel.id, Request.SETTLED)
        except RemoteError as exc:
            log.info("relationship %s: the partner cannot say whether the stream arrived: %s", rel.id, exc)
            return None
        for r in remote.get("snapshots", []):
            if isinstance(r, dict) and r.get("guid") == snap.props.get("guid") and r.get("id") is not None:
                return str(r["id"])
        return None
