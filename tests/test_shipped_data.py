"""The measured data the quickstart imports: within budget, importable into both stores, the same answers."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from knowngood import cli
from store import snapshot

SHIPPED = Path(__file__).parents[1] / "data" / "snapshot.json.gz"


def test_shipped_snapshot_is_within_budget_and_current_format() -> None:
    assert SHIPPED.stat().st_size < 25 * 2**20
    head = json.loads(gzip.decompress(SHIPPED.read_bytes()))
    assert (head["format"], head["format_version"]) == ("knowngood-snapshot", snapshot.FORMAT_VERSION)
    specs = {run["spec_name"] for run in head["runs"]}
    assert {"smoke", "seed-chain", "history", "history-era"} <= specs


def test_shipped_snapshot_gives_the_same_answers_in_sqlite_and_postgresql(
    shipped_db: Callable, api_answers: Callable, capsys: pytest.CaptureFixture[str],
) -> None:
    lite, pg = shipped_db("sqlite"), shipped_db("postgresql")  # each imported with `knowngood snapshot import`
    expected = api_answers(lite)
    # real chains for the quickstart's first questions, with a lockfile that pins torch
    assert expected[0]["chains"] and expected[0]["total"] >= 10
    assert expected[1] == 200 and "torch==" in expected[2]
    assert api_answers(pg) == expected
    # importing again changes nothing
    capsys.readouterr()
    assert cli.main(["snapshot", "import", str(SHIPPED), "--db", lite]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["runs_added"], again["environments_added"], again["cases_added"]) == (0, 0, 0)
    assert api_answers(lite) == expected
