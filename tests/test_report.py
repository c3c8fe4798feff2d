"""The run-to-run report: two runs of one spec with known differences, and what the Markdown says about them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session

from knowngood import cli, report

T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def nightly(session: Session, make_run: Callable, make_environment: Callable, make_case: Callable) -> dict:
    """Night 1 and night 2 of spec `nightly`, plus a run of another spec in between that must not leak in."""
    night1 = make_run(spec_name="nightly", started_at=T0, status="finished")
    a1 = make_environment({"torch": "2.4.1", "onnx": "1.16.2", "onnxruntime": "1.19.2"})
    b = make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.0"})
    make_case(night1, a1, "resnet", "onnxruntime")
    make_case(night1, a1, "grid_sample", "onnxruntime", status="fail",
              signature="UnsupportedOperator(aten::grid_sampler_2d)")
    make_case(night1, b, "resnet", "onnxruntime")
    make_case(night1, b, "transformer", "onnxruntime", status="fail", signature="ParityExceeded(input=0)")

    other = make_run(spec_name="history", started_at=T0 + dt.timedelta(hours=1), status="finished")
    h = make_environment({"torch": "2.0.1", "onnx": "1.14.0", "onnxruntime": "1.15.1"})
    make_case(other, h, "resnet", "onnxruntime", status="crash", signature="WorkerCrashed(SIGSEGV)")

    night2 = make_run(spec_name="nightly", started_at=T0 + dt.timedelta(days=1), status="finished")
    # The same request as a1 resolved to a newer onnx: resnet regresses, grid_sample starts to work.
    a2 = make_environment({"torch": "2.4.1", "onnx": "1.17.0", "onnxruntime": "1.19.2"})
    a2.hash = a1.hash
    session.commit()
    make_case(night2, a2, "resnet", "onnxruntime", status="fail", signature="ParityExceeded(input=1)")
    make_case(night2, a2, "grid_sample", "onnxruntime")
    # b was skipped (already recorded): its cells carry over unchanged.
    # A new cell with lower versions fails the same way: it is the first failing combination for resnet.
    c = make_environment({"torch": "2.3.1", "onnx": "1.17.0", "onnxruntime": "1.18.1"})
    make_case(night2, c, "resnet", "onnxruntime", status="fail", signature="ParityExceeded(input=1)")
    return {"night1": night1, "night2": night2, "a2": a2, "b": b, "c": c, "other": other}


def test_report_lists_what_changed(session: Session, nightly: dict) -> None:
    rep = report.compare(session)  # the newest run, against the previous run of its spec
    assert rep.run.id == nightly["night2"].id and rep.against.id == nightly["night1"].id
    failures = {(c.cell[1], c.now.environment): c for c in rep.new_failures}
    assert set(failures) == {("resnet", nightly["a2"].name), ("resnet", nightly["c"].name)}
    regression = failures[("resnet", nightly["a2"].name)]
    assert regression.before.status == "pass"
    assert regression.changed == "onnx 1.16.2→1.17.0"
    assert regression.first_failing == "torch 2.3.1, onnx 1.17.0, onnxruntime 1.18.1"
    assert failures[("resnet", nightly["c"].name)].changed == "new cell"
    assert [(c.cell[1], c.before.signature) for c in rep.new_passes] == [
        ("grid_sample", "UnsupportedOperator(aten::grid_sampler_2d)")]
    assert [(s.signature, s.cells) for s in rep.new_signatures] == [("ParityExceeded(input=1)", 2)]

    text = report.render(rep)
    assert text.startswith("# knowngood report: nightly\n")
    assert f"Run `{nightly['night2'].id[:8]}` (2026-11-02 02:00 UTC" in text
    assert f"against `{nightly['night1'].id[:8]}` (2026-11-01 02:00 UTC, the previous run of this spec)" in text
    assert "**2 new failures · 1 new pass · 1 new signature** — now 2 pass, 3 not (before 2 pass, 2 not)." in text
    assert (f"| resnet · onnxruntime · torchscript · op17 | {nightly['a2'].name} | fail `ParityExceeded(input=1)` "
            "| pass | onnx 1.16.2→1.17.0 | torch 2.3.1, onnx 1.17.0, onnxruntime 1.18.1 |") in text
    assert "| grid_sample · onnxruntime · torchscript · op17 |" in text.split("## New passes")[1]
    assert "| `ParityExceeded(input=1)` | 2 |" in text
    # The unchanged failure of b and the other spec's crash are not news.
    assert "ParityExceeded(input=0)" not in text and "WorkerCrashed" not in text


def test_report_against_an_explicit_run_and_the_first_run(session: Session, nightly: dict) -> None:
    explicit = report.compare(session, run=nightly["night2"].id[:8], against=nightly["night1"].id)
    assert report.render(explicit) == report.render(report.compare(session))
    first = report.render(report.compare(session, run=nightly["night1"].id))
    assert "No earlier run of spec `nightly`: every failure is new." in first
    assert "**2 new failures · 0 new passes · 2 new signatures**" in first


def test_report_cli(db_url: str, nightly: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--db", db_url]) == 0
    assert "## New failures" in capsys.readouterr().out
    assert cli.main(["report", "--run", "nonesuch", "--db", db_url]) == 2
    assert "run 'nonesuch': no such run" in capsys.readouterr().err


def test_report_since_takes_every_shard_of_one_run(session: Session, nightly: dict, make_run: Callable,
                                                    make_environment: Callable, make_case: Callable,
                                                    capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    # Night 2 had a second shard, started a little later, in which b (re-resolved) now passes transformer.
    shard2 = make_run(spec_name="nightly", started_at=T0 + dt.timedelta(days=1, minutes=5), status="running")
    b2 = make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.1"})
    b2.hash = nightly["b"].hash
    session.commit()
    make_case(shard2, b2, "transformer", "onnxruntime")
    since = T0 + dt.timedelta(hours=23)
    rep = report.compare(session, since=since)
    assert [r.id for r in rep.shards] == [nightly["night2"].id, shard2.id]
    assert rep.against.id == nightly["night1"].id
    assert {(c.cell[1], c.now.environment) for c in rep.new_failures} == {
        ("resnet", nightly["a2"].name), ("resnet", nightly["c"].name)}
    assert sorted(c.cell[1] for c in rep.new_passes) == ["grid_sample", "transformer"]
    assert [c.changed for c in rep.new_passes if c.cell[1] == "transformer"] == ["onnxruntime 1.20.0→1.20.1"]
    text = report.render(rep)
    assert f"2 shard runs since 2026-11-02 02:00 UTC (`{nightly['night2'].id[:8]}`, `{shard2.id[:8]}`; " \
           "1 not finished)" in text
    # Without --since the second shard would be compared with the first one of the same night.
    assert report.compare(session).against.id == nightly["night2"].id
    assert cli.main(["report", "--since", "2026-11-02T01:00:00Z", "--db", db_url]) == 0
    assert "**2 new failures · 2 new passes · 1 new signature**" in capsys.readouterr().out
