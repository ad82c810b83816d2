"""Pools: the index of this appliance's ZFS pools, doubling as their change-intent record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guid", sa.String(32), nullable=True, unique=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("pool_type", sa.String(16), nullable=False),
        sa.Column("diskgroup_size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pending_name", sa.String(256), nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("pool")
