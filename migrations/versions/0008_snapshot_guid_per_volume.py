"""Snapshot guids are unique per volume, not per appliance: a received snapshot keeps its
source's guid, so replicas on one appliance can share one.

SQLite cannot drop a constraint: the table is rebuilt, keeping ids and the id sequence (ids
are never reused).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = "id, volume_id, name, guid, state, owner, time_created, time_updated"


def _snapshot_table(name: str, *constraints) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("volume_id", sa.Integer(), sa.ForeignKey("volume.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("guid", sa.String(32), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
        *constraints,
        sqlite_autoincrement=True,
    )


def _rebuild(*constraints) -> None:
    _snapshot_table("snapshot_new", *constraints)
    op.execute(f"INSERT INTO snapshot_new ({COLUMNS}) SELECT {COLUMNS} FROM snapshot")
    op.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'snapshot_new', 0 WHERE NOT EXISTS "
               "(SELECT 1 FROM sqlite_sequence WHERE name = 'snapshot_new')")
    op.execute("UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence "
               "WHERE name = 'snapshot'), 0)) WHERE name = 'snapshot_new'")
    op.drop_table("snapshot")
    op.execute("DELETE FROM sqlite_sequence WHERE name = 'snapshot'")
    op.rename_table("snapshot_new", "snapshot")
    op.create_index("ix_snapshot_volume_id", "snapshot", ["volume_id"])


def upgrade() -> None:
    _rebuild(sa.UniqueConstraint("volume_id", "guid"))


def downgrade() -> None:
    _rebuild(sa.UniqueConstraint("guid"))
