"""The audit trail: every change asked of the API (who, what, when, result), kept in the
database for every server process to add to and for the API and CLI to read."""
from __future__ import annotations

import logging

from ..store.db import Store
from ..store.models import AuditEvent

log = logging.getLogger(__name__)

MAX_EVENTS = 100_000  # older events are pruned beyond this many
PRUNE_EVERY = 500
# Body fields that are never kept: credentials and key material.
SECRET_WORDS = ("pass", "secret", "token", "key", "credential")
MAX_VALUE = 256


def redact(value: object, depth: int = 0) -> object:
    """A request body fit for the trail: secrets replaced, long values cut, depth bounded."""
    if depth > 4:
        return "..."
    if isinstance(value, dict):
        return {str(k)[:64]: ("(secret)" if any(w in str(k).lower() for w in SECRET_WORDS)
                              else redact(v, depth + 1)) for k, v in list(value.items())[:50]}
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value[:50]]
    if isinstance(value, str):
        return value[:MAX_VALUE]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)[:MAX_VALUE]


class AuditService:
    def __init__(self, store: Store):
        self.store = store
        self._since_prune = 0

    def record(self, *, time: float, user: str | None, address: str | None, method: str, path: str,
               detail: object, status: int, message: str | None, request_id: str | None) -> None:
        try:
            with self.store.session() as s:
                s.add(AuditEvent(time=time, user=(user or None) and str(user)[:256], address=address,
                                 method=method, path=path[:512], detail=redact(detail), status=status,
                                 message=message[:2000] if message else None, request_id=request_id))
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune()
        except Exception:  # the trail must never fail a request that already happened
            log.exception("could not record an audit event for %s %s", method, path)

    def _prune(self) -> None:
        with self.store.session() as s:
            newest = s.query(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1).scalar() or 0
            s.query(AuditEvent).filter(AuditEvent.id <= newest - MAX_EVENTS).delete()

    @staticmethod
    def render(e: AuditEvent) -> dict:
        return {"id": str(e.id), "time": str(int(e.time)), "user": e.user, "address": e.address,
                "method": e.method, "path": e.path, "detail": e.detail, "status": e.status,
                "message": e.message, "request_id": e.request_id}

    def list(self, limit: int = 100, user: str | None = None) -> tuple[list[dict], int]:
        """The newest events first, and how many there are in all."""
        with self.store.session() as s:
            q = s.query(AuditEvent)
            if user is not None:
                q = q.filter(AuditEvent.user == user)
            total = q.count()
            return [self.render(e) for e in q.order_by(AuditEvent.id.desc()).limit(limit)], total
