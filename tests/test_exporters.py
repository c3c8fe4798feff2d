"""Exporters and opsets in the plan: `default` passes no opset, "highest" is one case the worker resolves, and
an environment that will run the dynamo exporter gets the onnxscript of its torch's time."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix import expand, spec
from matrix.routes import EXPORTERS, OPSET_HIGHEST, OPSET_NONE

BASE = """
name = "t"
models = ["resnet", "dynamic_batch"]
routes = ["onnxruntime"]
exporters = {exporters}
opsets = {opsets}
{companions}
[axes]
python = ["3.11"]
torch = [{torch}]
onnx = ["*"]
onnxruntime = ["*"]
"""


def _plan(tmp_path: Path, exporters: str = '["torchscript"]', opsets: str = "[17]", torch: str = '"==2.9.1"',
          companions: str = "") -> expand.Plan:
    path = tmp_path / "t.toml"
    path.write_text(BASE.format(exporters=exporters, opsets=opsets, torch=torch, companions=companions))
    return expand.plan(spec.load(path))


def test_default_is_an_exporter() -> None:
    assert "default" in EXPORTERS


def test_default_exporter_has_one_case_per_model_and_route_without_an_opset(tmp_path: Path) -> None:
    plan = _plan(tmp_path, exporters='["torchscript", "default"]', opsets='[13, 17, "highest"]')
    (_, cases), = plan.items
    keys = sorted(c.key for c in cases)
    assert keys == sorted([
        f"{m}.onnxruntime.{e}" for m in ("resnet", "dynamic_batch")
        for e in ("torchscript.op13", "torchscript.op17", "torchscript.ophighest", "default.op0")])
    assert {c.opset for c in cases if c.exporter == "default"} == {OPSET_NONE}
    assert {c.opset for c in cases if c.key.endswith("ophighest")} == {OPSET_HIGHEST}


@pytest.mark.parametrize(("opsets", "message"), [
    ('["17"]', "opsets: Input should be a valid integer or 'highest', got '17'"),
    ('["max"]', "opsets: Input should be a valid integer or 'highest', got 'max'"),
    ("[31]", "expected an ONNX opset between 7 and 30"),
])
def test_bad_opsets_are_refused_with_one_message(tmp_path: Path, opsets: str, message: str) -> None:
    with pytest.raises(spec.SpecError) as info:
        _plan(tmp_path, opsets=opsets)
    assert message in str(info.value)


@pytest.mark.parametrize(("torch", "exporters", "companion"), [
    ('"==2.8.0"', '["dynamo"]', ("onnxscript<0.5.4",)),  # the newest onnxscript fails torch 2.8.0's exporter
    ('"==2.5.1"', '["torchscript", "dynamo"]', ("onnxscript<0.2",)),
    # dynamo_export: dated dev builds only; and torch < 2.3 was built against NumPy 1 (expand.numpy_companions)
    ('"==2.2.2"', '["dynamo"]', ("onnxscript<=0.1.0.dev20240424", "numpy<2")),
    ('"==2.0.1"', '["dynamo"]', ("numpy<2",)),  # no dynamo exporter to run
    ('"==2.8.0"', '["default"]', ()),  # default is still TorchScript
    ('"==2.9.1"', '["default"]', ("onnxscript<0.6",)),  # default is dynamo from 2.9
    ('"==2.15.0"', '["default"]', ("onnxscript",)),  # newer than the table: the newest
    ('"*"', '["default"]', ("onnxscript",)),  # unpinned torch resolves to the newest
    ('"==2.9.1"', '["torchscript"]', ()),
])
def test_onnxscript_comes_with_the_exporter_that_needs_it(tmp_path: Path, torch: str, exporters: str,
                                                          companion: tuple[str, ...]) -> None:
    (env, _), = _plan(tmp_path, exporters=exporters, torch=torch).items
    assert env.extras == companion


def test_a_spec_that_names_torch_companions_decides(tmp_path: Path) -> None:
    (env, _), = _plan(tmp_path, exporters='["dynamo"]', companions="[companions]\ntorch = []\n").items
    assert env.extras == ()
    (env, _), = _plan(tmp_path, exporters='["dynamo"]', companions='[companions]\ntorch = ["onnxscript==0.5.4"]\n'
                      ).items
    assert env.extras == ("onnxscript==0.5.4",)


def test_shipped_specs_without_dynamo_keep_their_environment_hashes() -> None:
    # The companion rule adds nothing where no exporter needs onnxscript, so recorded environments stay valid.
    plan = expand.plan(spec.load(spec.SPECS_DIR / "smoke.toml"))
    (env, _), = plan.items
    assert env.extras == ()
