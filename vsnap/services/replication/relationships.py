"""Relationships: which volume here is kept where (a primary here and its replica on the
partner, or the other way round). One is made with the partner, which makes the replica, and
deleted all or nothing on both sides; while it lasts, the guards keep its volume, a replica's name
and the pool under them."""
from __future__ import annotations

import logging
import threading
import uuid

from sqlalchemy import update
from sqlalchemy.orm import Session

from ...config import Settings
from ...drivers.runner import CommandError, Runner
from ...errors import ApiError, ConflictError, NotFoundError, ServiceUnavailableError, ValidationError
from ...store.db import Store
from ...store.models import Partner, Relationship, Volume, now
from ..attachments import Attachment
from ..catalog import DELETING, FILEBACKED, READY, ApiId, Catalog
from ..locking import StorageLock
from ..owner import current_owner, owner_alive
from ..volumes import validate_name
from .bookmarks import Bookmarks
from .common import (
    ACTIVE,
    PRIMARY,
    REPLICA,
    PartnerLink,
    RemoteError,
    Request,
    partner_row,
    receive_lock_path,
    relationship_row,
    text_or_none,
)
from .partners import Partners
from .sessions import Sessions

log = logging.getLogger(__name__)


class Relationships(Attachment):
    """Also an Attachment of volumes and pools: its guards refuse to delete a replicated volume,
    rename a replica, or delete the pool under either."""

    def __init__(self, settings: Settings, store: Store, catalog: Catalog, volumes, link: PartnerLink,
                 lock: StorageLock, partners: Partners, sessions: Sessions, runner: Runner, bookmarks: Bookmarks):
        self.runner = runner
        self.bookmarks = bookmarks  # told of the partner's side deleted (a kill point of the crash tests)
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.volumes = volumes
        self.link = link
        self.lock = lock
        self.partners = partners
        self.sessions = sessions
        self._releasing: set[str] = set()  # relationships whose replica volume is being deleted
        self._releasing_lock = threading.Lock()

    def render_relationship(self, s: Session, rel: Relationship) -> dict:
        volume = s.get(Volume, rel.local_vol_id)
        assert volume is not None, "a relationship goes with its volume (foreign key, on delete cascade)"
        return {
            "id": rel.id, "local_pool_id": str(volume.pool_id), "local_role": rel.local_role,
            "local_vol_id": str(rel.local_vol_id), "local_vol_name": volume.name, "partner_id": rel.partner_id,
            "remote_pool_id": rel.remote_pool_id, "remote_vol_id": rel.remote_vol_id,
            "remote_vol_name": rel.remote_vol_name, "last_sync_status": rel.last_sync_status,
            "last_attempt_snap_id": text_or_none(rel.last_attempt_snap_id),
            "last_success_snap_id": text_or_none(rel.last_success_snap_id),
            "max_rate": text_or_none(rel.max_rate),
            "last_common_snapshot": {"name": rel.common_snap_name, "guid": rel.common_snap_guid}
            if rel.common_snap_name and rel.common_snap_guid else None,
            "time_created": str(rel.time_created), "time_updated": str(rel.time_updated),
        }

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
            return self.render_relationship(s, relationship_row(s, rel_id))

    def create_relationship(self, vol_id: ApiId, partner_id: str, remote_pool_id: ApiId | None = None,
                            remote_vol_name: str | None = None, reuse: bool = False,
                            max_rate: int | None = None) -> dict:
        if remote_vol_name is not None:
            validate_name(remote_vol_name)
        with self.store.session() as s:
            partner = partner_row(s, partner_id)
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
            answer = self.link.call(partner, Request.CREATE_REPLICA, body=request)
        except RemoteError as exc:
            if exc.unreachable:
                raise ServiceUnavailableError(str(exc)) from exc
            raise ConflictError(str(exc)) from exc
        try:
            with self.store.session() as s:
                s.add(Relationship(id=rel_id, partner_id=partner.id, local_role=PRIMARY,
                                   local_vol_id=volume.row.id, remote_pool_id=str(answer["pool_id"]),
                                   remote_vol_id=str(answer["vol_id"]), remote_vol_name=str(answer["vol_name"]),
                                   max_rate=max_rate))
        except Exception:
            self._remote_forget(partner, rel_id, preserve=bool(reuse))
            raise
        self.partners.remember_addresses(partner.id, answer.get("repl_addresses"))
        self.partners.remember_features(partner.id, answer.get("stream_features"))
        return self.get_relationship(rel_id)

    def update_relationship(self, rel_id: str, *, max_rate: int | None) -> dict:
        """The bandwidth limit of the relationship's streams, from its next session. Only the
        primary sends, so only the primary's side takes one."""
        with self.store.session() as s:
            rel = relationship_row(s, rel_id)
            if rel.local_role != PRIMARY:
                raise ConflictError(f"Relationship {rel.id} is a replica here: its primary's appliance sends the "
                                    "streams, so its bandwidth limit is set there")
            if rel.max_rate != max_rate:
                rel.max_rate, rel.time_updated = max_rate, now()
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
            self.sessions.stop_sessions(rel.id, "Canceled: the relationship is being deleted", ACTIVE)
            if rel.local_role == PRIMARY:
                self._delete_with_partner(rel, partner, bool(preserve_replica), resumed)
            else:
                self.drop_replica_side(rel.id, bool(preserve_replica))
                self.partners.tell_partner(partner, rel.id)
        except BaseException:
            self._unmark_deleting(rel.id, only_owner=current_owner())
            raise

    def _mark_deleting(self, rel_id, preserve: bool) -> tuple[Relationship, Partner, bool]:
        """The row says a delete is in flight, and by whom; one at a time. `resumed`: an
        earlier delete of it was interrupted (its process died), and may have reached the
        partner."""
        with self.store.session() as s:
            rel = relationship_row(s, rel_id)
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
            self.link.call(partner, Request.DELETE_RELATIONSHIP, rel.id,
                           Request.PRESERVE_REPLICA if preserve else Request.DELETE_REPLICA)
        except RemoteError as exc:
            self._partner_could_not_delete(rel, partner, preserve, resumed, exc)
        self.runner.step_done(f"relationship {rel.id}: the partner's side deleted")
        self.drop_relationship(rel.id)
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
                self.partners.remember_notice(partner.id, rel.id)
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

    def drop_relationship(self, rel_id: str) -> None:
        """The row goes (its sessions with it), and the relationship's bookmarks and holds on
        its primary volume."""
        where = self._primary_volume(rel_id)
        if where is not None:
            self._forget_bookmarks(rel_id, *where)
        with self.store.session() as s:
            row = s.get(Relationship, rel_id)
            if row is not None:
                s.delete(row)  # its sessions go with it
        receive_lock_path(self.settings.state_dir, rel_id).unlink(missing_ok=True)

    def _forget_bookmarks(self, rel_id: str, pool_id: int, vol_id: int, holds_only: bool = False) -> None:
        """Its bookmarks and holds go with it (or only the holds, those of an interrupted
        session). One that cannot be removed now (ZFS failing) is logged and left: named for
        the relationship, it keeps nothing anyone else needs, and its holds are released again
        before its next session."""
        try:
            volume = self.catalog.load(pool_id).volumes.get(vol_id)
            if volume is not None:
                if holds_only:
                    self.bookmarks.release_all(rel_id, volume.dataset)
                else:
                    self.bookmarks.forget(rel_id, volume.dataset)
        except (CommandError, OSError) as exc:
            log.warning("relationship %s: its bookmarks and holds could not be removed: %s", rel_id, exc)

    def release_holds(self, rel_id: str) -> None:
        """Lets go of the snapshots an interrupted session of the relationship held."""
        where = self._primary_volume(rel_id)
        if where is not None:
            self._forget_bookmarks(rel_id, *where, holds_only=True)

    def _primary_volume(self, rel_id: str) -> tuple[int, int] | None:
        """(pool id, volume id) of the relationship's volume where it is the primary here."""
        with self.store.session() as s:
            row = s.get(Relationship, rel_id)
            volume = s.get(Volume, row.local_vol_id) if row is not None and row.local_role == PRIMARY else None
            return (volume.pool_id, volume.id) if volume is not None else None

    def drop_replica_side(self, rel_id: str, preserve: bool) -> None:
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
        self.drop_relationship(rel_id)

    def _remote_forget(self, partner: Partner, rel_id: str, preserve: bool) -> None:
        """Undoes a replica the partner made for a relationship that could not be recorded here."""
        try:
            self.link.call(partner, Request.DELETE_RELATIONSHIP, rel_id,
                           Request.PRESERVE_REPLICA if preserve else Request.DELETE_REPLICA)
        except RemoteError as exc:
            log.warning("relationship %s: the partner could not be told: %s", rel_id, exc)

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
