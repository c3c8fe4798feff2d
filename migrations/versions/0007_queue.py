"""Work queue for shared-database deployments: one row per planned environment of a `run --queue`, claimed with
`FOR UPDATE SKIP LOCKED` and held by a renewed lease.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 08:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False,
                  comment="0: joint and export environments; 1: runtime environments, claimable once phase 0 is done"),
        sa.Column("position", sa.Integer(), nullable=False, comment="order in the plan; claimed lowest first"),
        sa.Column("env_hash", sa.String(length=64), nullable=False,
                  comment="expand.Environment.hash of the payload"),
        sa.Column("name", sa.String(length=300), nullable=False, comment="readable environment id, for logs"),
        sa.Column("payload", sa.JSON(), nullable=False,
                  comment="the planned environment and its cases (runtime side: its routes and export partners)"),
        sa.Column("worker", sa.String(length=200), nullable=True, comment="host:pid:nonce of the last claimant"),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True,
                  comment="database clock; past it anyone may claim"),
        sa.Column("attempts", sa.Integer(), nullable=False, comment="claims so far; more than one means a retake"),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_queue_entry_run_id_run"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_entry")),
        sa.UniqueConstraint("run_id", "env_hash", name=op.f("uq_queue_entry_run_id_env_hash")),
    )
    op.create_index("ix_queue_entry_claim", "queue_entry", ["run_id", "done_at", "phase", "position"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_queue_entry_claim", table_name="queue_entry")
    op.drop_table("queue_entry")
