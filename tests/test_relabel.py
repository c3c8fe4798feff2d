"""Renamed models: rows of the old code move to the new name, keyed by the old hash, and nothing else moves."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from knowngood import cli
from store import migrate, relabel
from store.db import make_engine, make_sessionmaker
from store.models import Case

ROOT = Path(__file__).parents[1]
SMOKE = Path(__file__).parent / "fixtures" / "smoke-snapshot.json.gz"  # measured before the rename
OLD = relabel.RELABELS[0]


def test_the_old_hash_is_the_hash_of_the_file_that_held_only_the_masked_encoder() -> None:
    # The commit before issue 10 renamed it (matrix/corpus/transformer.py at 0160222).
    old_file = subprocess.run(["git", "show", "0160222:matrix/corpus/transformer.py"], cwd=ROOT,
                              capture_output=True, check=True).stdout
    assert hashlib.sha256(old_file).hexdigest()[:16] in OLD.model_hashes
    assert b"src_key_padding_mask" in old_file
    now = (ROOT / "matrix" / "corpus" / "transformer.py").read_bytes()
    assert hashlib.sha256(now).hexdigest()[:16] not in OLD.model_hashes  # the new plain encoder is not relabelled


def test_model_name_moves_only_the_old_code() -> None:
    assert relabel.model_name("transformer", "9dbd9b71d96484b0") == "transformer_padding_mask"
    assert relabel.model_name("transformer", "anything-else") == "transformer"
    assert relabel.model_name("transformer_padding_mask", "9dbd9b71d96484b0") == "transformer_padding_mask"
    assert relabel.model_name("resnet", "9dbd9b71d96484b0") == "resnet"


def _models(session: Session) -> set[tuple[str, str]]:
    return {(c.model, c.model_hash) for c in session.scalars(select(Case))}


def test_relabel_rows_and_undo(session: Session, make_run: Callable, make_environment: Callable,
                               make_case: Callable) -> None:
    run, env = make_run(), make_environment({"torch": "2.9.1"})
    old = make_case(run, env, "transformer", "onnxruntime")
    new = make_case(run, env, "transformer", "onnx2tf")
    other = make_case(run, env, "resnet", "onnxruntime")
    old.model_hash, new.model_hash, other.model_hash = "9dbd9b71d96484b0", "ffffffffffffffff", "9dbd9b71d96484b0"
    session.commit()
    assert relabel.relabel_rows(session.connection()) == 1
    session.commit()
    session.expire_all()
    assert _models(session) == {("transformer_padding_mask", "9dbd9b71d96484b0"),
                                ("transformer", "ffffffffffffffff"), ("resnet", "9dbd9b71d96484b0")}
    assert relabel.relabel_rows(session.connection()) == 0  # idempotent
    assert relabel.relabel_rows(session.connection(), undo=True) == 1
    session.commit()
    session.expire_all()
    assert ("transformer", "9dbd9b71d96484b0") in _models(session)


def test_snapshot_import_and_the_migration_relabel(db_url: str) -> None:
    assert cli.main(["snapshot", "import", str(SMOKE), "--db", db_url]) == 0
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            models = _models(s)
        assert ("transformer_padding_mask", "9dbd9b71d96484b0") in models
        assert not any(m == "transformer" for m, _ in models)
        # Down through the data migration names them back; up again moves them once more. Read with plain SQL:
        # below head the models' later columns do not exist yet.
        migrate.downgrade(db_url, "0003")
        with engine.connect() as conn:
            below = {tuple(r) for r in conn.execute(text('SELECT model, model_hash FROM "case"'))}
        assert ("transformer", "9dbd9b71d96484b0") in below
        migrate.upgrade(db_url, "head")
        with make_sessionmaker(engine)() as s:
            assert _models(s) == models
    finally:
        engine.dispose()
