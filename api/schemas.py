"""Response models: what the API returns, never ORM objects."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from store.db import as_utc

# RFC 3339 requires an offset; the store hands back aware UTC times, and a naive one given here means UTC too.
Timestamp = Annotated[dt.datetime, AfterValidator(as_utc)]


class ModelEvidence(BaseModel):
    model: str
    exporter: str
    opset: int
    opset_emitted: int | None
    max_abs_diff: float | None
    target: str = Field(default="", description="what the pass was measured on: saved_model | tflite | keras on TF "
                        "routes ('' where the route deploys no TF artifact); ask target= to require one")


class ChainOut(BaseModel):
    """An environment in which every requested model passed on the route, with its evidence."""

    kind: Literal["joint"] = Field(default="joint", description="torch and the runtime side in one environment")
    environment_id: int
    name: str
    python: str
    python_full: str | None
    versions: dict[str, str]
    lock_hash: str
    run_id: str
    recorded_at: Timestamp
    cutoff: str | None
    index_url: str
    cases_passed: int
    models: list[ModelEvidence]


class ChainSide(BaseModel):
    """One environment of a split chain: the research side (export) or the production side (runtime)."""

    environment_id: int
    name: str
    python: str
    python_full: str | None
    versions: dict[str, str]
    lock_hash: str
    cutoff: str | None
    index_url: str


class SplitChainOut(BaseModel):
    """An export environment and a runtime environment (no torch) that together passed every requested model:
    the export side's stored graph, converted and run on the runtime side, matched PyTorch."""

    kind: Literal["split"] = "split"
    research: ChainSide = Field(description="the export environment: torch, onnx, onnxscript")
    production: ChainSide = Field(description="the runtime environment: what the deployment installs")
    run_id: str
    recorded_at: Timestamp
    cases_passed: int
    models: list[ModelEvidence]


class ChainsOut(BaseModel):
    models: list[str]
    route: str
    chains: list[ChainOut]
    total: int | None = Field(default=None, description="chains matching before `limit` was applied")
    split_chains: list[SplitChainOut] = Field(
        default_factory=list, description="export → runtime pairs, best first (each side is its own lockfile)"
    )
    split_total: int = Field(default=0, description="split chains matching before `limit` was applied")
    near_misses: list[NearMiss] = Field(default_factory=list, description="closest environments that failed")
    environments: MeasuredCounts | None = Field(default=None, description="what was measured for this query")


EnvironmentKind = Literal["joint", "export", "runtime"]


class EnvironmentRef(BaseModel):
    """Another environment a row depends on: the export side of a split chain."""

    id: int
    name: str
    python: str
    versions: dict[str, str] = Field(description="its key package versions (torch, onnx, …)")


class MatrixEnvironment(BaseModel):
    """One environment inside a matrix cell, with its case counts.

    In a split cell (kind runtime) it is one export → runtime pair: the runtime environment that converted and ran
    the graph, and in `export_environment` the one that exported it (null if no export case of the graph is
    recorded). One runtime case serves every export environment that produced the same graph.
    """

    id: int
    name: str
    python: str
    status: str = Field(description="the environment's status: installed, resolved, conflict, …")
    signature: str | None = Field(description="why the environment could not be resolved or installed")
    passed: int
    failed: int
    kind: EnvironmentKind = Field(default="joint", description="joint | export | runtime")
    export_environment: EnvironmentRef | None = Field(
        default=None, description="split chains: the export environment whose stored graph these cases ran")


CellStatus = Literal["pass", "fail", "mixed", "unresolved"]


class MatrixCell(BaseModel):
    """One verdict: the cases of one target in environments of one kind at one (x, y). Targets never merge."""

    x: str | None = Field(description="version of the x package; null when the environment does not pin it. A "
                                      "split cell reads the runtime side's pin, then the export side's (torch)")
    y: str | None
    status: CellStatus
    passed: int
    failed: int
    environments: list[MatrixEnvironment]
    target: str | None = Field(default=None, description="saved_model | tflite | keras on TF routes, '' on routes "
                                                          "without one; null where nothing ran (unresolved)")
    kind: EnvironmentKind = Field(default="joint", description="joint: one environment; export or runtime: a side "
                                                                "of a split chain (runtime cells pair both sides)")


class MatrixOut(BaseModel):
    """The grid behind the dashboard: versions of `x` against versions of `y`."""

    x: str
    y: str
    route: str | None
    models: list[str]
    exporter: str | None
    python: str | None
    x_versions: list[str | None] = Field(description="oldest first; null (not pinned) last")
    y_versions: list[str | None]
    cells: list[MatrixCell]
    target: str | None = Field(default=None, description="the target filter, if any")
    kind: EnvironmentKind | None = Field(default=None, description="the environment kind filter, if any")


class FailureExample(BaseModel):
    environment_id: int
    environment: str
    model: str | None
    route: str | None
    step: str | None
    error_type: str | None
    message: str | None
    target: str | None = Field(default=None, description="the case's target; null for a resolution failure")
    kind: EnvironmentKind = "joint"
    versions: dict[str, str] = Field(default_factory=dict, description="the environment's key package versions")
    exported_by: list[EnvironmentRef] = Field(
        default_factory=list, description="split chains: the export environments whose stored graph the case ran "
                                          "(their torch beside this runtime side's versions)")


class FailureSlice(BaseModel):
    """A signature's cases on one target in environments of one kind: what one row of it measured."""

    target: str | None = Field(description="saved_model | tflite | keras, '' on routes without one; null for "
                                           "environments that did not resolve")
    kind: EnvironmentKind
    count: int
    environments: int
    first_version: str | None = Field(description="lowest version of `package`; on a runtime side (no torch) the "
                                                  "export side's pin")
    last_version: str | None
    example: FailureExample


class FailureOut(BaseModel):
    """A failure signature: how often, where, and between which versions it was seen."""

    signature: str
    scope: Literal["case", "environment"] = Field(description="a failed case, or an environment that did not resolve")
    count: int
    environments: int
    models: list[str]
    routes: list[str]
    first_version: str | None = Field(description="lowest version of `package` where the signature was seen")
    last_version: str | None
    first_seen: Timestamp
    last_seen: Timestamp
    example: FailureExample
    targets: list[str] = Field(default_factory=list, description="every target the signature was seen on")
    kinds: list[EnvironmentKind] = Field(default_factory=list, description="every environment kind it was seen in")
    slices: list[FailureSlice] = Field(default_factory=list,
                                       description="one per (target, kind), most frequent first")


class FailuresOut(BaseModel):
    package: str
    route: str | None
    models: list[str]
    failures: list[FailureOut]
    target: str | None = Field(default=None, description="the target filter, if any")
    kind: EnvironmentKind | None = Field(default=None, description="the environment kind filter, if any")


class RunOut(BaseModel):
    id: str
    spec_name: str
    spec_hash: str
    runner_version: str
    corpus_version: str
    host: str
    cutoff: str | None
    started_at: Timestamp
    finished_at: Timestamp | None
    status: str
    counts: dict[str, Any]
    cases: dict[str, int] = Field(description="recorded cases of this run by status")


class RunsOut(BaseModel):
    runs: list[RunOut]
    total: int
    limit: int
    offset: int


class RunEnvironment(BaseModel):
    id: int
    name: str
    python: str
    status: str
    signature: str | None
    cases: dict[str, int]


class RunDetailOut(RunOut):
    environments: list[RunEnvironment]


class StepOut(BaseModel):
    ordinal: int
    name: str
    status: str
    seconds: float | None
    peak_rss: int | None
    error_type: str | None
    message: str | None
    signature: str | None
    max_abs_diff: float | None
    details: dict[str, Any]


class CaseOut(BaseModel):
    id: int
    run_id: str
    model: str
    route: str
    exporter: str
    opset: int
    opset_emitted: int | None
    status: str
    signature: str | None
    max_abs_diff: float | None
    recorded_at: Timestamp
    steps: list[StepOut]
    target: str = Field(default="", description="saved_model | tflite | keras on TF routes, '' elsewhere")
    artifact_id: int | None = Field(default=None, description="split chains: the stored graph it stored or ran")


class PackageOut(BaseModel):
    name: str
    version: str


class EnvironmentOut(BaseModel):
    """An environment with its resolved packages and every recorded case and step."""

    id: int
    hash: str
    name: str
    python: str
    python_full: str | None
    requirements: list[str]
    excludes: list[str]
    index_url: str
    cutoff: str | None
    status: str
    error: str | None
    signature: str | None
    lock_hash: str | None
    resolved_at: Timestamp
    packages: list[PackageOut]
    cases: list[CaseOut]
    lockfiles: dict[str, str] = Field(description="format → URL of this environment's lockfile; empty if unresolved")
    kind: EnvironmentKind = "joint"


# -- explanations and verdicts (GET /chains' additive fields, POST /check) -----------------------------------------

Verdict = Literal["known-good", "known-bad", "untested"]


class FailedCase(BaseModel):
    model: str
    exporter: str
    step: str | None = Field(description="the first step that was not ok")
    signature: str | None


class NearMiss(BaseModel):
    """A measured environment where some requested model did not pass: the closest the data came to a chain."""

    environment_id: int
    name: str
    python: str
    versions: dict[str, str]
    passed: list[str] = Field(description="requested models that passed here")
    failed: list[FailedCase]


class MeasuredCounts(BaseModel):
    """How many environments the data holds for a query, so that an empty answer says why it is empty."""

    measured: int = Field(description="environments with recorded cases of the requested models on the route")
    resolved_only: int = Field(description="resolved for the route, but no case of these models was run there")
    unresolvable: int = Field(description="asked for the route's packages but could not be resolved or installed")


class PinDiff(BaseModel):
    package: str = Field(description="a package name, or 'python'")
    yours: str | None = Field(description="what the file pins; null if it does not pin the package")
    measured: str | None = Field(description="what the environment has; null if it does not have the package")


class Fix(BaseModel):
    """The smallest change that makes the pins a known-good chain: fewest packages, then least version distance."""

    environment_id: int
    environment: str
    python: str
    run_id: str | None
    changes: list[PinDiff] = Field(description="empty: the pins already are this chain")
    summary: str = Field(description="e.g. 'onnx2tf 1.28.8 → 1.26.9', or 'no change'")


class SignatureSeen(BaseModel):
    """Where a failure signature was seen on the route: when, in how many environments, between which versions."""

    environments: int
    first_seen: Timestamp
    last_seen: Timestamp
    versions: dict[str, list[str]] = Field(description="package → [lowest, highest] version it was seen with")


class Nearby(BaseModel):
    environment_id: int
    environment: str
    python: str
    status: Literal["pass", "fail"]
    signature: str | None
    differs: list[PinDiff]


class ModelVerdict(BaseModel):
    model: str
    route: str
    exporter: str | None = Field(description="the exporter of the evidence (or as asked, when untested)")
    verdict: Verdict
    environment_id: int | None = Field(description="the evidence: where the pins passed (good) or failed (bad); "
                                       "of a split chain, its production (runtime) side")
    environment: str | None
    run_id: str | None
    kind: Literal["joint", "split"] = Field(default="joint", description="the evidence: one environment, or an "
                                            "export environment's graph run in a runtime environment")
    research_environment_id: int | None = Field(default=None, description="split: the export side")
    step: str | None = Field(default=None, description="known-bad: the step that failed")
    signature: str | None = None
    message: str | None = None
    seen: SignatureSeen | None = None
    matched: dict[str, int] = Field(description="environments matching the pins, by outcome: passed, failed")
    nearest: list[Nearby] = Field(description="untested: the closest measured environments and the pins that differ")
    fix: Fix | None = Field(description="the smallest change to an environment where the model passed")


class CheckOut(BaseModel):
    """The verdict on one lockfile, per model and route."""

    file: str
    format: str
    python: str | None = Field(description="the python the file is for (or --python); null if unknown")
    pins: dict[str, str] = Field(description="the packages that matter, as the file pins them")
    models: list[str]
    routes: list[str]
    exporter: str | None
    verdict: Verdict = Field(description="the worst of the results: known-bad, then untested, then known-good")
    results: list[ModelVerdict]
    fixes: dict[str, Fix | None] = Field(description="route → the smallest change to a chain passing every model")
