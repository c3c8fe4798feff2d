"""Deployment targets (issue 11): planning, overrides, the schema, the API filter and the served lockfiles."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.app import create_app
from api.lockfile import render_environment
from api.queries import Provenance
from matrix import expand
from matrix import spec as spec_mod
from matrix.expand import Environment
from runner import environments, pythons, uv
from runner.signatures import normalise
from store import migrate, outcomes
from store.db import make_engine
from store.locks import Lock, parse_lock
from store.models import Case, Run
from store.models import Environment as EnvironmentRow
from store.settings import Settings

ROOT = Path(__file__).parents[1]
TARGETS_SPEC = ROOT / "matrix" / "specs" / "targets.toml"


def _plan() -> expand.Plan:
    return expand.plan(spec_mod.load(TARGETS_SPEC))


def test_targets_spec_plans_each_converter_with_its_targets_and_backends() -> None:
    plan = _plan()
    ids = {env.id: cases for env, cases in plan.items}
    assert set(ids) == {
        "py3.12-torch-tfcpu2.21.0-onnx2tf1.28.8-tf_converter",
        "py3.12-torch-tfcpu2.21.0-onnx2tf2.6.9-flatbuffer_direct",
        "py3.12-torch-tfcpu2.21.0-onnx2tf2.6.9-flatbuffer_direct-override.numpy.protobuf",
        "py3.12-torch-tfcpu2.21.0-onnx2tf2.6.9-tf_converter",
        "py3.12-torch-tfcpu2.21.0-onnx2tf2.6.9-tf_converter-override.numpy.protobuf",
        "py3.12-torch-tfcpu2.19.1-onnx2tf2.6.9-tf_converter",
        "py3.12-torch-tfcpu2.19.1-onnx2tf2.6.9-tf_converter-override.numpy.protobuf",
        "py3.12-torch-tfcpu2.21.0-litert0.10.0",
    }
    onnx2tf = ids["py3.12-torch-tfcpu2.21.0-onnx2tf2.6.9-tf_converter"]
    assert [c.key for c in onnx2tf if c.model == "resnet"] == [
        "resnet.onnx2tf.torchscript.op17.saved_model", "resnet.onnx2tf.torchscript.op17.tflite"]
    litert = ids["py3.12-torch-tfcpu2.21.0-litert0.10.0"]
    assert [c.key for c in litert] == ["resnet.litert-torch.none.op0.tflite", "batchnorm.litert-torch.none.op0.tflite"]
    env = next(e for e, _ in plan.items if e.id.endswith("2.6.9-tf_converter"))
    assert env.options == (("onnx2tf-backend", "tf_converter"),)
    assert expand.converter_options(env, "onnx2tf") == {"tflite_backend": "tf_converter"}
    assert expand.converter_options(env, "onnxruntime") == {}
    litert_env = next(e for e, _ in plan.items if "litert" in e.id)
    assert litert_env.options == ()  # an option applies only where its converter is


def test_targets_default_to_all_that_apply_and_onnxruntime_has_none(tmp_path: Path) -> None:
    text_ = (ROOT / "matrix" / "specs" / "smoke.toml").read_text().replace('targets = ["tflite"]\n', "")
    path = tmp_path / "s.toml"
    path.write_text(text_)
    plan = expand.plan(spec_mod.load(path))
    keys = [c.key for c in plan.items[0][1] if c.model == "resnet"]
    assert keys == ["resnet.onnxruntime.torchscript.op17", "resnet.onnx2tf.torchscript.op17.saved_model",
                    "resnet.onnx2tf.torchscript.op17.tflite", "resnet.onnx2tf.torchscript.op17.keras"]


def test_bad_targets_and_option_values_are_refused_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TARGETS_SPEC.read_text().replace('targets = ["saved_model", "tflite"]', 'targets = ["onnx"]'))
    with pytest.raises(spec_mod.SpecError, match=r"bad.toml:\d+: targets: expected one of \['keras', 'saved_model', "
                                                 r"'tflite'\], got 'onnx'"):
        spec_mod.load(path)
    path.write_text(TARGETS_SPEC.read_text().replace('"tf_converter"]   #', '"tfconv"]   #'))
    with pytest.raises(spec_mod.SpecError, match=r"onnx2tf-backend.*expected one of \['flatbuffer_direct', "
                                                 r"'tf_converter'\], got 'tfconv'"):
        spec_mod.load(path)


def test_an_environment_without_overrides_or_options_keeps_its_pre_target_hash() -> None:
    env = Environment(python="3.11", requirements=("torch==2.0.1", "onnx==1.14.0"), excludes=("tensorflow",))
    before = {"python": "3.11", "requirements": sorted(env.requirements), "excludes": ["tensorflow"], "index": [],
              "cutoff": None}
    assert env.hash == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    relaxed = Environment(python="3.11", requirements=env.requirements, excludes=env.excludes,
                          overrides=("numpy<2",))
    assert relaxed.hash != env.hash and relaxed.id.endswith("-override.numpy")


def test_compile_hands_overrides_to_uv_as_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(args: list[str], *, input: str | None = None, timeout: float = 0, uv_path: str | None = None) -> Any:
        seen["args"] = args
        seen["overrides"] = Path(args[args.index("--overrides") + 1]).read_text()

        class Done:
            returncode, stdout, stderr = 0, "six==1.17.0 \\\n    --hash=sha256:ab\n", ""
        return Done()

    monkeypatch.setattr(uv, "_run", fake_run)
    lock = uv.compile(Path("/usr/bin/python3"), ["onnx2tf==2.6.9"], overrides=["numpy>=1.26,<2.2"])
    assert isinstance(lock, Lock) and seen["overrides"] == "numpy>=1.26,<2.2\n"


def test_an_overrides_twin_resolves_only_where_the_declared_pins_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    conflict = {"plain": True}

    def fake_compile(python: Path, reqs: Any, *, excludes: Any = (), cutoff: Any = None,
                     overrides: Any = (), uv_path: str | None = None) -> Lock | uv.Conflict:
        calls.append(tuple(overrides))
        if not overrides and conflict["plain"]:
            return uv.Conflict("Because onnx2tf==2.6.9 depends on numpy==2.2.6 and ...")
        return Lock("six==1.17.0\n", parse_lock("six==1.17.0\n"))

    monkeypatch.setattr(uv, "compile", fake_compile)
    twin = Environment(python="3.11", requirements=("onnx2tf==2.6.9",), overrides=("numpy<2.2",))
    resolved = environments.resolve(twin)
    assert resolved.status == "resolved" and resolved.lock is not None and calls == [(), ("numpy<2.2",)]
    conflict["plain"] = False
    calls.clear()
    resolved = environments.resolve(twin)
    assert resolved.status == "override-unneeded" and resolved.lock is None and calls == [()]


def test_real_uv_resolves_the_relaxed_twin_of_an_unresolvable_pair() -> None:
    exe, _ = pythons.find("3.11")
    request = ["requests==2.32.3", "urllib3==1.20"]  # requests declares urllib3>=1.21.1
    conflict = uv.compile(exe, request, cutoff="2025-01-01")
    assert isinstance(conflict, uv.Conflict) and normalise("ResolutionConflict", conflict.reason).startswith(
        "ResolutionConflict(")
    relaxed = uv.compile(exe, request, cutoff="2025-01-01", overrides=["urllib3==1.20"])
    assert isinstance(relaxed, Lock) and relaxed.version("urllib3") == "1.20"


def test_self_named_deploy_failures_are_their_own_signature() -> None:
    assert normalise("NoServingSignature", "the SavedModel has no signatures at all", step="tf_run") == \
        "NoServingSignature"
    assert normalise("NoTfliteFile", "wrote no float32 .tflite in tf (found [])", step="convert") == "NoTfliteFile"


def _worker_module(name: str) -> Any:
    path = ROOT / "runner" / "worker" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"knowngood_worker_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_outputs_are_matched_in_natural_name_order() -> None:
    deploy = _worker_module("deploy")
    assert sorted(["output_10", "output_2", "output_1"], key=deploy._natural) == ["output_1", "output_2", "output_10"]
    assert sorted(["Identity_1", "Identity"], key=deploy._natural) == ["Identity", "Identity_1"]


# --- schema -------------------------------------------------------------------------------------------------

def test_migration_labels_existing_tf_cases_keras_and_keeps_them(db_url: str) -> None:
    migrate.downgrade(db_url, "0002")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO run (id, spec_name, spec_hash, runner_version, corpus_version, host, "
                          "started_at, status, counts) VALUES ('r1', 's', 'h', 'v', 'c', 'h', CURRENT_TIMESTAMP, "
                          "'finished', '{}')"))
        conn.execute(text("INSERT INTO environment (id, hash, name, python, requirements, excludes, index_url, "
                          "status, resolved_at, memory) VALUES (1, 'e', 'py3.11', '3.11', '[]', '[]', 'x', "
                          "'installed', CURRENT_TIMESTAMP, '{}')"))
        for i, route in enumerate(("onnx2tf", "onnx-tf", "nobuco", "onnxruntime"), start=1):
            conn.execute(text("INSERT INTO \"case\" (id, run_id, environment_id, model, route, exporter, opset, "
                              "model_hash, corpus_version, runner_version, status, recorded_at) VALUES "
                              f"({i}, 'r1', 1, 'resnet', '{route}', 'torchscript', 17, 'm', 'c', 'v', 'pass', "
                              "CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO step (case_id, ordinal, name, status, details) VALUES "
                              f"({i}, 0, 'export', 'ok', '{{}}')"))
    engine.dispose()
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        targets = dict(conn.execute(text("SELECT route, target FROM \"case\"")).all())  # type: ignore[arg-type]
        steps = conn.execute(text("SELECT count(*) FROM step")).scalar()
        env = conn.execute(text("SELECT overrides, options FROM environment")).one()
    engine.dispose()
    assert targets == {"onnx2tf": "keras", "onnx-tf": "keras", "nobuco": "keras", "onnxruntime": ""}
    assert steps == 4  # nothing cascaded away while the tables were rebuilt
    assert [json.loads(v) if isinstance(v, str) else v for v in env] == [[], {}]


def test_target_is_part_of_the_case_identity_and_filters_the_api(
    session: Session, db_url: str, make_run: Callable[..., Run], make_environment: Callable[..., EnvironmentRow],
) -> None:
    run = make_run()
    env = make_environment({"torch": "2.5.1", "onnx2tf": "1.28.8", "tensorflow-cpu": "2.19.1"})
    for target, status in (("keras", "pass"), ("saved_model", "fail"), ("tflite", "pass")):
        session.add(Case(run_id=run.id, environment_id=env.id, model="resnet", route="onnx2tf", exporter="torchscript",
                         opset=17, target=target, model_hash="m1", corpus_version="c1", runner_version="test",
                         status=status, signature="NoServingSignature" if status == "fail" else None,
                         max_abs_diff=1e-6 if status == "pass" else None))
    session.flush()
    outcomes.refresh(session, [env.id])  # as the recorder and ingest keep it
    session.commit()
    with TestClient(create_app(Settings(database_url=db_url))) as client:
        def chains(**params: str) -> int:
            body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnx2tf", **params}).json()
            return len(body["chains"])

        assert chains(target="tflite") == 1 and chains(target="saved_model") == 0 and chains() == 1
        assert client.get("/api/v1/lockfile", params={"models": "resnet", "route": "onnx2tf",
                                                      "target": "saved_model"}).status_code == 404
        assert client.get("/api/v1/lockfile", params={"models": "resnet", "route": "onnx2tf",
                                                      "target": "tflite"}).status_code == 200
        grid = client.get("/api/v1/matrix", params={"route": "onnx2tf", "target": "saved_model"}).json()
        assert [(c["passed"], c["failed"]) for c in grid["cells"]] == [(0, 1)]
        bad = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnx2tf", "target": "onnx"})
        assert bad.status_code == 422 and "target" in bad.text


# --- lockfiles of an overrides environment ------------------------------------------------------------------

LOCK = ("numpy==2.1.3 \\\n    --hash=sha256:" + "a" * 64 + "\nonnx2tf==2.6.9 \\\n    --hash=sha256:" + "b" * 64 +
        "\ntensorflow-cpu==2.19.1 \\\n    --hash=sha256:" + "c" * 64 + "\n")


def _overrides_env() -> EnvironmentRow:
    from store.models import Package

    return EnvironmentRow(
        hash=uuid.uuid4().hex * 2, name="py3.12-tfcpu2.19.1-onnx2tf2.6.9-tf_converter-override.numpy", python="3.12",
        requirements=["tensorflow-cpu==2.19.1", "onnx2tf==2.6.9"], excludes=[], index_url="https://pypi.org/simple",
        status="installed", lock_hash="l" * 64, lock_text=LOCK, memory={}, overrides=["numpy>=1.26,<2.2"],
        options={"onnx2tf-backend": "tf_converter"},
        packages=[Package(name=p.name, version=p.version, hashes=list(p.hashes)) for p in parse_lock(LOCK)],
    )


def test_every_lockfile_format_carries_the_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from api import lockfile

    env = _overrides_env()
    provenance = Provenance("run-1", None, ("resnet",))
    requirements = render_environment(env, provenance, "requirements")
    assert requirements.endswith(LOCK)  # the pinned set uv resolved, unchanged: `uv pip sync` installs it as is
    assert "# resolved with uv overrides (declared pins relaxed): numpy>=1.26,<2.2" in requirements
    assert "# converter option onnx2tf-backend = tf_converter" in requirements
    constraints = render_environment(env, provenance, "constraints")
    assert "uv pip install -r constraints.txt --overrides constraints.txt" in constraints
    assert "numpy==2.1.3\n" in constraints
    pyproject = tomllib.loads(render_environment(env, provenance, "pyproject"))
    assert pyproject["tool"]["uv"]["override-dependencies"] == ["numpy>=1.26,<2.2"]
    monkeypatch.setattr(lockfile, "index_files", lambda url, name, version, indexes=(): (lockfile.IndexFile(
        filename=f"{name}-{version}-py3-none-any.whl", url=f"https://files.example/{name}-{version}-py3-none-any.whl",
        sha256={"numpy": "a", "onnx2tf": "b", "tensorflow-cpu": "c"}[name] * 64,
        hashes=(("sha256", {"numpy": "a", "onnx2tf": "b", "tensorflow-cpu": "c"}[name] * 64),)),))
    pylock = tomllib.loads(render_environment(env, provenance, "pylock").split("\n", 3)[3])
    assert pylock["tool"]["knowngood"]["overrides"] == ["numpy>=1.26,<2.2"]
    assert pylock["tool"]["knowngood"]["options"] == {"onnx2tf-backend": "tf_converter"}


def test_served_overrides_lockfile_installs_unchanged_with_uv(tmp_path: Path) -> None:
    """A real relaxed resolution, rendered as served, is taken by `uv pip sync` with hashes as it is."""
    exe, _ = pythons.find("3.11")
    overrides = ["urllib3==1.20"]
    lock = uv.compile(exe, ["requests==2.32.3", "urllib3==1.20"], cutoff="2025-01-01", overrides=overrides)
    assert isinstance(lock, Lock)
    from store.models import Package

    env = EnvironmentRow(
        hash="h" * 64, name="py3.11-requests2.32.3-urllib31.20-override.urllib3", python="3.11",
        requirements=["requests==2.32.3", "urllib3==1.20"],
        excludes=[], index_url="https://pypi.org/simple", status="installed", lock_hash=lock.hash,
        lock_text=lock.text, memory={}, overrides=overrides, options={},
        packages=[Package(name=p.name, version=p.version, hashes=list(p.hashes)) for p in lock.pins],
    )
    served = render_environment(env, Provenance("run-1", None, ("m",)), "requirements")
    venv = tmp_path / "venv"
    uv.venv(venv, exe)
    uv.sync(venv, Lock(served, parse_lock(served)))
    assert uv.freeze(venv) == {p.name: p.version for p in lock.pins}
