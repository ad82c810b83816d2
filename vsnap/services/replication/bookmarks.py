"""What keeps a relationship's incrementals possible on the primary when backup software deletes
snapshots on its own schedule: a bookmark of the newest snapshot both sides hold (an incremental
can be sent from it after the snapshot is gone), and user holds on the snapshots a session is
sending from and to (ZFS refuses to destroy them until it ends). Both are named per
relationship, so they are told apart from anyone else's and go with it. Where ZFS has no
bookmarks (zfs-fuse) the relationship still remembers its last common snapshot, and an
incremental needs that snapshot itself."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ...drivers.runner import CommandError, describe
from ...drivers.zfs import ZfsDatasetOps
from ...store.db import Store
from ...store.models import Relationship

log = logging.getLogger(__name__)

PREFIX = "vsnap-repl-"


def hold_tag(rel_id: str) -> str:
    return f"{PREFIX}{rel_id}"


def bookmark_name(rel_id: str, guid: str) -> str:
    """The part after '#': per relationship, and per snapshot (a bookmark cannot be renamed,
    so the next one is made beside it before the old one goes)."""
    return f"{PREFIX}{rel_id}-{guid}"


def is_relationships_bookmark(rel_id: str, name: str) -> bool:
    """Whether `name` (after '#') is one of the relationship's bookmarks."""
    return name.startswith(f"{PREFIX}{rel_id}-")


@dataclass(frozen=True)
class Bookmark:
    """A base an incremental can be sent from in place of the snapshot it marks."""
    zfs_name: str  # dataset#name
    snap_name: str  # the snapshot it marks (which may be gone)
    guid: str  # that snapshot's guid, which the replica's copy of it has too
    createtxg: int  # when that snapshot was taken: a base must be older than what is sent

    @property
    def label(self) -> str:
        return f"the bookmark of {self.snap_name}"


class Bookmarks:
    def __init__(self, store: Store, ds: ZfsDatasetOps):
        self.store = store
        self.ds = ds

    @property
    def can_bookmark(self) -> bool:
        return "bookmarks" in self.ds.zfs.stream_features()

    @property
    def can_hold(self) -> bool:
        return "holds" in self.ds.zfs.stream_features()

    # -- the last common snapshot and its bookmark ---------------------------------------------
    def remember_common(self, rel_id: str, dataset: str | None, snap_name: str, guid: str | None) -> str | None:
        """Records `snap_name` as the newest snapshot both sides hold and, on the primary
        (`dataset` given), bookmarks it and drops the relationship's older bookmarks. Returns
        why the bookmark could not be made (the relationship remembers the snapshot all the
        same), or None."""
        problem = None
        if dataset is not None and guid and self.can_bookmark:
            ours = bookmark_name(rel_id, guid)
            try:
                self.ds.bookmark(f"{dataset}@{snap_name}", f"{dataset}#{ours}")
                for name in self.ds.bookmarks(dataset):
                    if is_relationships_bookmark(rel_id, name) and name != ours:
                        self.ds.destroy_bookmark(f"{dataset}#{name}")
            except CommandError as exc:
                problem = describe(exc)
                log.warning("relationship %s: could not bookmark %s@%s: %s", rel_id, dataset, snap_name, problem)
        with self.store.session() as s:
            rel = s.get(Relationship, rel_id)
            if rel is not None:
                rel.common_snap_name, rel.common_snap_guid = snap_name, guid
        return problem

    def bookmark_of_common(self, rel: Relationship, dataset: str) -> Bookmark | None:
        """The relationship's bookmark of its last common snapshot, if ZFS has it."""
        if not rel.common_snap_guid or not rel.common_snap_name or not self.can_bookmark:
            return None
        name = bookmark_name(rel.id, rel.common_snap_guid)
        try:
            found = self.ds.bookmarks(dataset)
        except CommandError as exc:
            log.warning("relationship %s: could not list the bookmarks of %s: %s", rel.id, dataset, describe(exc))
            return None
        if name not in found or found[name][0] != rel.common_snap_guid:
            return None
        return Bookmark(f"{dataset}#{name}", rel.common_snap_name, rel.common_snap_guid, found[name][1])

    # -- holds while a session sends ------------------------------------------------------------
    def hold(self, rel_id: str, snapshot: str) -> None:
        if self.can_hold:
            self.ds.hold(hold_tag(rel_id), snapshot)

    def release_all(self, rel_id: str, dataset: str) -> None:
        """Releases the relationship's holds on every snapshot of `dataset`: those of the
        session that ended, or of one a crash ended before it could (one session of a
        relationship runs at a time, so any hold found before a session starts is stale)."""
        if not self.can_hold:
            return
        tag = hold_tag(rel_id)
        for name, holds in self.ds.snapshot_numbers(dataset, "userrefs").items():
            if holds:  # someone's: released if ours (zfs-fuse cannot list whose)
                self.ds.release(tag, f"{dataset}@{name}")

    def forget(self, rel_id: str, dataset: str) -> None:
        """Everything of the relationship's on `dataset` goes: its holds and its bookmarks."""
        self.release_all(rel_id, dataset)
        if self.can_bookmark:
            for name in self.ds.bookmarks(dataset):
                if is_relationships_bookmark(rel_id, name):
                    self.ds.destroy_bookmark(f"{dataset}#{name}")
