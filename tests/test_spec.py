"""Specs: the shipped ones load, and malformed ones get an error naming file, line, field and expectation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from matrix import expand, spec, versions
from matrix.spec import SpecError

GOOD = """\
name = "t"
models = ["resnet"]
routes = ["onnxruntime"]

[axes]
python = ["3.11"]
torch = ["==2.0.1"]
"""


def _releases(name: str) -> list[tuple[str, dt.datetime | None]]:
    """A fixed release history standing in for the index (the selector logic is what is tested here)."""
    when = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    last = 21 if name == "tensorflow-cpu" else 15  # TensorFlow's minors run ahead of torch's, as on PyPI
    return ([(f"2.{minor}.{patch}", when) for minor in range(0, last + 1) for patch in range(3)]
            + [(f"2.{last + 1}.0rc1", when)])


@pytest.mark.parametrize("path", sorted(spec.SPECS_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_load_and_expand(path: Path) -> None:
    loaded = spec.load(path)
    plan = expand.plan(loaded, selectors=versions.resolve_selectors(loaded, fetch=_releases))
    assert plan.items and plan.case_count > 0


def test_latest_minors_takes_the_newest_patch_of_the_newest_minors() -> None:
    selector = spec.LatestMinors.model_validate({"latest-minors": 3, "within": "<2.15"})
    assert versions.latest_minors(_releases("torch"), selector) == ["==2.14.2", "==2.13.2", "==2.12.2"]
    cutoff = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # everything above was uploaded later
    assert versions.latest_minors(_releases("torch"), selector, cutoff) == []


def test_history_spans_every_torch_minor_against_every_tf_minor() -> None:
    loaded = spec.load(spec.SPECS_DIR / "history.toml")
    plan = expand.plan(loaded, selectors=versions.resolve_selectors(loaded, fetch=_releases))
    torch_pins = {r for env in plan.environments for r in env.requirements if r.startswith("torch==")}
    assert torch_pins == {f"torch==2.{m}.2" for m in range(16)}
    tf_pins = {r for env in plan.environments for r in env.requirements if r.startswith("tensorflow-cpu==")}
    assert tf_pins == {f"tensorflow-cpu==2.{m}.2" for m in range(13, 22)}
    # × 2 converters: Python 3.11 on the whole grid, 3.12 from torch 2.2 and TF 2.16, 3.13 from torch 2.5 and TF 2.20
    assert len(plan.items) == (16 * 9 + 14 * 6 + 11 * 2) * 2


def test_tf_keras_companion_follows_the_environments_tensorflow_minor() -> None:
    """With `tensorflow` excluded, tf-keras's own pin on it is gone: the expander restores the minor coupling."""
    loaded = spec.load(spec.SPECS_DIR / "history.toml")
    plan = expand.plan(loaded, selectors=versions.resolve_selectors(loaded, fetch=_releases))
    for env in plan.environments:
        if any(r.startswith("onnx2tf") for r in env.requirements):
            tf = next(r for r in env.requirements if r.startswith("tensorflow-cpu==")).removeprefix("tensorflow-cpu==")
            minor = int(tf.split(".")[1])
            if minor >= 14:
                assert f"tf-keras>=2.{minor},<2.{minor + 1}" in env.extras
            else:
                assert not any(x.startswith("tf-keras") for x in env.extras)
    # a companion that carries its own specifier, or a framework that is not pinned exactly, is left alone
    assert expand.track_minor(("tensorflow==2.19.1",), ("tf-keras==2.18.0",)) == ("tf-keras==2.18.0",)
    assert expand.track_minor(("tensorflow>=2.16",), ("tf-keras",)) == ("tf-keras",)
    assert expand.track_minor(("tensorflow==2.20.0rc0",), ("tf-keras", "psutil")) == ("tf-keras>=2.20,<2.21", "psutil")
    # no tf-keras exists for TensorFlow 2.12 and 2.13 (its first release is 2.14.1): Keras 2 is built in there
    assert expand.track_minor(("tensorflow-cpu==2.13.1",), ("tf-keras", "psutil")) == ("psutil",)
    assert expand.track_minor(("tensorflow-cpu==2.14.1",), ("tf-keras",)) == ("tf-keras>=2.14,<2.15",)


def test_smoke_spec_is_the_issue_matrix() -> None:
    plan = expand.plan(spec.load(spec.SPECS_DIR / "smoke.toml"))
    assert len(plan.items) == 1
    env, cases = plan.items[0]
    assert env.python == "3.11"
    assert set(env.requirements) == {"torch", "onnx", "onnxruntime", "tensorflow-cpu", "onnx2tf"}
    assert {(c.model, c.route, c.exporter, c.opset) for c in cases} == {
        (m, r, "torchscript", 17)
        for m in ("resnet", "transformer", "grid_sample", "control_flow")
        for r in ("onnxruntime", "onnx2tf")
    }


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


BAD = [
    # (replace this, with this, message fragment, line)
    ('name = "t"', 'name = "t"\ncolour = "red"', "colour: unknown key 'colour'; expected one of", 2),
    ('torch = ["==2.0.1"]', 'torch = ["latest"]', "expected a PEP 440 version specifier", 7),
    ('routes = ["onnxruntime"]', 'routes = ["tflite"]', "routes: expected one of", 3),
    ('models = ["resnet"]', 'models = ["resnet", "vgg"]', "models: expected one of", 2),
    ('models = ["resnet"]', "models = []", "models: List should have at least 1 item", 2),
    ('python = ["3.11"]', 'python = ["3"]', "expected a version like '3.11'", 6),
    ('python = ["3.11"]\n', "", "expected a 'python' axis", 1),
    ('name = "t"\n', "", "name: required field is missing", 1),
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nopsets = [3]', "expected an ONNX opset between", 4),
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nopsets = ["17"]', "opsets: Input should be a valid", 4),
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nexporters = ["jit"]', "exporters: Input should be", 4),
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nexclude-newer = "yesterday"',
     "expected a date like '2025-08-01'", 4),
    ('torch = ["==2.0.1"]', 'torch = "==2.0.1"', "expected a non-empty list of version selectors", 7),
    ('torch = ["==2.0.1"]', "torch = [{latest-minors = 0}]", "greater than or equal to 1", 7),
    ('torch = ["==2.0.1"]', "torch = [{newest = 3}]", "unknown key 'newest'", 7),
    ('torch = ["==2.0.1"]', 'torch = [{latest-minors = 2, within = "2.x"}]', "PEP 440 version specifier", 7),
    ("[axes]", "[limits]\nstep-timeout = -1\n[axes]", "limits.step-timeout: Input should be greater than 0", 6),
    ('name = "t"', 'name = "has space"', "name: String should match pattern", 1),
    ('name = "t"', "name = ", "not valid TOML", None),
    # issue 15 item 7: an axis key is a package name; a newline in it would reach uv's stdin as an option line
    ('torch = ["==2.0.1"]', '"six\\n-i https://elsewhere.example/simple" = ["==1.16.0"]',
     "axes: expected a package name such as 'torch' as the axis key, got 'six\\n-i https://elsewhere", 5),
    ('torch = ["==2.0.1"]', '"to rch" = ["==2.0.1"]', "expected a package name such as 'torch' as the axis key", 5),
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nexcludes = ["tensorflow", "not a name"]',
     "excludes: expected a package name such as 'tensorflow', got 'not a name'", 4),
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nexcludes = ["tensorflow>=2"]',
     "excludes: expected a package name such as 'tensorflow', got 'tensorflow>=2'", 4),
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\n[companions]\nonnx2tf = ["psutil\\n-i x"]',
     "expected PEP 508 requirements", 4),
    # issue 15 item 10: a date that matches the shape but is not a date
    ('routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nexclude-newer = "2025-13-45"',
     "expected a date like '2025-08-01'", 4),
]


@pytest.mark.parametrize(("old", "new", "fragment", "line"), BAD, ids=[b[2][:40] for b in BAD])
def test_malformed_spec_messages(tmp_path: Path, old: str, new: str, fragment: str, line: int | None) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        spec.load(path)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(str(path))
    if line is not None:
        assert f"{path}:{line}:" in message


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="no such spec file"):
        spec.load("matrix/specs/nope.toml")


def test_a_directory_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"expected a TOML spec file, got a directory"):
        spec.load(tmp_path)


def test_non_utf8_spec_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(GOOD.replace('"t"', '"t"\ndescription = "caf\xe9"').encode("latin-1"))
    with pytest.raises(SpecError) as info:
        spec.load(path)
    assert str(info.value).startswith(f"{path}:2: expected UTF-8 text, got byte 0xe9")


def test_grid_specs_cover_every_cell_once_per_torch_build() -> None:
    """grid.toml: every torch minor × every TF minor from 2.12, split into one export environment per torch and
    one runtime per TF and converter; grid-py312.toml exports nothing of its own (same export environments)."""
    sides = {}
    for name in ("grid.toml", "grid-py312.toml"):
        loaded = spec.load(spec.SPECS_DIR / name)
        sides[name] = expand.split(expand.plan(loaded, selectors=versions.resolve_selectors(loaded, fetch=_releases)))
    grid = sides["grid.toml"]
    assert len(grid.plan.items) == 16 * 10 * 2 and len(grid.exports) == 16 and len(grid.runtimes) == 10 * 2
    assert len(grid.pairs) == 16 * 10 * 2
    py312 = sides["grid-py312.toml"]
    assert {e.hash for e, _ in py312.exports} == {e.hash for e, _ in grid.exports}
    # TF 2.16-2.21 on 3.12 and 2.20-2.21 on 3.13, each with both backends, as declared and with the override
    assert len(py312.runtimes) == (6 + 2) * 2 * 2
