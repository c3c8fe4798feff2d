"""Hardening: one row per unresolved environment, and a change counter the response cache polls.

1. `UNIQUE (hash, lock_hash)` treats NULLs as distinct on both databases, so concurrent ingests could store one
   unresolved environment (lock_hash NULL) twice. Existing duplicates are merged into the oldest row (its cases
   kept; a duplicate's case whose identity the oldest row already has is dropped), then a partial unique index
   on (hash) WHERE lock_hash IS NULL keeps it so.
2. `data_change` holds one counter that triggers on run, environment, package, case and step move on every
   insert, update or delete, whoever makes it (`db resignature` updates rows in place; new ids did not show it).
   On PostgreSQL the trigger is a deferred constraint trigger that bumps once per transaction, at commit: the
   counter row is locked only while committing, so concurrent writers cannot deadlock on it. SQLite serialises
   writers anyway and has no statement triggers, so it bumps per row.

Triggers are not part of the models, so `db check` does not see them. A later batch migration that recreates
one of these tables on SQLite drops its triggers: recreate them there (see `_TABLES`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLES = ("run", "environment", "package", "case", "step")
_PG_FUNCTION = """
CREATE FUNCTION knowngood_data_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per transaction: the setting is local to it, so the next transaction bumps again.
    IF current_setting('knowngood.data_changed', true) IS DISTINCT FROM 'on' THEN
        PERFORM set_config('knowngood.data_changed', 'on', true);
        UPDATE data_change SET counter = counter + 1 WHERE id = 1;
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    _merge_duplicate_unresolved_environments()
    op.create_index("uq_environment_unresolved_hash", "environment", ["hash"], unique=True,
                    sqlite_where=sa.text("lock_hash IS NULL"), postgresql_where=sa.text("lock_hash IS NULL"))
    op.create_table(
        "data_change",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False,
                  comment="incremented once per writing transaction (PostgreSQL) or per changed row (SQLite)"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_change")),
    )
    op.execute("INSERT INTO data_change (id, counter) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for table in _TABLES:
            op.execute(f"CREATE CONSTRAINT TRIGGER tr_{table}_data_change "
                       f'AFTER INSERT OR UPDATE OR DELETE ON "{table}" DEFERRABLE INITIALLY DEFERRED '
                       "FOR EACH ROW EXECUTE FUNCTION knowngood_data_change()")
    else:
        for table in _TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(f'CREATE TRIGGER tr_{table}_{event}_data_change AFTER {event.upper()} ON "{table}" '
                           "BEGIN UPDATE data_change SET counter = counter + 1 WHERE id = 1; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # A later revision's downgrade in the same transaction may have written rows (e.g. 0004's relabel): fire
        # their deferred trigger events now, or PostgreSQL refuses to drop those tables later in this transaction.
        op.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for table in _TABLES:
            op.execute(f'DROP TRIGGER tr_{table}_data_change ON "{table}"')
        op.execute("DROP FUNCTION knowngood_data_change()")
    else:
        for table in _TABLES:
            for event in ("insert", "update", "delete"):
                # IF EXISTS: a later revision that rebuilt a table on SQLite may have re-created or lost them.
                op.execute(f"DROP TRIGGER IF EXISTS tr_{table}_{event}_data_change")
    op.drop_table("data_change")
    op.drop_index("uq_environment_unresolved_hash", table_name="environment")  # merged duplicates stay merged


def _merge_duplicate_unresolved_environments() -> None:
    conn = op.get_bind()
    env, case, package = (sa.table("environment", sa.column("id"), sa.column("hash"), sa.column("lock_hash")),
                          sa.table("case", sa.column("id"), sa.column("environment_id"), sa.column("model"),
                                   sa.column("route"), sa.column("exporter"), sa.column("opset"),
                                   sa.column("model_hash"), sa.column("runner_version")),
                          sa.table("package", sa.column("environment_id")))
    keep: dict[str, int] = {}
    for env_id, env_hash in conn.execute(sa.select(env.c.id, env.c.hash).where(env.c.lock_hash.is_(None))
                                         .order_by(env.c.id)):
        kept = keep.setdefault(env_hash, env_id)
        if kept == env_id:
            continue
        identity = ("model", "route", "exporter", "opset", "model_hash", "runner_version")
        kept_case = sa.select(sa.literal(1)).select_from(case.alias("k")).where(
            sa.literal_column("k.environment_id") == kept,
            *[sa.literal_column(f"k.{c}") == case.c[c] for c in identity],
        )
        conn.execute(sa.delete(case).where(case.c.environment_id == env_id, sa.exists(kept_case)))
        conn.execute(sa.update(case).where(case.c.environment_id == env_id).values(environment_id=kept))
        conn.execute(sa.delete(package).where(package.c.environment_id == env_id))
        conn.execute(sa.delete(env).where(env.c.id == env_id))
