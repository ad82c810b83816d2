"""Hosts, their initiator names, and LUN mappings.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "host_initiator",
        sa.Column("iqn", sa.String(256), primary_key=True),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("host.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_index("ix_host_initiator_host_id", "host_initiator", ["host_id"])
    op.create_table(
        "lun_mapping",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("host.id", ondelete="CASCADE"), nullable=False),
        sa.Column("volume_id", sa.Integer(), sa.ForeignKey("volume.id", ondelete="CASCADE"), nullable=False),
        sa.Column("lun", sa.Integer(), nullable=False),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.UniqueConstraint("host_id", "lun"),
        sa.UniqueConstraint("host_id", "volume_id"),
    )
    op.create_index("ix_lun_mapping_host_id", "lun_mapping", ["host_id"])
    op.create_index("ix_lun_mapping_volume_id", "lun_mapping", ["volume_id"])


def downgrade() -> None:
    op.drop_table("lun_mapping")
    op.drop_table("host_initiator")
    op.drop_table("host")
