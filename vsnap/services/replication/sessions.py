"""Sessions: the queue of transfers, one snapshot each. A session is queued PENDING
(start_session), claimed ACTIVE by the worker (claim_next) and ends COMPLETED or FAILED (end); a
cancel ends a queued one at once and marks a running one, which its sender sees (still_active) and
stops. Sending is the sender's (sender.py)."""
from __future__ import annotations

import logging
import time

from sqlalchemy import update

from ...config import Settings
from ...errors import ConflictError, NotFoundError, ValidationError
from ...store.db import Store
from ...store.models import Relationship, ReplicationSession, now
from ..catalog import DELETING, ApiId, parse_id
from ..doorbell import Doorbell
from ..owner import current_owner, owner_alive
from ..volumes import validate_name
from .common import ACTIVE, CANCELED, CANCELING, COMPLETED, FAILED, PENDING, PRIMARY, relationship_row, text_or_none

log = logging.getLogger(__name__)

def stop_open_sessions(s, which, reason: str, statuses=(PENDING, ACTIVE)) -> None:
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



class Sessions:
    def __init__(self, settings: Settings, store: Store, snapshots, doorbell: Doorbell):
        self.settings = settings
        self.store = store
        self.snapshots = snapshots
        self.doorbell = doorbell  # wakes the queue's worker

    @staticmethod
    def render_session(row: ReplicationSession) -> dict:
        return {"id": str(row.id), "rel_id": row.rel_id, "local_snap_id": text_or_none(row.local_snap_id),
                "remote_snap_id": row.remote_snap_id, "local_snap_name": row.local_snap_name,
                "remote_snap_name": row.remote_snap_name, "repl_address": row.repl_address,
                "size_sent": text_or_none(row.size_sent),
                "size_sent_total": text_or_none(None if row.size_sent is None
                                                else row.size_sent + (row.size_resumed or 0)),
                "rate": text_or_none(row.rate), "status": row.status,
                "time_queued": str(row.time_queued),
                "time_started": text_or_none(row.time_started), "time_ended": text_or_none(row.time_ended),
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

    def start_session(self, rel_id: str, snap_id: ApiId | None = None, remote_snap_name: str | None = None,
                      rollback_replica: bool = False) -> dict:
        """Queues a transfer of the snapshot (a new one by default). `rollback_replica`: a replica
        that has snapshots newer than the last one both sides hold is rolled back to it (those
        are destroyed); without it such a session fails, naming them."""
        if remote_snap_name is not None:
            validate_name(remote_snap_name, "Snapshot")
        with self.store.session() as s:
            rel = relationship_row(s, rel_id)
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
                                     remote_snap_name=remote_snap_name or snap["name"], status=PENDING,
                                     rollback_replica=bool(rollback_replica) or None)
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
            stop_open_sessions(s, ReplicationSession.id == row.id, CANCELED)
            key = row.id
        deadline = time.monotonic() + (self.settings.repl_cancel_wait if wait is None else wait)
        while True:
            body = self.get_session(key)
            if body["status"] != ACTIVE or time.monotonic() >= deadline:
                return body
            time.sleep(0.1)

    def stop_sessions(self, rel_id: str, reason: str, *statuses: str) -> None:
        with self.store.session() as s:
            stop_open_sessions(s, ReplicationSession.rel_id == rel_id, reason, statuses or (PENDING, ACTIVE))

    # -- the queue (run by the worker) ----------------------------------------------------------
    def fail_interrupted(self) -> set[str]:
        """Sessions that were ACTIVE in a process that died can never finish: FAILED. Returns
        their relationships."""
        interrupted = set()
        with self.store.session() as s:
            for row in s.query(ReplicationSession).filter(ReplicationSession.status == ACTIVE):
                if not owner_alive(row.owner):
                    row.status, row.time_ended = FAILED, now()
                    row.message = "Interrupted: the appliance stopped during the transfer; start a new session"
                    log.info("session %s: interrupted by a stop; failed", row.id)
                    interrupted.add(row.rel_id)
        return interrupted

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

    # -- how a running session ends: its sender reports, and sees a cancel -----------------------
    def end(self, session_id: int, status: str, message: str | None, **fields) -> None:
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

    def still_active(self, session_id: int) -> str | None:
        """None while the transfer may go on; else why it must stop."""
        with self.store.session() as s:
            row = s.get(ReplicationSession, session_id)
            if row is None:
                return CANCELED  # its relationship went
            if row.status != ACTIVE:
                return row.message or CANCELED
            return CANCELED + row.message.removeprefix(CANCELING) if _canceling(row) else None
