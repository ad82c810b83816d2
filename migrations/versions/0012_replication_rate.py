"""A relationship may carry a bandwidth limit (max_rate, bytes per second); a session records
the rate its stream moves at.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, as in 0011: a batch copy would drop tables that foreign keys point at.
    op.add_column("relationship", sa.Column("max_rate", sa.Integer(), nullable=True))
    op.add_column("session", sa.Column("rate", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("session", "rate")
    op.drop_column("relationship", "max_rate")
