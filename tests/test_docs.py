"""`knowngood docs`: docs/matrix.md and its heatmaps come from the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from api import coverage
from knowngood.docs import COVERAGE_FILL, render
from store.models import Artifact, Case, Environment, Step


def _record(make_run: Callable, make_environment: Callable, make_case: Callable) -> dict:
    run = make_run(spec_name="history")
    quoted = make_environment({"torch": "2.0.1", "onnx": "1.14.0", "tensorflow": "2.13.0", "onnx2tf": "1.15.9"})
    newest = make_environment({"torch": "2.9.1", "onnx": "1.19.0", "onnxruntime": "1.23.0",
                               "tensorflow-cpu": "2.14.1", "onnx2tf": "1.28.8"})
    era = make_environment({"torch": "2.9.1", "onnx": "1.15.0", "onnxruntime": "1.16.2",
                            "tensorflow-cpu": "2.14.1", "onnx2tf": "1.18.14"})
    other_tf = make_environment({"torch": "2.9.1", "onnx": "1.16.0", "onnxruntime": "1.18.0",
                                 "tensorflow-cpu": "2.16.2", "onnx2tf": "1.24.1"})
    make_case(run, quoted, "resnet", "onnxruntime", max_abs_diff=6e-8)
    make_case(run, quoted, "transformer", "onnxruntime", status="fail", max_abs_diff=None,
              signature="UnsupportedOperator(aten::unflatten)")
    for model in ("resnet", "batchnorm"):
        make_case(run, newest, model, "onnxruntime", status="fail", max_abs_diff=None,
                  signature="IncompatibleDependency(ml_dtypes)")
        make_case(run, era, model, "onnxruntime", max_abs_diff=1e-6)
    make_case(run, era, "resnet", "onnx2tf", max_abs_diff=2e-6)
    make_case(run, era, "batchnorm", "onnx2tf", status="fail", max_abs_diff=None, signature="ParityExceeded(input=0)")
    make_case(run, other_tf, "resnet", "onnxruntime", max_abs_diff=1e-6)
    return {"newest": newest, "era": era}


def test_docs_show_the_quoted_chain_converter_releases_and_heatmaps(
    session: Session, tmp_path: Path, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    _record(make_run, make_environment, make_case)
    md = render(session, tmp_path).read_text()
    assert "- **Environments:** 4 (4 installed)" in md
    # the practitioner's chain, with its real outcome per model
    assert re.search(r"\| resnet \| pass ×1 \[6\.0e-08\] \|", md)
    assert "UnsupportedOperator(aten::unflatten) ×1" in md
    # newest vs contemporary converter stack on the same torch and TensorFlow: only that pair, newest stack failing
    section = md.split("## Same torch and TensorFlow, another converter release")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 3.11")]
    assert rows == [
        "| 3.11 | 2.9.1 | 2.14.1 | 1.15.0 | 1.16.2 | onnx2tf 1.18.14 | 2/2 | 1/2 |",
        "| 3.11 | 2.9.1 | 2.14.1 | 1.19.0 | 1.23.0 | onnx2tf 1.28.8 | 0/2 |  |",
    ]
    # heatmaps: one SVG per route with cases, cells labelled passed/total
    assert (tmp_path / "heatmap-onnxruntime.svg").exists()
    svg = (tmp_path / "heatmap-onnxruntime.svg").read_text()
    assert "ort 1.16.2" in svg and ">2/2<" in svg  # torch × ONNX Runtime: the era environment passes both
    assert "ort 1.23.0" in svg and ">0/2<" in svg  # and the newest fails both
    assert "`IncompatibleDependency(ml_dtypes)`" in md


def _conflict(session: Session, versions: dict[str, str], kind: str = "joint") -> Environment:
    """An environment uv could not resolve: its request and uv's reason, no lock, no packages."""
    env = Environment(
        hash=uuid.uuid4().hex * 2, name="-".join(f"{n}{v}" for n, v in versions.items()), python="3.11",
        requirements=[f"{n}=={v}" for n, v in versions.items()], excludes=[], index_url="https://pypi.org/simple",
        cutoff="2026-11-01", status="conflict", kind=kind, memory={}, error="No solution found when resolving",
        signature="ResolutionConflict(tensorflow-cpu)",
    )
    session.add(env)
    session.commit()
    return env


def _steps(case: Case, *steps: tuple[str, str, str | None]) -> None:
    """Give a case these steps in order (the factory's one step becomes the first)."""
    first = case.steps[0]
    first.name, first.status, first.signature = steps[0]
    case.steps += [Step(ordinal=i, name=name, status=status, seconds=0.1, peak_rss=1, details={}, signature=sig)
                   for i, (name, status, sig) in enumerate(steps[1:], start=1)]


def _grid(session: Session, make_run: Callable, make_environment: Callable, make_case: Callable) -> None:
    """Joint environments, one split chain (three exports of one graph, two of them torch 2.6), a conflicting
    joint and a conflicting runtime environment, one resolved but never run, and a superseded pass."""
    run = make_run(spec_name="grid")
    tf_side = {"onnx": "1.17.0", "onnxruntime": "1.19.0"}
    j21 = make_environment({"torch": "2.1.2", "tensorflow-cpu": "2.15.1", "onnx2tf": "1.20.0", **tf_side})
    j22 = make_environment({"torch": "2.2.2", "tensorflow-cpu": "2.15.1", "onnx2tf": "1.20.0", **tf_side})
    j24 = make_environment({"torch": "2.4.1", "tensorflow-cpu": "2.16.2", "onnx2tf": "1.26.0", **tf_side})
    idle = make_environment({"torch": "2.3.1", "tensorflow-cpu": "2.17.0", "onnx2tf": "1.26.0", **tf_side})
    idle.status = "resolved"  # resolved, never run: no answer
    _conflict(session, {"torch": "2.5.1", "tensorflow-cpu": "2.13.1", "onnx2tf": "1.17.0"})
    _conflict(session, {"tensorflow-cpu": "2.20.0", "onnx2tf": "1.28.8"}, kind="runtime")
    e26 = make_environment({"torch": "2.6.0", "onnx": "1.18.0"})
    e26b = make_environment({"torch": "2.6.1", "onnx": "1.18.0"}, python="3.12")
    e27 = make_environment({"torch": "2.7.1", "onnx": "1.18.0"})
    rt = make_environment({"tensorflow-cpu": "2.19.0", "onnx2tf": "1.28.8", "onnx": "1.17.0", "onnxruntime": "1.22.0"})
    for env in (e26, e26b, e27):
        env.kind = "export"
    rt.kind, rt.options = "runtime", {"onnx2tf-backend": "flatbuffer_direct"}
    graph = Artifact(key="b" * 64, model="resnet", opset_emitted=17, ir_version=8)
    session.add(graph)
    session.commit()

    def case(env: Environment, model: str, route: str, status: str = "pass", target: str = "saved_model",
             **kw: object) -> Case:
        made = make_case(run, env, model, route, status=status, **kw)
        made.target = target if route != "onnxruntime" else ""
        return made

    for env in (j21, j24):
        case(env, "resnet", "onnx2tf")
    case(j22, "resnet", "onnx2tf")
    later = case(j22, "resnet", "onnx2tf", status="fail", signature="ParityExceeded(input=0)")
    later.model_hash = "m2"  # re-measured after a corpus change: the pass above no longer counts
    _steps(case(j21, "transformer", "onnx2tf", status="fail", signature="UnsupportedOperator(Erf)"),
           ("export", "ok", None), ("convert", "fail", "UnsupportedOperator(Erf)"))
    _steps(case(j24, "transformer", "onnx2tf", status="fail", signature="ParityExceeded(input=1)"),
           ("export", "ok", None), ("convert", "ok", None), ("tf_run", "fail", "ParityExceeded(input=1)"))
    for env in (e26, e26b, e27):
        case(env, "resnet", "export", target="").artifact_id = graph.id
    case(rt, "resnet", "onnx2tf").artifact_id = graph.id
    case(rt, "resnet", "onnxruntime").artifact_id = graph.id
    default = case(j24, "resnet", "onnxruntime", exporter="default", opset=0)
    default.steps[0].details = {"exporter_ran": "torchscript", "opset_emitted": 17, "ir_version": 8}
    dynamo = case(e27, "vit", "export", target="", exporter="default", opset=0)
    dynamo.steps[0].details = {"exporter_ran": "dynamo", "opset_emitted": 18, "ir_version": 10}
    session.commit()


def test_coverage_counts_joint_and_split_cells_and_knows_a_conflict_from_a_hole(
    session: Session, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    _grid(session, make_run, make_environment, make_case)
    cov = coverage.coverage(coverage.measurements(session), "onnx2tf")
    assert cov.rows == ["2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7"]
    assert cov.columns == ["2.13", "2.15", "2.16", "2.17", "2.19", "2.20"]
    cells = {(x, y): (c.passed, c.total, c.status) for (x, y), c in cov.cells.items() if c.total}
    assert cells == {
        ("2.1", "2.15"): (1, 2, "mixed"),
        ("2.2", "2.15"): (0, 1, "fail"),  # the superseded pass is not counted
        ("2.4", "2.16"): (1, 2, "mixed"),
        ("2.6", "2.19"): (1, 1, "pass"),  # one runtime case, two torch 2.6 exports of its graph: counted once
        ("2.7", "2.19"): (1, 1, "pass"),  # the same graph answers torch 2.7's cell too
    }
    assert cov.cell("2.5", "2.13").status == "unresolvable"  # the conflicting joint environment
    assert {x for x in cov.rows if cov.cell(x, "2.20").status == "unresolvable"} == set(cov.rows)  # runtime side
    assert cov.cell("2.3", "2.17").status == "missing"  # resolved, never run
    assert cov.answered == 5 + 1 + 7 and cov.share == 13 / 42
    ort = coverage.coverage(coverage.measurements(session), "onnxruntime")
    assert {k: (c.passed, c.total) for k, c in ort.cells.items()} == {
        ("2.4", "1.19"): (1, 1), ("2.6", "1.22"): (1, 1), ("2.7", "1.22"): (1, 1)}


def test_docs_print_coverage_pins_torch_spans_and_the_default_exporter(
    session: Session, tmp_path: Path, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    _grid(session, make_run, make_environment, make_case)
    md = render(session, tmp_path).read_text()
    grid = md.split("### onnx2tf: torch × tensorflow")[1].split("\n### ")[0]
    assert "**13 of 42 cells answered (31%)**: 5 measured (2 all pass, 2 mixed, 1 all fail), 8 unresolvable" in grid
    assert "| 2.5 | unres. | · | · | · | · | unres. |" in grid
    assert "| 2.6 | · | · | · | · | 1/1 | unres. |" in grid
    svg = (tmp_path / "coverage-onnx2tf.svg").read_text()
    for status in ("pass", "fail", "mixed", "unresolvable", "missing"):
        assert f'fill="{COVERAGE_FILL[status]}"' in svg
    # what to pin: the newest passing chain is the split one, through torch 2.7's export of the shared graph
    serving = md.split("### For TF Serving pin…")[1].split("\n### ")[0]
    assert ("| resnet | resnet | onnx2tf | split | 3.11 | 2.7.1 | 1.18.0 | 2.19.0 | onnx2tf 1.28.8 | 1.22.0 | "
            "flatbuffer_direct | torchscript | 1 cases; 5 chains over 6 environments |") in serving
    # nothing passes for transformer: the failure that got furthest (tf_run beats convert)
    assert ("**transformer** (transformer): nothing passes. Closest failure: step `tf_run`, "
            "`ParityExceeded(input=1)` on onnx2tf (saved_model), joint: torch 2.4.1") in serving
    assert "No case has been measured for this target yet." in md.split("### For TFLite pin…")[1].split("\n### ")[0]
    runtime = md.split("### For ONNX Runtime pin…")[1].split("\n## ")[0]
    # ONNX Runtime runs the ONNX file: the TF its runtime environment also held is no part of the pin
    assert "| resnet | resnet | onnxruntime | split | 3.11 | 2.7.1 | 1.18.0 | 1.22.0 | torchscript |" in runtime
    assert "tensorflow" not in runtime and "2.19.0" not in runtime
    # first and last passing torch minor, with the measured minor between that did not pass
    assert "| resnet | resnet | onnx2tf | saved_model | 2.1 | 2.7 | 2.1, 2.2, 2.4, 2.6, 2.7 | 2.2 |" in md
    assert "| transformer | transformer | onnx2tf | saved_model | none | none | 2.1, 2.4 |  |" in md
    # the default exporter: TorchScript in torch 2.4, dynamo in 2.7, with the opset and IR version each emitted
    assert "| 2.4 | none | torchscript ×1 | 17 | 8 |  |" in md
    assert "| 2.7 | none | dynamo ×1 | 18 | 10 |  |" in md


def test_coverage_rows_and_columns_are_the_stores_axes_not_the_routes(
    session: Session, tmp_path: Path, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    # litert-torch ran at torch 2.4 only and conflicts at 2.2: its one column must still list every torch minor
    # of the store (2.1 … 2.7), the minors it never reached as missing, not read "2 of 2".
    _grid(session, make_run, make_environment, make_case)
    run = make_run(spec_name="grid-litert")
    litert = make_environment({"torch": "2.4.1", "litert-torch": "0.8.0"})
    make_case(run, litert, "resnet", "litert-torch", target="tflite")
    _conflict(session, {"torch": "2.2.2", "litert-torch": "0.8.0"})
    m = coverage.measurements(session)
    minors = ["2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7"]
    cov = coverage.coverage(m, "litert-torch")
    assert (cov.rows, cov.columns) == (minors, [""])
    assert {x: cov.cell(x, "").status for x in minors} == {
        "2.1": "missing", "2.2": "unresolvable", "2.3": "missing", "2.4": "pass", "2.5": "missing",
        "2.6": "missing", "2.7": "missing"}
    assert cov.answered == 2 and cov.share == 2 / 7
    # every route's grid spans the same axes: onnxruntime never ran at torch 2.1, 2.3 or 2.5, nor at onnxruntime
    # minors only a TF route's lock holds
    ort = coverage.coverage(m, "onnxruntime")
    assert (ort.rows, ort.columns) == (minors, ["1.19", "1.22"])
    assert (coverage.coverage(m, "onnx2tf").rows, coverage.coverage(m, "onnx2tf").columns) == (
        minors, ["2.13", "2.15", "2.16", "2.17", "2.19", "2.20"])
    assert coverage.coverage(m, "nobuco").rows == []  # nothing asked for nobuco: no grid, not a grid of holes
    md = render(session, tmp_path).read_text()
    grid = md.split("### litert-torch: torch")[1].split("\n### ")[0].split("\n## ")[0]
    assert ("**2 of 7 cells answered (29%)**: 1 measured (1 all pass, 0 mixed, 0 all fail), 1 unresolvable, "
            "5 missing.") in grid
    assert "| 2.3 | · |" in grid and "| 2.2 | unres. |" in grid and "| 2.4 | 1/1 |" in grid
    assert "### nobuco" not in md
    svg = (tmp_path / "coverage-litert-torch.svg").read_text()
    assert "route litert-torch: 2 of 7 cells answered" in svg


def test_heatmaps_are_per_target_and_add_joint_and_split_cases_up(
    session: Session, tmp_path: Path, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    # One joint environment (torch 2.6.0, TF 2.19.0) passes its SavedModel and fails its .tflite; a split chain
    # at the same versions passes its SavedModel too. Keyed by (torch, TF) alone, one target's cell hid the other.
    run = make_run(spec_name="targets")
    joint = make_environment({"torch": "2.6.0", "onnx": "1.18.0", "onnxruntime": "1.22.0", "tensorflow-cpu": "2.19.0",
                              "onnx2tf": "1.28.8"})
    export = make_environment({"torch": "2.6.0", "onnx": "1.18.0"})
    runtime = make_environment({"tensorflow-cpu": "2.19.0", "onnx2tf": "1.28.8", "onnx": "1.18.0"})
    export.kind, runtime.kind = "export", "runtime"
    graph = Artifact(key="c" * 64, model="resnet", opset_emitted=17, ir_version=8)
    session.add(graph)
    session.commit()
    make_case(run, joint, "resnet", "onnx2tf", target="saved_model")
    make_case(run, joint, "resnet", "onnx2tf", target="tflite", status="fail", signature="ParityExceeded(input=0)")
    make_case(run, export, "resnet", "export", artifact_id=graph.id)
    make_case(run, runtime, "resnet", "onnx2tf", target="saved_model", artifact_id=graph.id)
    make_case(run, joint, "resnet", "onnxruntime")
    make_case(run, joint, "resnet", "nobuco", target="tflite", status="fail",
              signature="ModuleNotFound(keras.src.engine)")
    (tmp_path / "heatmap-onnx2tf.svg").write_text("<svg/>")  # what an earlier render called the onnx2tf heatmap
    md = render(session, tmp_path).read_text()
    saved_model = (tmp_path / "heatmap-onnx2tf-saved_model.svg").read_text()
    tflite = (tmp_path / "heatmap-onnx2tf-tflite.svg").read_text()
    assert ">2/2<" in saved_model and "route onnx2tf, target saved_model" in saved_model
    assert ">0/1<" in tflite and "route onnx2tf, target tflite" in tflite
    assert not (tmp_path / "heatmap-onnx2tf-keras.svg").exists()  # no keras case was run
    assert not (tmp_path / "heatmap-onnx2tf.svg").exists()
    assert ">1/1<" in (tmp_path / "heatmap-onnxruntime.svg").read_text()  # a route without targets keeps its name
    assert "(heatmap-onnx2tf-tflite.svg)" in md and "(heatmap-onnxruntime.svg)" in md
    assert ">0/1<" in (tmp_path / "heatmap-nobuco-tflite.svg").read_text()  # every TF route gets its heatmaps
    assert not (tmp_path / "heatmap-nobuco-saved_model.svg").exists() and "(heatmap-nobuco-tflite.svg)" in md


def test_the_default_exporter_table_is_per_torch_and_onnxscript(
    session: Session, tmp_path: Path, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    """torch 2.9's default (dynamo) export fails beside its era onnxscript and works beside a newer one: one row
    per (torch, onnxscript), so neither reads as "torch 2.9's default exporter"."""
    run = make_run(spec_name="grid-ort")
    era = make_environment({"torch": "2.9.1", "onnx": "1.19.0", "onnxscript": "0.5.7"})
    newer = make_environment({"torch": "2.9.1", "onnx": "1.19.0", "onnxscript": "0.7.2"})
    era.kind = newer.kind = "export"
    make_case(run, era, "resnet", "export", exporter="default", status="fail", signature="PassError(export)")
    ok = make_case(run, newer, "resnet", "export", exporter="default")
    ok.steps[0].details = {"exporter_ran": "dynamo", "opset_emitted": 18, "ir_version": 10}
    session.commit()
    md = render(session, tmp_path).read_text()
    section = md.split("## What torch.onnx.export(model, args, f) does")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 2.9")]
    assert rows == ["| 2.9 | 0.5.7 |  |  |  | `PassError(export)` ×1 |",
                    "| 2.9 | 0.7.2 | dynamo ×1 | 18 | 10 |  |"]


def test_a_split_export_that_failed_counts_as_measured_without_a_pass(
    session: Session, tmp_path: Path, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    """torch 2.0 cannot export the transformer (aten::unflatten): in split mode no runtime case follows, yet the
    minor was measured and did not pass, which the first/last table must say rather than leave it out."""
    run = make_run(spec_name="grid-ort")
    old, new = make_environment({"torch": "2.0.1", "onnx": "1.14.0"}), make_environment({"torch": "2.1.2",
                                                                                         "onnx": "1.14.0"})
    runtime = make_environment({"onnx": "1.14.0", "onnxruntime": "1.16.3"})
    old.kind, new.kind, runtime.kind = "export", "export", "runtime"
    graph = Artifact(key="d" * 64, model="transformer", opset_emitted=17, ir_version=8)
    session.add(graph)
    session.commit()
    make_case(run, old, "transformer", "export", status="fail", signature="UnsupportedOperator(aten::unflatten)")
    make_case(run, new, "transformer", "export", artifact_id=graph.id)
    make_case(run, runtime, "transformer", "onnxruntime", artifact_id=graph.id)
    md = render(session, tmp_path).read_text()
    assert "| transformer | transformer | onnxruntime |  | 2.1 | 2.1 | 2.0, 2.1 |  |" in md
