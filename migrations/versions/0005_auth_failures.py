"""Failed logins, shared by every server process for the throttle.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_failure",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_auth_failure_address_at", "auth_failure", ["address", "at"])
    op.create_index("ix_auth_failure_at", "auth_failure", ["at"])


def downgrade() -> None:
    op.drop_table("auth_failure")
