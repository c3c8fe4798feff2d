"""Plans have limits: a size refused before the product is built, patterns that must match, no empty plans."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from knowngood import cli
from matrix import expand, spec
from matrix.spec import SpecError

HUGE = """\
name = "huge"
models = ["resnet"]
routes = ["onnxruntime"]

[axes]
python = ["3.11"]
{axes}
"""


def _load(tmp_path: Path, text: str) -> spec.Spec:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return spec.load(path)


def _many(n_axes: int, per_axis: int) -> str:
    values = ", ".join(f'"=={v}.0"' for v in range(per_axis))
    return "\n".join(f"p{a} = [{values}]" for a in range(n_axes))


def test_a_huge_plan_is_refused_with_its_count_before_it_is_built(tmp_path: Path) -> None:
    loaded = _load(tmp_path, HUGE.format(axes=_many(7, 100) + '\np7 = ["==1.0", "==2.0", "==3.0", "==4.0"]'))
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(expand.PlanError) as info:
        expand.plan(loaded)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.monotonic() - started < 5 and peak < 50 * 2**20
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 's.toml'}:5: axes: ")
    assert "400,000,000,000,000 environments (python 1 × p0 100 × p1 100" in message
    assert "more than the limit of 100,000" in message


def test_the_limit_is_the_spec_s_or_the_caller_s_whichever_is_lower(tmp_path: Path) -> None:
    text = HUGE.format(axes=_many(2, 10))  # 100 environments
    assert len(expand.plan(_load(tmp_path, text)).items) == 100
    with pytest.raises(expand.PlanError, match=r"100 environments .* more than the limit of 99;"):
        expand.plan(_load(tmp_path, text), max_environments=99)
    limited = text.replace("[axes]", "[limits]\nmax-environments = 50\n\n[axes]")
    with pytest.raises(expand.PlanError, match="more than the limit of 50;"):
        expand.plan(_load(tmp_path, limited), max_environments=1000)


@pytest.mark.parametrize("pattern", ["py3.{11", "py3.11}", "py3.{1{1}"])
def test_unbalanced_braces_are_a_spec_error(tmp_path: Path, pattern: str) -> None:
    text = HUGE.format(axes='torch = ["==2.0.1"]').replace('routes = ["onnxruntime"]',
                                                           f'routes = ["onnxruntime"]\ninclude = ["{pattern}"]')
    with pytest.raises(SpecError) as info:
        _load(tmp_path, text)
    assert f"s.toml:4: include: expected an environment-id pattern with balanced braces, got {pattern!r}" \
        in str(info.value)


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_a_pattern_that_matches_no_environment_is_refused(tmp_path: Path, field: str) -> None:
    text = HUGE.format(axes='torch = ["==2.0.1", "==2.1.0"]').replace(
        'routes = ["onnxruntime"]', f'routes = ["onnxruntime"]\n{field} = ["py3.11-torch2.0.1", "py3.12-*"]')
    with pytest.raises(expand.PlanError) as info:
        expand.plan(_load(tmp_path, text))
    assert str(info.value) == (
        f"{tmp_path / 's.toml'}:4: {field}: pattern 'py3.12-*' matches none of the 2 environments "
        "(e.g. py3.11-torch2.0.1); expected a pattern such as 'py3.11-*'")


def test_a_plan_with_nothing_left_is_refused(tmp_path: Path) -> None:
    text = HUGE.format(axes='torch = ["==2.0.1"]').replace('routes = ["onnxruntime"]',
                                                           'routes = ["onnxruntime"]\nexclude = ["py3.11-*"]')
    with pytest.raises(expand.PlanError, match=r"s.toml:4: exclude: no environment is left .*1 environment"):
        expand.plan(_load(tmp_path, text))


def test_only_patterns_that_match_nothing(tmp_path: Path) -> None:
    loaded = _load(tmp_path, HUGE.format(axes='torch = ["==2.0.1"]'))
    plan = expand.plan(loaded)
    assert expand.select(plan, ["py3.11-*"]) == list(plan.items)
    with pytest.raises(expand.PlanError, match=r"--only: pattern 'py3.12-\*' matches none of the 1 environments"):
        expand.select(plan, ["py3.12-*"])
    with pytest.raises(expand.PlanError, match="--only: expected an environment-id pattern with balanced braces"):
        expand.select(plan, ["py3.{11"])


def test_plan_reports_a_corpus_that_is_not_python(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "mine.py"
    corpus.write_text("MODELS = {\n    'a': 1,\n    'b' 2,\n}\n")
    path = tmp_path / "s.toml"
    path.write_text(HUGE.format(axes='torch = ["==2.0.1"]').replace('models = ["resnet"]',
                                                                     'models = ["a"]\ncorpus = "mine.py"'))
    assert cli.main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {corpus}:3: corpus: expected Python source, got a syntax error: ")
    assert len(err.splitlines()) == 1


def test_plan_refuses_an_empty_plan_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(HUGE.format(axes='torch = ["==2.0.1"]').replace(
        'routes = ["onnxruntime"]', 'routes = ["onnxruntime"]\nexclude = ["py3.11-*"]'))
    assert cli.main(["plan", str(path)]) == 2
    assert "no environment is left" in capsys.readouterr().err
