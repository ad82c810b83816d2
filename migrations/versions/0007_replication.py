"""Partners, relationships and replication sessions.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partner",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("system_id", sa.String(64), nullable=False, unique=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("api_port", sa.Integer(), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("tls_fingerprint", sa.String(64), nullable=False),
        sa.Column("ssh_host_key", sa.Text(), nullable=False),
        sa.Column("ssh_public_key", sa.Text(), nullable=False),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
    )
    op.create_table(
        "relationship",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("partner_id", sa.String(32), sa.ForeignKey("partner.id"), nullable=False),
        sa.Column("local_role", sa.String(8), nullable=False),
        sa.Column("local_vol_id", sa.Integer(), sa.ForeignKey("volume.id", ondelete="CASCADE"), nullable=False),
        sa.Column("remote_pool_id", sa.String(32), nullable=False),
        sa.Column("remote_vol_id", sa.String(32), nullable=False),
        sa.Column("remote_vol_name", sa.String(256), nullable=False),
        sa.Column("last_sync_status", sa.String(16), nullable=True),
        sa.Column("last_attempt_snap_id", sa.Integer(), nullable=True),
        sa.Column("last_success_snap_id", sa.Integer(), nullable=True),
        sa.Column("time_created", sa.Integer(), nullable=False),
        sa.Column("time_updated", sa.Integer(), nullable=False),
    )
    op.create_index("ix_relationship_partner_id", "relationship", ["partner_id"])
    op.create_index("ix_relationship_local_vol_id", "relationship", ["local_vol_id"])
    op.create_table(
        "session",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rel_id", sa.String(32), sa.ForeignKey("relationship.id", ondelete="CASCADE"), nullable=False),
        sa.Column("local_snap_id", sa.Integer(), nullable=True),
        sa.Column("local_snap_name", sa.String(256), nullable=True),
        sa.Column("remote_snap_id", sa.String(32), nullable=True),
        sa.Column("remote_snap_name", sa.String(256), nullable=True),
        sa.Column("repl_address", sa.String(255), nullable=True),
        sa.Column("size_sent", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("time_queued", sa.Integer(), nullable=False),
        sa.Column("time_started", sa.Integer(), nullable=True),
        sa.Column("time_ended", sa.Integer(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_session_rel_id", "session", ["rel_id"])
    op.create_index("ix_session_status", "session", ["status"])


def downgrade() -> None:
    op.drop_table("session")
    op.drop_table("relationship")
    op.drop_table("partner")
