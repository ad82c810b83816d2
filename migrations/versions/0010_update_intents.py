"""Intent records of updates in flight: a volume update (rename and resize) and a pool update
(properties and rename) record what they change in `pending` while they run, so a start after
a crash finishes or rolls back an update that was half-done.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pool", sa.Column("pending", sa.JSON(), nullable=True))
    op.add_column("volume", sa.Column("pending", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+): a batch would copy and drop the tables, and dropping
    # the volume table deletes the snapshots, shares and mappings that refer to it.
    op.drop_column("volume", "pending")
    op.drop_column("pool", "pending")
