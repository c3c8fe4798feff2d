"""Split plans: each combination cut into an export and a runtime side, each side built once; the cache prune."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from matrix import expand, spec
from runner import pythons, split, uv
from store.db import make_engine, make_sessionmaker
from store.settings import Settings

SPEC = """
name = "split-unit"
models = ["resnet", "control_flow"]
routes = ["onnxruntime", "onnx2tf", "nobuco"]
exporters = ["torchscript", "dynamo"]
opsets = [17]
mode = "split"
excludes = ["tensorflow"]

[axes]
python = ["3.11"]
torch = ["==2.4.1", "==2.5.1", "==2.6.0"]
onnx = ["==1.17.0"]
tensorflow-cpu = ["==2.17.1", "==2.18.1"]
converter = ["onnx2tf==1.26.9", "nobuco==0.17.0"]

[companions]
torch = ["onnxscript"]
onnx2tf = ["onnx-graphsurgeon", "tf-keras"]
"""


@pytest.fixture
def split_plan(tmp_path: Path) -> expand.SplitPlan:
    path = tmp_path / "split.toml"
    path.write_text(SPEC)
    return expand.split(expand.plan(spec.load(path)))


def test_each_side_is_built_once_and_holds_only_its_packages(split_plan: expand.SplitPlan) -> None:
    joint = split_plan.plan.items
    assert len(joint) == 12  # 3 torch × 2 TF × 2 converters
    # 3 export environments (one per torch) and 2 runtime environments (one per TF with onnx2tf): nobuco
    # converts from torch directly, so it has no runtime side and stays a joint-only route
    assert len(split_plan.exports) == 3 and len(split_plan.runtimes) == 2 and split_plan.installs == 5
    for env, cases in split_plan.exports:
        names = {expand.split_requirement(r)[0] for r in env.all_requirements}
        assert env.kind == "export" and env.id.endswith("-export")
        assert names == {"torch", "onnx", "onnxscript"}
        assert {(c.model, c.route, c.exporter) for c in cases} == {
            (m, "export", e) for m in ("resnet", "control_flow") for e in ("torchscript", "dynamo")}
    for env, routes in split_plan.runtimes:
        names = {expand.split_requirement(r)[0] for r in env.all_requirements}
        assert env.kind == "runtime" and "torch" not in names and "onnxscript" not in names
        assert {"onnx", "tensorflow-cpu", "onnx2tf", "tf-keras"} <= names
        assert set(routes) == {"onnxruntime", "onnx2tf"}
        # tf-keras follows the runtime side's TensorFlow minor, as in joint environments
        tf = next(r for r in env.requirements if r.startswith("tensorflow-cpu"))
        assert f"tf-keras>={tf.split('==')[1].rsplit('.', 1)[0]}" in " ".join(env.extras)
    assert len(split_plan.pairs) == 6  # every torch with every onnx2tf runtime


def test_kinds_never_share_an_identity(split_plan: expand.SplitPlan) -> None:
    hashes = [e.hash for e, _ in split_plan.exports] + [e.hash for e, _ in split_plan.runtimes]
    joint = {e.hash for e, _ in split_plan.plan.items}
    assert len(set(hashes)) == len(hashes) and not joint & set(hashes)


def test_export_python_feeds_runtimes_of_every_python_from_one_export_per_torch(tmp_path: Path) -> None:
    path = tmp_path / "cross.toml"
    text = SPEC.replace('mode = "split"', 'mode = "split"\nexport-python = "3.11"').replace(
        'python = ["3.11"]', 'python = ["3.12", "3.13"]').replace(
        'converter = ["onnx2tf==1.26.9", "nobuco==0.17.0"]',
        'converter = ["onnx2tf==1.26.9"]\nonnx2tf-backend = ["flatbuffer_direct", "tf_converter"]')
    path.write_text(text + '\n[overrides]\nonnx2tf = ["numpy<2.2"]\n')
    cross = expand.split(expand.plan(spec.load(path)))
    # one export environment per torch on 3.11, with neither converter options nor a converter's overrides
    assert sorted(e.requirements[0] for e, _ in cross.exports) == ["torch==2.4.1", "torch==2.5.1", "torch==2.6.0"]
    assert {(e.python, e.options, e.overrides) for e, _ in cross.exports} == {("3.11", (), ())}
    # runtime sides on both Pythons, each backend, with and without the override: 2 × 2 TF × 2 × 2
    assert {e.python for e, _ in cross.runtimes} == {"3.12", "3.13"} and len(cross.runtimes) == 16
    assert len(cross.pairs) == 3 * 16
    # the export side is the one a 3.11 split spec builds: its artifacts are shared, nothing is exported twice
    same = tmp_path / "same.toml"
    same.write_text(SPEC)
    assert {e.hash for e, _ in cross.exports} == {e.hash for e, _ in expand.split(expand.plan(spec.load(same))).exports}


def test_export_python_is_refused_on_joint_specs(tmp_path: Path) -> None:
    path = tmp_path / "joint.toml"
    path.write_text(SPEC.replace('mode = "split"', 'mode = "joint"\nexport-python = "3.11"'))
    with pytest.raises(spec.SpecError, match="export-python: applies to split chains only"):
        spec.load(path)


def test_runtime_table_changes_the_runtime_side_only(tmp_path: Path) -> None:
    path = tmp_path / "runtime.toml"
    path.write_text(SPEC.replace('converter = ["onnx2tf==1.26.9", "nobuco==0.17.0"]', 'converter = ["onnx2tf==1.26.9"]')
                    + '\n[runtime]\nexclude-newer = "2026-11-28"\naxes = { onnx = ["==1.14.*", "==1.16.*"], '
                    'onnxruntime = ["==1.18.*"] }\n')
    cut = expand.split(expand.plan(spec.load(path)))
    same = tmp_path / "same.toml"
    same.write_text(SPEC)
    plain = expand.split(expand.plan(spec.load(same)))
    # the export side is exactly the spec's without [runtime]: its stored artifacts are reused as they are
    assert {e.hash for e, _ in cut.exports} == {e.hash for e, _ in plain.exports}
    assert {r for e, _ in cut.exports for r in e.requirements if r.startswith("onnx")} == {"onnx==1.17.0"}
    # one runtime environment per TF × runtime onnx, each with the runtime cutoff and its own onnx and runtime
    assert len(cut.runtimes) == 4 and len(cut.pairs) == 3 * 4
    assert {e.cutoff for e, _ in cut.runtimes} == {"2026-11-28"}
    assert {tuple(sorted(r for r in e.requirements if r.startswith("onnx"))) for e, _ in cut.runtimes} == {
        ("onnx2tf==1.26.9", "onnx==1.14.*", "onnxruntime==1.18.*"),
        ("onnx2tf==1.26.9", "onnx==1.16.*", "onnxruntime==1.18.*")}
    # companions follow the runtime side's packages: ONNX Runtime 1.18 predates NumPy 2
    assert all("numpy<2" in e.extras for e, _ in cut.runtimes)
    assert not any("numpy<2" in e.extras for e, _ in cut.exports)


@pytest.mark.parametrize(("table", "message"), [
    ('[runtime]\naxes = { torch = ["==2.5.1"] }', "expected a package of the runtime side"),
    ('[runtime]\naxes = { onnx = ["1.14"] }', "axis 'onnx': expected a PEP 440 version specifier"),
    ('[runtime]\nexclude-newer = "2026-13-01"', "no such date"),
    ('[runtime]\nsomething = 1', "something"),
])
def test_runtime_table_errors_name_the_field(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SPEC + "\n" + table + "\n")
    with pytest.raises(spec.SpecError, match=message):
        spec.load(path)


def test_runtime_table_is_refused_on_joint_specs(tmp_path: Path) -> None:
    path = tmp_path / "joint.toml"
    path.write_text(SPEC.replace('mode = "split"', 'mode = "joint"') + '\n[runtime]\nexclude-newer = "2026-11-28"\n')
    with pytest.raises(spec.SpecError, match="runtime: applies to split chains only"):
        spec.load(path)


def test_export_groups_run_newest_torch_first_one_release_at_a_time(split_plan: expand.SplitPlan) -> None:
    ordered = sorted(split_plan.exports, key=lambda item: split._torch_order(item[0]), reverse=True)
    groups = split._by_torch(ordered)
    assert [[e.requirements[0] for e, _ in g] for g in groups] == [["torch==2.6.0"], ["torch==2.5.1"],
                                                                  ["torch==2.4.1"]]


def test_cache_clean_removes_a_package_from_uvs_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "uv-cache"
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    exe, _ = pythons.find("3.11")
    venv = tmp_path / "venv"
    uv.venv(venv, exe)
    lock = uv.compile(exe, ["six==1.17.0"])
    assert isinstance(lock, uv.Lock)
    uv.sync(venv, lock)

    def cached(name: str) -> bool:
        return any(name in p.name for p in cache.rglob("*") if p.is_dir())

    assert cached("six")
    uv.cache_clean(["six"])
    assert not cached("six")
    # the venv linked from the cache keeps its files
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import six; print(six.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.17.0"


def test_joint_environments_run_one_torch_release_at_a_time(split_plan: expand.SplitPlan) -> None:
    """limits.prune-cache in joint mode: the same torch-by-torch order as export environments, so the build of a
    release can leave the cache after its last environment."""
    from types import SimpleNamespace

    seen: list[list[str]] = []
    ctx = SimpleNamespace(plan=SimpleNamespace(spec=SimpleNamespace(limits=SimpleNamespace(prune_cache=False))),
                          summary=SimpleNamespace(installs=0))
    split.process_by_torch(ctx, list(split_plan.plan.items),  # type: ignore[arg-type]
                           lambda _, group: seen.append(sorted({e.requirements[0] for e, _ in group})))
    assert seen == [["torch==2.6.0"], ["torch==2.5.1"], ["torch==2.4.1"]]


def test_torch_built_on_numpy_1_gets_numpy_below_2_on_its_side_only(tmp_path: Path) -> None:
    """torch < 2.3 beside NumPy 2 raises "Numpy is not available" at the first tensor↔array conversion."""
    path = tmp_path / "old.toml"
    path.write_text(SPEC.replace('torch = ["==2.4.1", "==2.5.1", "==2.6.0"]', 'torch = ["==2.2.2", "==2.3.1"]'))
    cut = expand.split(expand.plan(spec.load(path)))
    extras = {e.requirements[0]: e.extras for e, _ in cut.exports}
    assert "numpy<2" in extras["torch==2.2.2"] and "numpy<2" not in extras["torch==2.3.1"]
    assert all("numpy<2" not in e.extras for e, _ in cut.runtimes)  # TF and onnx2tf choose their own NumPy
    joint = {e.requirements[0]: e.extras for e, _ in cut.plan.items}
    assert "numpy<2" in joint["torch==2.2.2"] and "numpy<2" not in joint["torch==2.3.1"]
    # onnxruntime before 1.19 likewise (it fails to import, or segfaults): on the runtime side only
    path.write_text(SPEC.replace('onnx = ["==1.17.0"]', 'onnx = ["==1.17.0"]\nonnxruntime = ["==1.18.1", "==1.19.2"]'))
    cut = expand.split(expand.plan(spec.load(path)))
    old = {next(r for r in e.requirements if r.startswith("onnxruntime")): e.extras for e, _ in cut.runtimes}
    assert "numpy<2" in old["onnxruntime==1.18.1"] and "numpy<2" not in old["onnxruntime==1.19.2"]
    assert all("numpy<2" not in e.extras for e, _ in cut.exports)


def test_a_prune_that_fails_is_a_warning_and_the_sweep_goes_on(
    session: object, make_environment: Callable[..., object], db_url: str, tmp_path: Path,
) -> None:
    """Two sweeps sharing uv's cache pruned the same torch build; the second uv failed on a file the first had
    removed, and its whole sweep stopped. Pruning is housekeeping: its failure is said, and nothing stops."""
    env = make_environment({"torch": "2.5.1", "nvidia-cudnn-cu12": "9.1.0.70", "onnx": "1.17.0"})
    failing = tmp_path / "uv"  # a uv that fails as the real one did: the cache entry was already gone
    failing.write_text("#!/bin/sh\necho 'error: failed to remove file `x/cupti_nvtx_cbid.h`: No such file or "
                       "directory (os error 2)' >&2\nexit 2\n")
    failing.chmod(0o755)
    out = io.StringIO()
    engine = make_engine(db_url)
    ctx = SimpleNamespace(Session=make_sessionmaker(engine), settings=Settings(database_url=db_url, uv=str(failing)),
                          progress=SimpleNamespace(console=Console(file=out, width=400)), cache=uv.CacheLock())
    try:
        split.drop_torch_build(ctx, [env.hash])  # type: ignore[arg-type, attr-defined]
    finally:
        engine.dispose()
    said = out.getvalue()
    assert "pruning uv's cache: nvidia-cudnn-cu12, torch" in said
    assert "could not prune uv's cache; going on: uv cache clean failed" in said and "os error 2" in said
