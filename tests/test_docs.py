"""`knowngood docs`: docs/matrix.md and its heatmaps come from the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from knowngood.docs import render


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
    assert ">2/4<" in svg  # torch 2.9.1 × TF 2.14.1: the era pair's two passes of four cases
    assert "`IncompatibleDependency(ml_dtypes)`" in md
