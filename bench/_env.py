"""Shared by the benchmarks: build (or reuse) the smoke environment through the runner's own seams."""

from __future__ import annotations

from pathlib import Path

from matrix import expand, spec
from runner import environments, uv
from store.settings import Settings

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "matrix" / "specs" / "smoke.toml"


def smoke_environment(settings: Settings | None = None) -> tuple[Path, environments.Resolved]:
    """The smoke spec's single environment, resolved and installed (reused when already there)."""
    settings = settings or Settings()
    plan = expand.plan(spec.load(SMOKE), index=uv.index_settings())
    env, _ = plan.items[0]
    resolved = environments.resolve(env)
    assert resolved.lock is not None, resolved.conflict
    venv, _ = environments.install(settings.env_root, resolved)
    return venv, resolved
