"""Callbacks one service registers on another to act before a change (shares and LUN
mappings let go of a volume before it is renamed or destroyed). A hook may return an undo:
when a later hook or the change itself fails, the undos run, newest first, so a failed
request leaves everything as it was."""
from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

Undo = Callable[[], None]


class Hooks(list):
    def run(self, *args: object, before_undo: Callable[[], None] | None = None) -> Undo:
        """Calls every hook; returns the undo of them all. If a hook raises, `before_undo`
        runs (e.g. the object is marked as before, so the undos restore it in full), the hooks
        before it are undone, and the error goes on."""
        undos: list[Undo] = []
        try:
            for hook in self:
                undo = hook(*args)
                if undo is not None:
                    undos.append(undo)
        except Exception:
            if before_undo is not None:
                before_undo()
            _undo_all(undos)
            raise
        return lambda: _undo_all(undos)


def _undo_all(undos: list[Undo]) -> None:
    for undo in reversed(undos):
        try:
            undo()
        except Exception:
            log.exception("could not undo a change after a failure")
