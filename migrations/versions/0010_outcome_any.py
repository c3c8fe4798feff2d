"""Read speed (issue 14): outcome rows folded over exporters and targets (`outcome_any`), filled here from the outcome
table and kept in step by store/outcomes.py from then on; and the index a known-bad verdict's signature span reads.

/chains and POST /check without an exporter or target read `outcome_any`: one row per environment, model and route
where `outcome` holds one per exporter and target. The signature span (where a failure was seen on a route) read
every matching case row through ix_case_signature, a heap block per row; (signature, route, environment_id,
recorded_at) answers it from the index alone, and serves every lookup by signature that the old index served.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Written against this revision's schema rather than calling store/outcomes.py (see 0009); tests/test_outcomes.py
# checks that the two agree.
_BACKFILL = """
INSERT INTO outcome_any (route, model, environment_id, pass_case_id, fail_case_id)
SELECT route, model, environment_id, max(pass_case_id), max(fail_case_id)
FROM outcome
GROUP BY route, model, environment_id
"""


def upgrade() -> None:
    op.create_table(
        "outcome_any",
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("pass_case_id", sa.Integer(), nullable=True,
                  comment="the newest current passing case of any exporter and target"),
        sa.Column("fail_case_id", sa.Integer(), nullable=True,
                  comment="the newest current failed case of any exporter and target"),
        sa.ForeignKeyConstraint(["environment_id"], ["environment.id"],
                                name=op.f("fk_outcome_any_environment_id_environment"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("environment_id", "model", "route", name=op.f("pk_outcome_any")),
    )
    op.create_index("ix_outcome_any_read", "outcome_any",
                    ["route", "model", "environment_id", "pass_case_id", "fail_case_id"], unique=False)
    op.execute(_BACKFILL)
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.create_index("ix_case_signature_route", ["signature", "route", "environment_id", "recorded_at"],
                              unique=False)
        batch_op.drop_index("ix_case_signature")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE outcome_any")  # plans for the readers now, not after autovacuum's first look


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.create_index("ix_case_signature", ["signature"], unique=False)
        batch_op.drop_index("ix_case_signature_route")
    op.drop_index("ix_outcome_any_read", table_name="outcome_any")
    op.drop_table("outcome_any")
