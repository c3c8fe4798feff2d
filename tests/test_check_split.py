"""The checker reads split chains too: a production lockfile (no torch) against runtime environments, a torch pin
against the export side that stored the graph, and a deployment target asked for by name."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from api import queries, verdicts
from store.pins import parse


def _check(session: Session, text: str, target: str | None = None) -> Any:
    return verdicts.check(session, parse(text, "requirements.txt"), ["resnet"], ["onnx2tf"], target=target)


def test_a_production_lockfile_is_known_good_through_a_split_chain(session: Session,
                                                                   targets_and_split: dict[str, Any]) -> None:
    runtime, e27 = targets_and_split["runtime"], targets_and_split["export27"]
    # the joint environment pins torch 2.5.1, so torch 2.7.0 can only be the export side of a split chain
    answer = _check(session, "torch==2.7.0\nonnx==1.17.0\ntensorflow==2.17.0\nonnx2tf==1.26.3\n", "saved_model")
    (result,) = answer.results
    assert (result.verdict, result.kind) == ("known-good", "split")
    assert (result.environment_id, result.research_environment_id) == (runtime.id, e27.id)
    assert result.environment == f"{e27.name} → {runtime.name}"


def test_a_target_is_judged_on_its_own(session: Session, targets_and_split: dict[str, Any]) -> None:
    prod = "onnx==1.17.0\ntensorflow==2.17.0\nonnx2tf==1.26.3\n"
    (bad,) = _check(session, prod, "tflite").results
    assert (bad.verdict, bad.signature) == ("known-bad", targets_and_split["signature"])
    (good,) = _check(session, prod, "saved_model").results
    assert good.verdict == "known-good"
    # the in-memory Keras model was measured in the joint environment only (torch 2.5.1)
    (keras,) = _check(session, "torch==2.7.0\n" + prod, "keras").results
    assert keras.verdict == "untested" and keras.nearest[0].environment_id == targets_and_split["joint"].id
    with pytest.raises(queries.QueryError, match="target: expected one of keras, saved_model, tflite, got 'onnx'"):
        _check(session, prod, "onnx")
