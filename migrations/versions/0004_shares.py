"""NFS/SMB shares, and the record of Samba's password entries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "share",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("volume_id", sa.Integer(), sa.ForeignKey("volume.id", ondelete="CASCADE"), nullable=False, unique=True),
        sa.Column("share_type", sa.String(8), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("allowed_hosts", sa.JSON(), nullable=False),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "smb_password",
        sa.Column("user", sa.String(256), primary_key=True),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("smb_password")
    op.drop_table("share")
