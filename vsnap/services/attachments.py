"""Cross-resource reactions, in one place. A share (NFS/SMB) or a LUN mapping holds a volume,
and through it a pool; a replication relationship guards one. In the spirit of TrueNAS
middleware's attachment delegates, each such holder is an `Attachment`: it says whether it
refuses a delete or a rename, how it lets go before the change (returning how it comes back if
the change then fails), what it does once the change is made, and what it adds to a volume's
view. Services.build registers the holders in one stated order; volumes and pools ask the
registry (`Attachments`), never a holder by name, so neither imports what holds it."""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

Undo = Callable[[], None]


class Attachment:
    """One kind of holder of volumes and pools. Each method's default holds and refuses nothing."""

    # -- guards: raise an ApiError to refuse; asked before anything changes --------------------
    def refuse_volume_delete(self, vol_id: int) -> None:
        return None

    def refuse_volume_rename(self, vol_id: int) -> None:
        return None

    def refuse_pool_delete(self, pool_id: int, pool_name: str) -> None:
        return None

    # -- letting go before a change: each returns the undo, or None when it held nothing -------
    def volume_going(self, vol_id: int) -> Undo | None:
        """The volume is about to be destroyed (it is marked DELETING): drop what holds it."""
        return None

    def pool_going(self, pool_id: int, pool_name: str) -> Undo | None:
        """The pool is about to be destroyed: drop what holds its volumes."""
        return None

    def volume_renaming(self, vol_id: int) -> Undo | None:
        """The volume's dataset is about to be renamed: let go of its mount or device."""
        return None

    def pool_renaming(self, pool_name: str) -> Undo | None:
        """The pool is about to be exported and imported under a new name: let go of it."""
        return None

    # -- after a change ---------------------------------------------------------------------
    def volume_renamed(self, vol_id: int, old_dataset: str, new_dataset: str) -> None:
        return None

    def pool_renamed(self, old_name: str, new_name: str) -> None:
        return None

    def volume_resized(self, vol_id: int) -> None:
        return None

    def volume_released(self, vol_id: int) -> None:
        """At a start that finishes a delete: the servers let go of the volume whatever the rows
        say (the crash may have come between dropping rows and applying)."""
        return None

    def pool_released(self, pool_name: str) -> None:
        """The same, for a pool whose delete a start finishes."""
        return None

    # -- describing -------------------------------------------------------------------------
    def describe_volume(self, row: Any, body: dict) -> None:
        """Adds what this holder knows of the volume to its detailed view (share_id, host_ids)."""
        return None


class Attachments:
    """The registered holders, asked in the order they were registered; undos run newest first."""

    def __init__(self, *holders: Attachment):
        self.holders: list[Attachment] = list(holders)

    def register(self, *holders: Attachment) -> None:
        self.holders.extend(holders)

    # -- guards -----------------------------------------------------------------------------
    def refuse_volume_delete(self, vol_id: int) -> None:
        for holder in self.holders:
            holder.refuse_volume_delete(vol_id)

    def refuse_volume_rename(self, vol_id: int) -> None:
        for holder in self.holders:
            holder.refuse_volume_rename(vol_id)

    def refuse_pool_delete(self, pool_id: int, pool_name: str) -> None:
        for holder in self.holders:
            holder.refuse_pool_delete(pool_id, pool_name)

    # -- letting go -------------------------------------------------------------------------
    def volume_going(self, vol_id: int, before_undo: Callable[[], None] | None = None) -> Undo:
        return self._let_go(lambda h: h.volume_going(vol_id), before_undo)

    def pool_going(self, pool_id: int, pool_name: str, before_undo: Callable[[], None] | None = None) -> Undo:
        return self._let_go(lambda h: h.pool_going(pool_id, pool_name), before_undo)

    def volume_renaming(self, vol_id: int) -> Undo:
        return self._let_go(lambda h: h.volume_renaming(vol_id))

    def pool_renaming(self, pool_name: str) -> Undo:
        return self._let_go(lambda h: h.pool_renaming(pool_name))

    def _let_go(self, let_go: Callable[[Attachment], Undo | None],
                before_undo: Callable[[], None] | None = None) -> Undo:
        """Every holder lets go; returns the undo of them all. If one fails, `before_undo` runs
        (e.g. the object is marked as before, so the undos restore it in full), the holders
        before it come back, and the error goes on."""
        undos: list[Undo] = []
        try:
            for holder in self.holders:
                undo = let_go(holder)
                if undo is not None:
                    undos.append(undo)
        except Exception:
            if before_undo is not None:
                before_undo()
            _undo_all(undos)
            raise
        return lambda: _undo_all(undos)

    # -- after a change ---------------------------------------------------------------------
    def volume_renamed(self, vol_id: int, old_dataset: str, new_dataset: str) -> None:
        for holder in self.holders:
            holder.volume_renamed(vol_id, old_dataset, new_dataset)

    def pool_renamed(self, old_name: str, new_name: str) -> None:
        for holder in self.holders:
            holder.pool_renamed(old_name, new_name)

    def volume_resized(self, vol_id: int) -> None:
        for holder in self.holders:
            holder.volume_resized(vol_id)

    def volume_released(self, vol_id: int) -> None:
        for holder in self.holders:
            holder.volume_released(vol_id)

    def pool_released(self, pool_name: str) -> None:
        for holder in self.holders:
            holder.pool_released(pool_name)

    def describe_volume(self, row: Any, body: dict) -> None:
        for holder in self.holders:
            holder.describe_volume(row, body)


def _undo_all(undos: list[Undo]) -> None:
    for undo in reversed(undos):
        try:
            undo()
        except Exception:
            log.exception("could not undo a change after a failure")
