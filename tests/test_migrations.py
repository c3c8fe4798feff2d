"""The schema comes only from migrations, and models and migrations agree, on both databases."""

from __future__ import annotations

from sqlalchemy import inspect

from store import migrate
from store.db import make_engine


def test_upgrade_head_matches_models(db_url: str) -> None:
    migrate.upgrade(db_url)  # idempotent on an already migrated database
    migrate.check(db_url)  # raises if models and migrated schema differ
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"run", "environment", "package", "case", "step", "alembic_version"} <= tables


def test_downgrade_to_base_and_back(db_url: str) -> None:
    migrate.downgrade(db_url, "base")
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    migrate.upgrade(db_url)
    migrate.check(db_url)
