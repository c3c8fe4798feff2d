"""Settings: defaults here, then KNOWNGOOD_* environment variables, then CLI flags."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where format=pylock may look files up; PyPI and PyTorch's own index are what the shipped specs resolve against.
DEFAULT_PYLOCK_INDEXES = ("https://pypi.org/simple", "https://download.pytorch.org/whl")


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
        description="API answers kept per process, each valid until recorded data changes; 0 = off.",
    )
    response_cache_recheck: float = Field(
        default=1.0, ge=0,
        description="Seconds between checks for changed data (0: on every request): answers, cached or not, are at "
                    "most this far behind newly recorded results; this process's own ingests show at once.",
    )
    ingest_max_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0,
        description="Largest POST /api/v1/runs body accepted (413 above); the shipped snapshot is ~15 MB as JSON.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL the API is reached at (https://knowngood.example.org), for absolute links in answers; "
                    "links are relative to the host when unset (never taken from the request's Host header).",
    )
    pylock_indexes: list[str] = Field(
        default=list(DEFAULT_PYLOCK_INDEXES),
        description="Indexes format=pylock may fetch file lists from (an environment's index_url must start with "
                    "one of them); anything else is answered 409 without a request leaving the server.",
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
    queue_max_retakes: int = Field(
        default=3, ge=0,
        description="times a queue entry whose worker was lost (its lease passed: killed, e.g. by the OOM killer, or "
        "its machine gone) is retaken; one more loss and the environment is recorded as a crash, "
        "`WorkerLost(N times)`, and the queue moves on",
    )
    queue_poll: float = Field(
        default=5.0, gt=0, description="seconds a queue worker with nothing to claim waits before asking again",
    )
    keep_workdirs: bool = False

    @field_validator("pylock_indexes")
    @classmethod
    def _https_only(cls, value: list[str]) -> list[str]:
        for url in value:
            if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
                raise ValueError(f"pylock_indexes: expected http(s) URLs, got {url!r}")
        return [url.rstrip("/") for url in value]
