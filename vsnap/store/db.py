"""SQLite through SQLAlchemy: WAL mode and a busy timeout so concurrent writers wait, not fail."""
from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 30000


def make_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000,
                                              "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    return engine


def _watch_commits(factory, tables: set[str], callback) -> None:
    def touches(objects) -> bool:
        return any(getattr(o, "__tablename__", None) in tables for o in objects)

    @event.listens_for(factory, "after_flush")
    def _flushed(session, _context):
        if touches(session.new) or touches(session.dirty) or touches(session.deleted):
            session.info["catalog_changed"] = True

    @event.listens_for(factory, "do_orm_execute")
    def _bulk(state):  # insert()/update()/delete() statements bypass the flush
        if (state.is_delete or state.is_update or state.is_insert) and any(
                m.local_table.name in tables for m in state.all_mappers):
            state.session.info["catalog_changed"] = True

    @event.listens_for(factory, "after_commit")
    def _committed(session):
        if session.info.pop("catalog_changed", False):
            callback()

    @event.listens_for(factory, "after_rollback")
    def _rolled_back(session):
        session.info.pop("catalog_changed", None)


class Store:
    def __init__(self, url: str, on_catalog_change=None,
                 catalog_tables: tuple[str, ...] = ("pool", "volume", "snapshot")):
        """`on_catalog_change` is called after each commit that changed rows of the
        catalog's tables (the catalog's cache depends on them; other tables do not)."""
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        if on_catalog_change is not None:
            _watch_commits(self._factory, set(catalog_tables), on_catalog_change)

    @contextmanager
    def session(self):
        """A unit of work: committed when the block ends cleanly, rolled back otherwise."""
        session: Session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
