"""Data: rows of the masked encoder measured as `transformer` move to `transformer_padding_mask` (issue 10).

Keyed by the old family-file hash (store/relabel.py), so rows of the new plain `transformer` are untouched.
Downgrade names them back.

Revision ID: 0004_relabel_transformer
Revises: 0002 (0003_hardening once that lands: see down_revision)
Create Date: 2026-11-29 08:30:00.000000
"""

from __future__ import annotations

from alembic import op

from store.relabel import relabel_rows

revision = "0004_relabel_transformer"
# To follow 0003_hardening (another engineer's revision, not on this branch yet). Until it lands, this points
# at the current head so the chain is linear; at merge, set it to "0003_hardening".
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    relabel_rows(op.get_bind())


def downgrade() -> None:
    relabel_rows(op.get_bind(), undo=True)
