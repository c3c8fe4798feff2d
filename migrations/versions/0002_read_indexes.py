"""Read-side indexes for the API: chain completeness, matrix counts, runs' case counts, key versions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 19:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.create_index("ix_case_chain", ["route", "model", "status", "environment_id", "exporter"], unique=False)
        batch_op.create_index("ix_case_run_id_status", ["run_id", "status"], unique=False)

    with op.batch_alter_table("package", schema=None) as batch_op:
        batch_op.create_index(
            "ix_package_name_environment_id_version", ["name", "environment_id", "version"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("package", schema=None) as batch_op:
        batch_op.drop_index("ix_package_name_environment_id_version")

    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_index("ix_case_run_id_status")
        batch_op.drop_index("ix_case_chain")
