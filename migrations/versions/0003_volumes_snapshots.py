"""Volumes and snapshots.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volume",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pool_id", sa.Integer(), sa.ForeignKey("pool.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("volume_type", sa.String(16), nullable=False),
        sa.Column("guid", sa.String(32), nullable=True, unique=True),
        sa.Column("is_clone", sa.Boolean(), nullable=False),
        sa.Column("serial", sa.String(64), nullable=True),
        sa.Column("size_block", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("parent_path", sa.Text(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "snapshot",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("volume_id", sa.Integer(), sa.ForeignKey("volume.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("guid", sa.String(32), nullable=True, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("snapshot")
    op.drop_table("volume")
