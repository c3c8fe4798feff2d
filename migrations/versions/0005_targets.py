"""Deployment targets (issue 11): case.target in the case identity; environment overrides and options.

Existing TF-route cases measured the converter's in-memory model, so they become target `keras`; every other
case gets the empty target. Environments recorded before get no overrides and no options, which is what they had.

Revision ID: 0005_targets
Revises: 0004_relabel_transformer
Create Date: 2026-11-29 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.sqlite import restore_change_triggers

revision = "0005_targets"
# Chains after 0003/0004, written in parallel on other branches. On this branch alone (where 0002 is the head)
# set this to "0002" to run the migrations; that is how it was tested (tests/test_migrations*.py, test_targets.py).
down_revision = "0004_relabel_transformer"
branch_labels = None
depends_on = None

# The routes that had a convert step before targets existed: their one case was the in-memory model.
TF_ROUTES = ("onnx2tf", "onnx-tf", "nobuco")
OLD_IDENTITY = ["environment_id", "model", "route", "exporter", "opset", "model_hash", "runner_version"]
NEW_IDENTITY = ["environment_id", "model", "route", "exporter", "opset", "target", "model_hash", "runner_version"]
OLD_CHAIN = ["route", "model", "status", "environment_id", "exporter"]


def upgrade() -> None:
    # Not in batch mode: SQLite adds (and drops) columns in place, so `environment` keeps its partial unique index
    # and its change-counter triggers (0003), which a table rebuild would lose.
    op.add_column("environment", sa.Column(
        "overrides", sa.JSON(), nullable=False, server_default="[]",
        comment="uv --overrides the lock was resolved with (relaxed declared pins)",
    ))
    op.add_column("environment", sa.Column(
        "options", sa.JSON(), nullable=False, server_default="{}",
        comment="converter options that are a spec axis, e.g. onnx2tf-backend",
    ))
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "target", sa.String(length=32), nullable=False, server_default="",
            comment="what was deployed and checked: saved_model | tflite | keras on TF routes, empty elsewhere",
        ))
    case = sa.table("case", sa.column("route", sa.String()), sa.column("target", sa.String()))
    op.execute(case.update().where(case.c.route.in_(TF_ROUTES)).values(target="keras"))
    _fire_deferred_triggers()
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_constraint("uq_case_identity", type_="unique")
        batch_op.create_unique_constraint("uq_case_identity", NEW_IDENTITY)
        batch_op.drop_index("ix_case_chain")
        batch_op.create_index("ix_case_chain", [*OLD_CHAIN, "target"], unique=False)
    restore_change_triggers("case")


def downgrade() -> None:
    # Targets other than keras have no place in the old identity: they are dropped with the column.
    case = sa.table("case", sa.column("target", sa.String()))
    op.execute(case.delete().where(case.c.target.not_in(("", "keras"))))
    _fire_deferred_triggers()
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_index("ix_case_chain")
        batch_op.create_index("ix_case_chain", OLD_CHAIN, unique=False)
        batch_op.drop_constraint("uq_case_identity", type_="unique")
        batch_op.create_unique_constraint("uq_case_identity", OLD_IDENTITY)
        batch_op.drop_column("target")
    restore_change_triggers("case")
    op.drop_column("environment", "options")
    op.drop_column("environment", "overrides")


def _fire_deferred_triggers() -> None:
    # The rows just written queue PostgreSQL's deferred change-counter triggers (0003) until commit, and a table
    # with pending trigger events cannot be altered in the same transaction: fire them now.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SET CONSTRAINTS ALL IMMEDIATE")
