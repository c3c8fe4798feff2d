"""Outcomes (issue 14): per joint environment, model, route, exporter and target, the current results summed over
opsets, filled here from the cases already stored and kept in step by store/outcomes.py from then on.

The backfill is written out against this revision's schema rather than calling store/outcomes.py, so a later change
there cannot change what this revision did; tests/test_outcomes.py checks that the two agree.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# A case is current when no case of its identity (0006) was recorded later; only joint cases (no artifact) count,
# and a key whose current cases were all skipped gets no row.
_BACKFILL = """
INSERT INTO outcome (route, model, environment_id, exporter, target, passed, pass_case_id, fail_case_id)
SELECT c.route, c.model, c.environment_id, c.exporter, c.target,
       count(CASE WHEN c.status = 'pass' THEN 1 END),
       max(CASE WHEN c.status = 'pass' THEN c.id END),
       max(CASE WHEN c.status NOT IN ('pass', 'skip') THEN c.id END)
FROM "case" AS c
WHERE c.artifact_id IS NULL AND NOT EXISTS (
    SELECT 1 FROM "case" AS n
    WHERE n.environment_id = c.environment_id AND n.model = c.model AND n.route = c.route
      AND n.exporter = c.exporter AND n.opset = c.opset AND n.target = c.target AND n.artifact_id IS NULL
      AND (n.recorded_at > c.recorded_at OR (n.recorded_at = c.recorded_at AND n.id > c.id))
)
GROUP BY c.route, c.model, c.environment_id, c.exporter, c.target
HAVING max(CASE WHEN c.status <> 'skip' THEN c.id END) IS NOT NULL
"""


def upgrade() -> None:
    op.create_table(
        "outcome",
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("exporter", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("passed", sa.Integer(), nullable=False, comment="current passing cases (one per opset)"),
        sa.Column("pass_case_id", sa.Integer(), nullable=True,
                  comment="the newest (highest id) current passing case"),
        sa.Column("fail_case_id", sa.Integer(), nullable=True,
                  comment="the newest current case that failed (any status but pass and skip)"),
        sa.ForeignKeyConstraint(["environment_id"], ["environment.id"],
                                name=op.f("fk_outcome_environment_id_environment"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("environment_id", "model", "route", "exporter", "target", name=op.f("pk_outcome")),
    )
    op.create_index("ix_outcome_read", "outcome", ["route", "model", "environment_id", "exporter", "target", "passed",
                                                   "pass_case_id", "fail_case_id"], unique=False)
    op.execute(_BACKFILL)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE outcome")  # plans for the readers now, not after autovacuum's first look


def downgrade() -> None:
    op.drop_index("ix_outcome_read", table_name="outcome")
    op.drop_table("outcome")
