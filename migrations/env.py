"""Alembic environment: URL from Settings, batch mode on SQLite, advisory lock on PostgreSQL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from store import models  # noqa: F401  (registers the tables on Base.metadata)
from store.db import Base, make_engine
from store.settings import Settings

# Any constant works; it only has to be the same for every process migrating this database.
MIGRATION_LOCK_ID = 0x6B6E6F776E


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or Settings().database_url
    connectable = context.config.attributes.get("connection")
    if connectable is None:
        engine = make_engine(url)
        with engine.connect() as connection:
            _migrate(connection)
        engine.dispose()
    else:
        _migrate(connectable)


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    is_pg = connection.dialect.name == "postgresql"
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        # Batch mode rebuilds a table (copy, drop, rename); with foreign keys on, dropping the old `environment`
        # would cascade into every case of it. SQLite ignores this pragma inside a transaction, so it is set
        # before one begins: https://alembic.sqlalchemy.org/en/latest/batch.html#dealing-with-referencing-tables
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    if is_pg:
        # Shards and the API may all start at once: one migrates, the others wait, then find head.
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        # Batch mode recreates a table (copy, drop, rename); with foreign keys on, the drop cascades deletes into
        # its children (a new column on `case` would delete every step). SQLite's own procedure for a schema
        # change: foreign keys off outside the transaction, change, then on again
        # (https://www.sqlite.org/lang_altertable.html#otheralter).
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            # One transaction per revision: a data migration's writes fire their deferred change-counter
            # triggers (0003) at its own commit, so a later revision may alter or drop those tables.
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if is_sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
        if is_pg:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()


run_migrations()
