"""Response models: what the API returns, never ORM objects."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel


class ModelEvidence(BaseModel):
    model: str
    exporter: str
    opset: int
    opset_emitted: int | None
    max_abs_diff: float | None


class ChainOut(BaseModel):
    """An environment in which every requested model passed on the route, with its evidence."""

    environment_id: int
    name: str
    python: str
    python_full: str | None
    versions: dict[str, str]
    lock_hash: str
    run_id: str
    recorded_at: dt.datetime
    cutoff: str | None
    index_url: str
    cases_passed: int
    models: list[ModelEvidence]


class ChainsOut(BaseModel):
    models: list[str]
    route: str
    chains: list[ChainOut]
