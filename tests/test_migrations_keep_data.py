"""Migrations keep data: a database with real results goes down and up through every revision, same answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from knowngood import cli
from store import migrate
from store.db import make_engine

SMOKE = Path(__file__).parent / "fixtures" / "smoke-snapshot.json.gz"  # a real smoke run, exported


def _current(url: str) -> str | None:
    engine = make_engine(url)
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar() if "alembic_version" in tables \
            else None
    engine.dispose()
    return rev


def test_down_and_up_through_every_revision_keeps_the_answers(db_url: str, tmp_path: Path, db_dump: Callable,
                                                              api_answers: Callable) -> None:
    assert cli.main(["snapshot", "import", str(SMOKE), "--db", db_url]) == 0
    dump, answers = db_dump(db_url), api_answers(db_url)
    assert answers[0]["chains"], "the real smoke run has known-good chains to compare"
    script = ScriptDirectory.from_config(migrate.alembic_config(db_url))
    revisions = [r.revision for r in script.walk_revisions()]  # head first
    first = revisions[-1]

    # Every revision after the first is undone and redone with the data in place: the data must survive.
    for rev in revisions[:-1]:
        migrate.downgrade(db_url, "-1")
        assert _current(db_url) == script.get_revision(rev).down_revision
    assert _current(db_url) == first
    for rev in reversed(revisions[:-1]):
        migrate.upgrade(db_url, "+1")
        assert _current(db_url) == rev
    assert db_dump(db_url) == dump
    assert api_answers(db_url) == answers

    # The first revision creates the tables, so below it there is nothing to keep data in: dump, go to base,
    # come back one revision at a time, restore, and the answers are the same.
    saved = tmp_path / "before-base.json.gz"
    assert cli.main(["snapshot", "export", str(saved), "--db", db_url]) == 0
    migrate.downgrade(db_url, "base")
    assert _current(db_url) is None
    for rev in reversed(revisions):
        migrate.upgrade(db_url, "+1")
        assert _current(db_url) == rev
    migrate.check(db_url)
    assert cli.main(["snapshot", "import", str(saved), "--db", db_url]) == 0
    assert db_dump(db_url) == dump
    assert api_answers(db_url) == answers
