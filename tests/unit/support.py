"""Helpers shared by the unit tests of the services."""
from __future__ import annotations

from contextlib import contextmanager

from vsnap.services.locking import StorageLock
from vsnap.store.models import Base


def empty_tables(store) -> None:
    """Every table empty and ids from 1 again, children before parents."""
    with store.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.exec_driver_sql(f"DELETE FROM {table.name}")
        conn.exec_driver_sql("DELETE FROM sqlite_sequence")


class SpyLock(StorageLock):
    """The real lock, counting how often it was taken."""

    def __init__(self, path):
        super().__init__(path)
        self.taken = 0

    @contextmanager
    def held(self):
        self.taken += 1
        with super().held():
            yield
