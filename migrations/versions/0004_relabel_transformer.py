"""Data: rows of the masked encoder measured as `transformer` move to `transformer_padding_mask` (issue 10).

Keyed by the old family-file hash (store/relabel.py), so rows of the new plain `transformer` are untouched.
Downgrade names them back.

Revision ID: 0004_relabel_transformer
Revises: 0003
Create Date: 2026-11-29 08:30:00.000000
"""

from __future__ import annotations

from alembic import op

from store.relabel import relabel_rows

revision = "0004_relabel_transformer"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    relabel_rows(op.get_bind())


def downgrade() -> None:
    relabel_rows(op.get_bind(), undo=True)
