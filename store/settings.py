"""Settings: defaults here, then KNOWNGOOD_* environment variables, then CLI flags."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


class Settings(BaseSettings):
    """Everything a run or the service can be configured with."""

    model_config = SettingsConfigDict(env_prefix="KNOWNGOOD_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///store.db",
        description="SQLAlchemy URL; SQLite file in the working directory by default.",
    )
    env_root: Path = Field(
        default_factory=lambda: _cache_home() / "knowngood" / "envs",
        description="Where environments (uv venvs) live, one folder per environment hash.",
    )
    work_root: Path = Field(
        default_factory=lambda: _cache_home() / "knowngood" / "work",
        description="Scratch folders for worker runs (exported models, step logs).",
    )
    uv: str | None = Field(
        default=None, description="path of the uv binary (KNOWNGOOD_UV); `uv` on PATH when unset",
    )
    artifact_root: Path = Field(
        default_factory=lambda: _cache_home() / "knowngood" / "artifacts",
        description="Exported graphs of split chains, one folder per normalised graph hash; kept across runs, "
        "so a resumed sweep neither exports nor converts twice.",
    )
    jobs: int = Field(default=1, ge=1, description="environments processed at once")
    resolve_ttl: float = Field(
        default=600, ge=0,
        description="seconds a resolution without a cutoff is reused before uv is asked again (0: always ask)",
    )
    memory_budget_mb: int = Field(
        default=16_000, gt=0, description="sum of predicted worker peaks allowed at once with --jobs > 1"
    )
    step_timeout: float = Field(default=900.0, gt=0, description="Seconds one step may take.")
    memory_limit_mb: int = Field(default=12_000, gt=0, description="Peak RSS of a worker before it is killed.")
    ingest_token: str | None = Field(default=None, description="Bearer token for POST /api/v1/runs.")
    response_cache_size: int = Field(
        default=512, ge=0,
        description="API answers kept per process, each valid until new results are recorded; 0 = off.",
    )
    response_cache_recheck: float = Field(
        default=1.0, ge=0, description="Seconds between checks for newly recorded results (0: on every request).",
    )
    max_environments: int = Field(
        default=100_000, gt=0,
        description="largest plan a run or `plan` expands (a spec's limits.max-environments may lower it)",
    )
    stop_grace: float = Field(
        default=20.0, gt=0,
        description="seconds from SIGTERM or SIGINT to exit: the current case may finish in what the worker's "
        "stop leaves of it; later cases are left for a resumed run (`docker stop -t` should be longer)",
    )
    queue_lease: float = Field(
        default=120.0, gt=0,
        description="seconds a queue worker's claim on an environment lasts unless renewed (every third of it); "
        "a dead worker's environment is retaken this long after its last renewal",
    )
    queue_poll: float = Field(
        default=5.0, gt=0, description="seconds a queue worker with nothing to claim waits before asking again",
    )
    keep_workdirs: bool = False
