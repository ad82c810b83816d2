"""Helpers shared by the unit tests of the services."""
from __future__ import annotations

from contextlib import contextmanager

from vsnap.drivers.zfs import PoolSummary
from vsnap.errors import NotFoundError
from vsnap.services.attachments import Attachment
from vsnap.services.locking import StorageLock
from vsnap.store.models import Base, Pool


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


class FakePools:
    """The pool service as the catalog sees it: pool rows, and which of them ZFS has now."""

    def __init__(self, store):
        self.store = store
        self.imported: list[tuple[Pool, PoolSummary]] = []

    def add(self, name, guid) -> int:
        with self.store.session() as s:
            row = Pool(name=name, guid=guid, pool_type="raid0", state="ready")
            s.add(row)
            s.flush()
        self.imported.append((row, PoolSummary(name, guid, "ONLINE")))
        return row.id

    def live(self):
        return list(self.imported)

    def find(self, pool_id=None, name=None):
        for row, summary in self.live():
            if (pool_id is not None and str(row.id) == str(pool_id)) or \
                    (name is not None and summary.name == name):
                return row, summary
        raise NotFoundError(f"Pool {pool_id if pool_id is not None else name} not found")


def holder(**reactions) -> Attachment:
    """An Attachment whose named reactions are the given functions (the others: the defaults)."""
    made = Attachment()
    for name, react in reactions.items():
        assert callable(getattr(Attachment, name, None)), f"no reaction {name} in the protocol"
        setattr(made, name, react)
    return made
