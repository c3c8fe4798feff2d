"""Initial schema: run, environment, package, case, step.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 18:19:07.257417
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "environment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False, comment="sha256 of the request"),
        sa.Column(
            "name",
            sa.String(length=300),
            nullable=False,
            comment="readable id, e.g. py3.11-torch2.0.1-onnx1.14.0",
        ),
        sa.Column("python", sa.String(length=16), nullable=False),
        sa.Column("python_full", sa.String(length=32), nullable=True),
        sa.Column("requirements", sa.JSON(), nullable=False),
        sa.Column("excludes", sa.JSON(), nullable=False),
        sa.Column("index_url", sa.String(length=500), nullable=False),
        sa.Column("cutoff", sa.String(length=40), nullable=True),
        sa.Column(
            "status",
            sa.String(length=24),
            nullable=False,
            comment="resolved | conflict | no-interpreter | install-failed | installed",
        ),
        sa.Column("lock_hash", sa.String(length=64), nullable=True, comment="sha256 of the resolved set"),
        sa.Column("lock_text", sa.Text(), nullable=True, comment="uv pip compile output, hashes included"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("signature", sa.String(length=300), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("memory", sa.JSON(), nullable=False, comment="import RSS figures in bytes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_environment")),
        sa.UniqueConstraint("hash", "lock_hash", name=op.f("uq_environment_hash_lock_hash")),
    )
    with op.batch_alter_table("environment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_environment_hash"), ["hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_environment_lock_hash"), ["lock_hash"], unique=False)

    op.create_table(
        "run",
        sa.Column("id", sa.String(length=36), nullable=False, comment="uuid4, stable across ingest"),
        sa.Column("spec_name", sa.String(length=200), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("runner_version", sa.String(length=64), nullable=False),
        sa.Column("corpus_version", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("cutoff", sa.String(length=40), nullable=True, comment="uv --exclude-newer for every resolution"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False, comment="running | finished"),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run")),
    )
    op.create_table(
        "case",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("exporter", sa.String(length=64), nullable=False),
        sa.Column("opset", sa.Integer(), nullable=False, comment="opset asked for"),
        sa.Column("opset_emitted", sa.Integer(), nullable=True, comment="opset read back from the exported file"),
        sa.Column("model_hash", sa.String(length=64), nullable=False),
        sa.Column("corpus_version", sa.String(length=64), nullable=False),
        sa.Column("runner_version", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.String(length=16),
            nullable=False,
            comment="pass, or the status of the first step that was not ok",
        ),
        sa.Column("signature", sa.String(length=300), nullable=True),
        sa.Column("max_abs_diff", sa.Float(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environment.id"],
            name=op.f("fk_case_environment_id_environment"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_case_run_id_run"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case")),
        sa.UniqueConstraint(
            "environment_id",
            "model",
            "route",
            "exporter",
            "opset",
            "model_hash",
            "runner_version",
            name=op.f("uq_case_identity"),
        ),
    )
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.create_index("ix_case_model_route", ["model", "route"], unique=False)
        batch_op.create_index(batch_op.f("ix_case_signature"), ["signature"], unique=False)

    op.create_table(
        "package",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False, comment="PEP 503 normalised"),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("hashes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environment.id"],
            name=op.f("fk_package_environment_id_environment"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_package")),
        sa.UniqueConstraint("environment_id", "name", name=op.f("uq_package_environment_id_name")),
    )
    with op.batch_alter_table("package", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_package_name"), ["name"], unique=False)

    op.create_table(
        "step",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("peak_rss", sa.BigInteger(), nullable=True, comment="bytes, high-water mark during the step"),
        sa.Column("error_type", sa.String(length=200), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("signature", sa.String(length=300), nullable=True),
        sa.Column("max_abs_diff", sa.Float(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["case.id"], name=op.f("fk_step_case_id_case"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step")),
        sa.UniqueConstraint("case_id", "ordinal", name=op.f("uq_step_case_id_ordinal")),
    )
    with op.batch_alter_table("step", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_step_case_id"), ["case_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("step", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_step_case_id"))

    op.drop_table("step")
    with op.batch_alter_table("package", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_package_name"))

    op.drop_table("package")
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_case_signature"))
        batch_op.drop_index("ix_case_model_route")

    op.drop_table("case")
    op.drop_table("run")
    with op.batch_alter_table("environment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_environment_lock_hash"))
        batch_op.drop_index(batch_op.f("ix_environment_hash"))

    op.drop_table("environment")
