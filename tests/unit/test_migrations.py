"""The Alembic history: it builds exactly the schema the models describe, and the snapshot
table's rebuild (0008) keeps rows, ids and the id sequence."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from vsnap.store.db import make_engine
from vsnap.store.models import Base

ROOT = Path(__file__).resolve().parents[2]


def _config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = url
    return config


def test_migrations_build_the_models_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'v.db'}"
    command.upgrade(_config(url), "head")
    engine = make_engine(url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diffs == []


def test_snapshot_rebuild_keeps_rows_and_never_reuses_ids(tmp_path):
    url = f"sqlite:///{tmp_path / 'v.db'}"
    config = _config(url)
    command.upgrade(config, "0007")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pool (id, name, pool_type, diskgroup_size, state, time_created, "
                             "time_updated) VALUES (1, 'p', 'raid0', 8, 'ready', 0, 0)"))
        conn.execute(sa.text("INSERT INTO volume (id, pool_id, name, volume_type, is_clone, state, time_created, "
                             "time_updated) VALUES (1, 1, 'v', 'filesystem', 0, 'ready', 0, 0), "
                             "(2, 1, 'w', 'filesystem', 0, 'ready', 0, 0)"))
        for snap_id in (1, 2, 3):
            conn.execute(sa.text("INSERT INTO snapshot (id, volume_id, name, guid, state, time_created, "
                                 "time_updated) VALUES (:i, 1, :n, :g, 'ready', 0, 0)"),
                         {"i": snap_id, "n": f"s{snap_id}", "g": f"g{snap_id}"})
        conn.execute(sa.text("DELETE FROM snapshot WHERE id = 3"))
    engine.dispose()
    command.upgrade(config, "head")
    engine = make_engine(url)
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT id, name, guid FROM snapshot ORDER BY id")).fetchall() == \
            [(1, "s1", "g1"), (2, "s2", "g2")]
        # the same guid under another volume is allowed now; twice under one volume is not
        conn.execute(sa.text("INSERT INTO snapshot (volume_id, name, guid, state, time_created, time_updated) "
                             "VALUES (2, 'r1', 'g1', 'ready', 0, 0)"))
        new_id = conn.execute(sa.text("SELECT id FROM snapshot WHERE volume_id = 2")).scalar()
        assert new_id == 4  # 3 was used once: never again
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO snapshot (volume_id, name, guid, state, time_created, time_updated) "
                                 "VALUES (1, 'dup', 'g1', 'ready', 0, 0)"))
        raise AssertionError("a guid twice under one volume was accepted")
    except sa.exc.IntegrityError:
        pass
    with engine.begin() as conn:  # going back needs guids unique again
        conn.execute(sa.text("DELETE FROM snapshot WHERE volume_id = 2"))
    engine.dispose()
    command.downgrade(config, "0007")
