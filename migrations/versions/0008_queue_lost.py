"""Bounded retakes: a queue entry counts the workers lost on it (leases that passed), so an environment that kills
every worker taking it is given up after `queue_max_retakes` retakes instead of being retaken forever.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATUS = "resolved | conflict | no-interpreter | install-failed | installed"


def upgrade() -> None:
    with op.batch_alter_table("queue_entry", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "lost", sa.Integer(), nullable=False, server_default="0",
            comment="leases that passed with the entry neither finished nor given back: workers lost on it"))
    _status_comment(STATUS + " | worker-lost", STATUS)


def downgrade() -> None:
    with op.batch_alter_table("queue_entry", schema=None) as batch_op:
        batch_op.drop_column("lost")
    _status_comment(STATUS, STATUS + " | worker-lost")


def _status_comment(comment: str, existing: str) -> None:
    # SQLite keeps no comments, and altering a column there rebuilds the table (which `case` references).
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("environment", "status", existing_type=sa.String(length=24), existing_nullable=False,
                        comment=comment, existing_comment=existing)
