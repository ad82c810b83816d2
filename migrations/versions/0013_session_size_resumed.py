"""A session that resumed an interrupted transfer records how much of the stream the replica
had kept from before (its bytes in total are that and what it sent).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("session", sa.Column("size_resumed", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("session", "size_resumed")
