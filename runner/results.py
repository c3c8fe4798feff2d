"""The JSON-lines contract between worker and runner, as validated models."""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class StepStatus(StrEnum):
    ok = "ok"
    fail = "fail"
    error = "error"
    timeout = "timeout"
    crash = "crash"
    oom = "oom"
    skip = "skip"


class StepResult(BaseModel):
    """The `end` line of one step."""

    model_config = ConfigDict(extra="ignore")

    case: str
    step: str
    ordinal: int = Field(ge=0)
    status: StepStatus
    seconds: float | None = None
    peak_rss: int | None = None
    error_type: str | None = None
    message: str | None = None
    max_abs_diff: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)


def parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Decode JSON lines; a torn last line (the worker died mid-write) is dropped, not fatal."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("steps line %d is not JSON (worker died while writing?): %.200s", number, line)
    return records


def case_status(steps: list[StepResult]) -> str:
    """`pass` when every step is ok, else the status of the first step that was not ok."""
    for step in steps:
        if step.status != StepStatus.ok:
            return str(step.status)
    return "pass"
