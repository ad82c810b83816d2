"""A relationship's delete in flight is recorded on its row, so a start after a crash can
finish it with the partner or roll it back.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: a batch (copy and rename) would drop the old table, which with foreign
    # keys on deletes every session of every relationship first.
    op.add_column("relationship", sa.Column("state", sa.String(16), nullable=False, server_default="ready"))
    op.add_column("relationship", sa.Column("delete_preserve", sa.Boolean(), nullable=True))
    op.add_column("relationship", sa.Column("owner", sa.String(64), nullable=True))


def downgrade() -> None:
    for column in ("owner", "delete_preserve", "state"):  # plain DROP COLUMN, for the same reason
        op.drop_column("relationship", column)
