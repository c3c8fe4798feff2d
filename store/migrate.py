"""Alembic driven from code: upgrade to head, check for drift; migrations/ is the only schema source."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

# Found by path, not imported: migrations/ imports the store's models, so an import here would be a cycle.
# Both folders sit side by side in the repository and in the wheel (see [tool.hatch.build] packages).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would eat a % in a password.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def head() -> str | None:
    """The newest migration: the schema this release reads and writes."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current(database_url: str) -> str | None:
    """The migration the database is at; None where it holds no schema (a new, empty database)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from store.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None
    finally:
        engine.dispose()


def ensure_head(database_url: str) -> None:
    """Upgrade unless the database is already at head (a cheap check: the CLI starts often)."""
    if current(database_url) != head():
        upgrade(database_url)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise if the models and the migrated schema differ."""
    command.check(alembic_config(database_url))
