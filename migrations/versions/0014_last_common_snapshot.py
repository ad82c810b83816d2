"""A relationship remembers the newest snapshot both sides hold (its name and guid): the primary
keeps a bookmark of it, so an incremental can follow after the snapshot itself is deleted. A
session may ask that a replica that diverged be rolled back to it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, as in 0011: a batch copy would drop tables that foreign keys point at.
    op.add_column("relationship", sa.Column("common_snap_name", sa.String(256), nullable=True))
    op.add_column("relationship", sa.Column("common_snap_guid", sa.String(32), nullable=True))
    op.add_column("session", sa.Column("rollback_replica", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("session", "rollback_replica")
    op.drop_column("relationship", "common_snap_guid")
    op.drop_column("relationship", "common_snap_name")
