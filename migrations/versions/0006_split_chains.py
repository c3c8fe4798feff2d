"""Split chains: artifacts stored by content, environment kinds, and the artifact a case made or started from.

Existing data keeps its meaning: every environment measured so far held torch and its runtime side together,
so it is `joint`, and no case so far came from or produced a stored artifact.

Revision ID: 0006
Revises: 0005_targets
Create Date: 2026-11-29 08:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.sqlite import restore_change_triggers

revision = "0006"
down_revision = "0005_targets"
branch_labels = None
depends_on = None

_IDENTITY = ["environment_id", "model", "route", "exporter", "opset", "target", "model_hash", "runner_version"]


def upgrade() -> None:
    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False,
                  comment="sha256 of the graph without producer, doc strings and internal names"),
        sa.Column("model", sa.String(length=200), nullable=False,
                  comment="the model of the first export that produced it"),
        sa.Column("opset_emitted", sa.Integer(), nullable=True),
        sa.Column("ir_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact")),
        sa.UniqueConstraint("key", name=op.f("uq_artifact_key")),
    )
    # Not in batch mode: SQLite adds (and drops) a column in place, so `environment` keeps its partial unique
    # index and its change-counter triggers (0003), which a table rebuild would lose.
    op.add_column("environment", sa.Column(
        "kind", sa.String(length=16), server_default="joint", nullable=False,
        comment="joint (torch and the runtime side in one) | export (torch: makes artifacts) | runtime (no torch)",
    ))
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "artifact_id", sa.Integer(), nullable=True,
            comment="split chains: the artifact an export case stored, or the one a runtime case started from",
        ))
        batch_op.create_index(batch_op.f("ix_case_artifact_id"), ["artifact_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_case_artifact_id_artifact"), "artifact", ["artifact_id"], ["id"], ondelete="RESTRICT"
        )
        batch_op.drop_constraint("uq_case_identity", type_="unique")
        batch_op.create_unique_constraint("uq_case_identity", [*_IDENTITY, "artifact_id"])
    restore_change_triggers("case")


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_constraint("uq_case_identity", type_="unique")
        batch_op.create_unique_constraint("uq_case_identity", _IDENTITY)
        batch_op.drop_constraint(batch_op.f("fk_case_artifact_id_artifact"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_case_artifact_id"))
        batch_op.drop_column("artifact_id")
    restore_change_triggers("case")
    op.drop_column("environment", "kind")
    op.drop_table("artifact")
