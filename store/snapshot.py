"""Snapshots: runs, environments with locks, cases and steps as one portable, versioned JSON document.

Rows are keyed by natural keys, never by database ids: a run by its uuid, an environment by
(request hash, lock hash), a case by its identity (environment, model, route, exporter, opset, model hash,
runner version). The same document is the body of `POST /api/v1/runs`.

Version 2 (what export writes) stores each lock as indices into one table of distinct lock blocks, since the
same pinned package recurs across environments, and leaves out packages where the lock says them. Version 1
(a `lock_text` and `packages` per environment) is still read. Either way a validated Snapshot is expanded:
every environment has its `lock_text` and `packages`, and `encode` makes the compact form again.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import Insert, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from store import outcomes, relabel
from store.db import as_utc
from store.errors import KnowngoodError
from store.locks import parse_lock
from store.models import Artifact, Case, Environment, Package, Run, Step

FORMAT: Final = "knowngood-snapshot"
FORMAT_VERSION: Final = 3  # what export writes (3: environment kinds and artifacts of split chains)
READS = (1, 2, 3)

# The step statuses the runner writes (runner.results.StepStatus); a case is `pass` or its first non-ok status.
StepStatus = Literal["ok", "fail", "error", "timeout", "crash", "oom", "skip"]
CaseStatus = Literal["pass", "fail", "error", "timeout", "crash", "oom", "skip"]
RunStatus = Literal["running", "finished", "interrupted"]  # interrupted: killed, marked by a later run
# Routes whose one case measured the converter's in-memory model before targets existed (issue 11): a document
# that names no target for them means `keras`, as migration 0005 labels the rows it finds.
PRE_TARGET_ROUTES = ("onnx2tf", "onnx-tf", "nobuco")


class SnapshotError(KnowngoodError, ValueError):
    """A document that cannot be imported; the message names the first bad path."""

    exit_code = 2


# What both databases store and hand back unchanged, checked here so that SQLite and PostgreSQL refuse the same
# documents with the same 422 instead of one of them failing with a 500 (issue 15).
EARLIEST: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST: Final = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)  # a year short of datetime.max: room for any time zone


def _timestamp(value: dt.datetime) -> dt.datetime:
    try:
        utc = as_utc(value)
    except OverflowError:  # e.g. 0001-01-01T00:00+09:00 is in year 0 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"expected a time between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC), got "
                         f"{value.isoformat()}")
    return utc


# Aware and in UTC from here on: an offset is converted once, never dropped.
Timestamp = Annotated[dt.datetime, AfterValidator(_timestamp)]
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]  # INTEGER columns
Bytes64 = Annotated[int, Field(ge=0, le=2**63 - 1)]  # BIGINT columns holding byte counts


def _not_nan(value: float) -> float:
    # SQLite stores NaN as NULL, PostgreSQL as NaN. Infinity both keep, and the runner records it (parity where
    # one side is not finite), so it stays.
    if math.isnan(value):
        raise ValueError("expected a number or infinity, got NaN")
    return value


Measured = Annotated[float, AfterValidator(_not_nan)]  # FLOAT columns
# JSON columns: PostgreSQL's json type takes neither NaN nor Infinity (they are not JSON), SQLite takes both.
JSON_FIELDS = frozenset({"details", "memory", "counts"})


def _index_url(value: str) -> str:
    # Served back in lockfiles (a comment line, pyproject's [tool.uv] index): one http(s) URL, nothing that could
    # start a line of its own.
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise ValueError(f"expected an http(s) index URL without spaces, got {value!r}")
    return value


def _unstorable(data: Any) -> str | None:
    """The path and reason of the first value the databases would not both keep as it is: a NUL anywhere (no
    PostgreSQL text holds one), a NaN or infinity inside a JSON column."""
    found = _first_unstorable(data)
    if found is None:
        return None
    path = ""
    for part in reversed(found[0]):
        path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}" if path else str(part)
    return f"{path}: {found[1]}"


def _first_unstorable(value: Any, in_json: bool = False) -> tuple[list[str | int], str] | None:
    """_unstorable's walk: (the path to the value, innermost first; the reason). The path is gathered on the way
    back from the value, not built for every value passed: that cost a snapshot's import a second and a half."""
    if isinstance(value, str):
        return ([], "must not contain a NUL character") if "\x00" in value else None
    if isinstance(value, float) and in_json:
        return None if math.isfinite(value) else ([], f"expected a finite number, got {value}")
    found: tuple[list[str | int], str] | None = None
    if isinstance(value, dict):
        for key, item in value.items():
            if found := _first_unstorable(key) or _first_unstorable(item, in_json or key in JSON_FIELDS):
                found[0].append(str(key))
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _first_unstorable(item, in_json):
                found[0].append(i)
                return found
    return None


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvironmentKey(_Doc):
    hash: str = Field(min_length=1, max_length=64, description="sha256 of the environment request")
    lock_hash: str | None = Field(max_length=64, description="sha256 of the resolved set; null if unresolved")


class StepDoc(_Doc):
    ordinal: int = Field(ge=0, le=2**31 - 1)
    name: str = Field(min_length=1, max_length=32)
    status: StepStatus
    seconds: Measured | None = None
    peak_rss: Bytes64 | None = None
    error_type: str | None = Field(default=None, max_length=200)
    message: str | None = None
    signature: str | None = Field(default=None, max_length=300)
    max_abs_diff: Measured | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class CaseDoc(_Doc):
    run: str = Field(description="id of the run that recorded the case")
    environment: EnvironmentKey
    model: str = Field(min_length=1, max_length=200)
    route: str = Field(min_length=1, max_length=64)
    exporter: str = Field(min_length=1, max_length=64)
    opset: Int32
    target: str | None = Field(default=None, max_length=32,
                               description="saved_model | tflite | keras; omitted: keras on TF routes, else empty")
    opset_emitted: Int32 | None = None
    model_hash: str = Field(max_length=64)
    corpus_version: str = Field(max_length=64)
    runner_version: str = Field(max_length=64)
    status: CaseStatus
    signature: str | None = Field(default=None, max_length=300)
    max_abs_diff: Measured | None = None
    recorded_at: Timestamp
    artifact: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="v3, split chains: the graph key an export case stored or a runtime case "
                                 "started from (one of the document's artifacts)")
    steps: list[StepDoc] = Field(default_factory=list)

    @property
    def target_or_default(self) -> str:
        if self.target is not None:
            return self.target
        return "keras" if self.route in PRE_TARGET_ROUTES else ""

    def identity(self) -> tuple[str, str | None, str, str, str, int, str, str, str, str]:
        return (self.environment.hash, self.environment.lock_hash, self.model, self.route, self.exporter,
                self.opset, self.model_hash, self.runner_version, self.target_or_default, self.artifact or "")


class PackageDoc(_Doc):
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=100)
    hashes: list[str] = Field(default_factory=list)


class EnvironmentDoc(_Doc):
    hash: str = Field(min_length=1, max_length=64)
    lock_hash: str | None = Field(max_length=64)
    name: str = Field(min_length=1, max_length=300)
    python: str = Field(min_length=1, max_length=16)
    python_full: str | None = Field(default=None, max_length=32)
    requirements: list[str]
    excludes: list[str] = Field(default_factory=list)
    index_url: Annotated[str, Field(max_length=500), AfterValidator(_index_url)]
    cutoff: str | None = Field(default=None, max_length=40)
    status: str = Field(min_length=1, max_length=24)
    lock: list[int] | None = Field(default=None, description="v2: the lock text as indices into lock_blocks")
    lock_text: str | None = None
    error: str | None = None
    signature: str | None = Field(default=None, max_length=300)
    resolved_at: Timestamp
    memory: dict[str, Any] = Field(default_factory=dict)
    overrides: list[str] = Field(default_factory=list, description="uv --overrides the lock was resolved with")
    kind: Literal["joint", "export", "runtime"] = Field(default="joint", description="v3; joint before split chains")
    options: dict[str, Any] = Field(default_factory=dict, description="converter options that are a spec axis")
    packages: list[PackageDoc] | None = Field(
        default=None, description="v2: omitted means the lock's pins; v1: omitted means none")

    def key(self) -> tuple[str, str | None]:
        return (self.hash, self.lock_hash)


class ArtifactDoc(_Doc):
    """v3: an exported graph of split chains, by its normalised graph hash (the files stay where they were made)."""

    key: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=200)
    opset_emitted: Int32 | None = None
    ir_version: Int32 | None = None


class RunDoc(_Doc):
    id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    spec_name: str = Field(min_length=1, max_length=200)
    spec_hash: str = Field(max_length=64)
    runner_version: str = Field(max_length=64)
    corpus_version: str = Field(max_length=64)
    host: str = Field(max_length=200)
    cutoff: str | None = Field(default=None, max_length=40)
    started_at: Timestamp
    finished_at: Timestamp | None = None
    status: RunStatus
    counts: dict[str, Any] = Field(default_factory=dict)


class Snapshot(_Doc):
    """The whole document. Every case must name a run and an environment present in the same document."""

    format: Literal["knowngood-snapshot"] = FORMAT
    format_version: Literal[1, 2, 3] = 1  # documents from before versions were numbered are version 1
    exported_at: Timestamp | None = None
    runs: list[RunDoc] = Field(default_factory=list)
    lock_blocks: list[str] = Field(default_factory=list, description="v2: distinct lock blocks, see split_lock")
    environments: list[EnvironmentDoc] = Field(default_factory=list)
    artifacts: list[ArtifactDoc] = Field(default_factory=list, description="v3: the graphs split-chain cases name")
    cases: list[CaseDoc] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # One walk over the raw document, before the fields: the message names the path of the offending value.
        found = _unstorable(data)
        if found:
            raise ValueError(found)
        return data

    @field_validator("format_version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> Any:
        if value not in READS:
            raise ValueError(_unknown_version(value))
        return value

    @model_validator(mode="after")
    def _check(self) -> Snapshot:
        self._expand()
        self._references()
        return self

    def _expand(self) -> None:
        """Give every environment its lock_text and packages; the one place v1 and v2 differ."""
        if self.format_version == 1 and self.lock_blocks:
            raise ValueError("lock_blocks: needs format_version 2")
        for i, env in enumerate(self.environments):
            if env.lock is not None:
                if self.format_version == 1:
                    raise ValueError(f"environments[{i}].lock: needs format_version 2")
                if env.lock_text is not None:
                    raise ValueError(f"environments[{i}]: give lock or lock_text, not both")
                for j, block in enumerate(env.lock):
                    if not 0 <= block < len(self.lock_blocks):
                        raise ValueError(f"environments[{i}].lock[{j}]: block {block} is not in lock_blocks "
                                         f"({len(self.lock_blocks)} blocks)")
                env.lock_text = "".join(self.lock_blocks[b] for b in env.lock)
                env.lock = None
            if env.packages is None:
                env.packages = [] if self.format_version == 1 else lock_packages(env.lock_text)
        self.lock_blocks = []  # consumed: an expanded document does not refer to it

    def _references(self) -> None:
        runs: set[str] = set()
        for i, run in enumerate(self.runs):
            if run.id in runs:
                raise ValueError(f"runs[{i}].id: run {run.id} appears twice")
            runs.add(run.id)
        envs: set[tuple[str, str | None]] = set()
        for i, env in enumerate(self.environments):
            if env.key() in envs:
                raise ValueError(f"environments[{i}]: environment {env.key()} appears twice")
            envs.add(env.key())
            names = [p.name for p in env.packages or ()]
            if len(set(names)) != len(names):
                raise ValueError(f"environments[{i}].packages: a package appears twice")
        if self.format_version < 3 and (self.artifacts or any(e.kind != "joint" for e in self.environments)
                                        or any(c.artifact for c in self.cases)):
            raise ValueError("artifacts, environment kinds and case artifacts need format_version 3")
        artifacts = {a.key for a in self.artifacts}
        if len(artifacts) != len(self.artifacts):
            raise ValueError("artifacts: an artifact key appears twice")
        cases: set[tuple[Any, ...]] = set()
        for i, case in enumerate(self.cases):
            if case.artifact is not None and case.artifact not in artifacts:
                raise ValueError(f"cases[{i}].artifact: {case.artifact} is not in this document's artifacts")
            if case.run not in runs:
                raise ValueError(f"cases[{i}].run: run {case.run} is not in this document's runs")
            if (case.environment.hash, case.environment.lock_hash) not in envs:
                raise ValueError(f"cases[{i}].environment: {case.environment.model_dump()} is not in this "
                                 "document's environments")
            if case.identity() in cases:
                raise ValueError(f"cases[{i}]: the same case identity appears twice")
            cases.add(case.identity())
            ordinals = [s.ordinal for s in case.steps]
            if len(set(ordinals)) != len(ordinals):
                raise ValueError(f"cases[{i}].steps: a step ordinal appears twice")


_LINE = re.compile(r"[^\n]*\n|[^\n]+")  # split at \n only, so a stray \r or \f stays inside its line


def split_lock(text: str) -> list[str]:
    """A lock text as blocks: a line that does not start with whitespace plus the lines after it that do.

    `"".join(split_lock(text)) == text`, line endings included; a leading comment line is a block of its own.
    """
    blocks: list[str] = []
    for line in _LINE.findall(text):
        if blocks and line[:1].isspace():
            blocks[-1] += line
        else:
            blocks.append(line)
    return blocks


def lock_packages(lock_text: str | None) -> list[PackageDoc]:
    """The packages of a lock, exactly as the runner stores them (runner.record)."""
    if lock_text is None:
        return []
    return [PackageDoc(name=p.name, version=p.version, hashes=list(p.hashes)) for p in parse_lock(lock_text)]


def _unknown_version(value: Any) -> str:
    known = ", ".join(map(str, READS[:-1])) + f" and {READS[-1]}"
    return f"this knowngood reads versions {known}, got {value!r}"


def describe(exc: ValidationError) -> str:
    """The first error of a validation failure as `path: message`, e.g. `cases[3].steps[0].status: …`."""
    err = exc.errors()[0]
    path = ""
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    msg = err["msg"].removeprefix("Value error, ")
    if not path:  # a document-level check already names its path
        return msg
    return f"{path}: {msg}"


def parse(data: Any) -> Snapshot:
    """Validate a decoded document; raise SnapshotError naming the first bad path."""
    # Checked first: an unknown version's other differences would otherwise be reported instead.
    if isinstance(data, dict) and data.get("format") == FORMAT and data.get("format_version", 1) not in READS:
        raise SnapshotError(f"format_version: {_unknown_version(data.get('format_version'))}")
    try:
        return Snapshot.model_validate(data)
    except ValidationError as exc:
        raise SnapshotError(describe(exc)) from None


# --- export -----------------------------------------------------------------------------------------------


def build(session: Session, run_ids: list[str] | None = None) -> Snapshot:
    """The document for every run, or only for `run_ids` (their cases and the environments those use)."""
    run_query = select(Run).order_by(Run.started_at, Run.id)
    if run_ids is not None:
        run_query = run_query.where(Run.id.in_(run_ids))
    runs = list(session.scalars(run_query))
    if run_ids is not None:
        missing = set(run_ids) - {r.id for r in runs}
        if missing:
            raise SnapshotError(f"no such run: {', '.join(sorted(missing))}")
    case_query = select(Case).options(selectinload(Case.steps))
    if run_ids is not None:
        case_query = case_query.where(Case.run_id.in_(run_ids))
    cases = list(session.scalars(case_query))
    env_query = select(Environment).options(selectinload(Environment.packages))
    if run_ids is not None:
        used = {c.environment_id for c in cases}
        # Unresolved environments have no cases; they belong to the run that was going when they resolved.
        windows = [(r.started_at, r.finished_at) for r in runs]
        envs = [e for e in session.scalars(env_query)
                if e.id in used or (not e.cases and any(_within(e.resolved_at, w) for w in windows))]
    else:
        envs = list(session.scalars(env_query))
    env_key = {e.id: (e.hash, e.lock_hash) for e in envs}
    artifact_ids = {c.artifact_id for c in cases if c.artifact_id is not None}
    artifacts = {a.id: a for a in session.scalars(select(Artifact).where(Artifact.id.in_(artifact_ids)))}
    # The status columns are plain strings; cast only narrows their type, the docs' Literal fields validate them.
    doc = Snapshot(
        format_version=FORMAT_VERSION,
        exported_at=dt.datetime.now(dt.UTC),
        runs=[RunDoc(id=r.id, spec_name=r.spec_name, spec_hash=r.spec_hash, runner_version=r.runner_version,
                     corpus_version=r.corpus_version, host=r.host, cutoff=r.cutoff,
                     started_at=as_utc(r.started_at),
                     finished_at=None if r.finished_at is None else as_utc(r.finished_at),
                     status=cast(RunStatus, r.status), counts=r.counts or {}) for r in runs],
        environments=sorted(
            (EnvironmentDoc(
                hash=e.hash, lock_hash=e.lock_hash, name=e.name, python=e.python, python_full=e.python_full,
                requirements=list(e.requirements), excludes=list(e.excludes or []), index_url=e.index_url,
                cutoff=e.cutoff, status=e.status, lock_text=e.lock_text, error=e.error, signature=e.signature,
                resolved_at=as_utc(e.resolved_at), memory=e.memory or {},
                overrides=list(e.overrides or []), options=dict(e.options or {}),
                kind=cast(Literal["joint", "export", "runtime"], e.kind),
                packages=[PackageDoc(name=p.name, version=p.version, hashes=list(p.hashes or []))
                          for p in sorted(e.packages, key=lambda p: p.name)],
            ) for e in envs),
            key=lambda d: (d.hash, d.lock_hash or ""),
        ),
        artifacts=sorted((ArtifactDoc(key=a.key, model=a.model, opset_emitted=a.opset_emitted,
                                      ir_version=a.ir_version) for a in artifacts.values()), key=lambda d: d.key),
        cases=sorted(
            (CaseDoc(
                run=c.run_id, environment=EnvironmentKey(hash=env_key[c.environment_id][0],
                                                         lock_hash=env_key[c.environment_id][1]),
                model=c.model, route=c.route, exporter=c.exporter, opset=c.opset, opset_emitted=c.opset_emitted,
                target=c.target or None,
                model_hash=c.model_hash, corpus_version=c.corpus_version, runner_version=c.runner_version,
                status=cast(CaseStatus, c.status), signature=c.signature, max_abs_diff=c.max_abs_diff,
                recorded_at=as_utc(c.recorded_at),
                artifact=artifacts[c.artifact_id].key if c.artifact_id is not None else None,
                steps=[StepDoc(ordinal=s.ordinal, name=s.name, status=cast(StepStatus, s.status), seconds=s.seconds,
                               peak_rss=s.peak_rss, error_type=s.error_type, message=s.message,
                               signature=s.signature, max_abs_diff=s.max_abs_diff, details=s.details or {})
                       for s in sorted(c.steps, key=lambda s: s.ordinal)],
            ) for c in cases),
            key=lambda d: tuple("" if x is None else str(x) for x in d.identity()),
        ),
    )
    return doc


def _within(when: dt.datetime, window: tuple[dt.datetime, dt.datetime | None]) -> bool:
    start, end = as_utc(window[0]), None if window[1] is None else as_utc(window[1])
    at = as_utc(when)
    return start <= at and (end is None or at <= end)


def encode(doc: Snapshot) -> dict[str, Any]:
    """The version 2 form of a validated document: locks as indices into a table of distinct blocks (in
    first-seen order), packages only where they are not exactly the lock's."""
    blocks: dict[str, int] = {}
    environments = []
    for env in doc.environments:
        # Written only where set, so that documents of environments without them read as before.
        unset = _unset(env, "overrides", "options")
        out = env.model_dump(mode="json", exclude={"lock", "lock_text", "packages", *unset})
        if env.lock_text is not None:
            out["lock"] = [blocks.setdefault(block, len(blocks)) for block in split_lock(env.lock_text)]
        if env.packages != lock_packages(env.lock_text):  # e.g. ingested from elsewhere: keep them as they are
            out["packages"] = [p.model_dump(mode="json") for p in env.packages or ()]
        environments.append(out)
    data = doc.model_dump(mode="json", exclude={"lock_blocks", "environments", "cases"})
    return {**data, "format_version": FORMAT_VERSION, "lock_blocks": list(blocks), "environments": environments,
            "cases": [c.model_dump(mode="json", exclude=_unset(c, "target")) for c in doc.cases]}


def _unset(doc: BaseModel, *names: str) -> set[str]:
    return {n for n in names if not getattr(doc, n)}


def dumps(doc: Snapshot, *, indent: int | None = None) -> str:
    return json.dumps(encode(doc), indent=indent, ensure_ascii=False) + "\n"


def write(doc: Snapshot, path: str | Path) -> None:
    """JSON, gzip-compressed when the name ends in .gz (with a fixed mtime, so equal documents are equal files)."""
    path = Path(path)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
            fh.write(dumps(doc).encode())
    else:
        path.write_text(dumps(doc, indent=1), encoding="utf-8")


def export(session: Session, path: str | Path, run_ids: list[str] | None = None) -> Snapshot:
    """Write the runs (all, or `run_ids`) to `path`; returns the document written."""
    doc = build(session, run_ids)
    write(doc, path)
    return doc


def read(path: str | Path) -> Snapshot:
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        data = json.loads(raw)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such file") from None
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: not a JSON document: {exc}") from None
    try:
        return parse(data)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from None


# --- import -----------------------------------------------------------------------------------------------


@dataclass
class Imported:
    """What an import stored; all zeros on a repeated import."""

    runs: list[str] = field(default_factory=list)
    runs_added: int = 0
    runs_finished: int = 0
    environments_added: int = 0
    cases_added: int = 0
    cases_existing: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.runs_added or self.runs_finished or self.environments_added or self.cases_added)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "runs_added": self.runs_added, "runs_finished": self.runs_finished,
                "environments_added": self.environments_added, "cases_added": self.cases_added,
                "cases_existing": self.cases_existing}


def store(session: Session, doc: Snapshot) -> Imported:
    """Store a validated document in one transaction; rows already present are left as they are.

    A run stored as `running` is completed by a document that has it `finished` (a remote runner may
    post while it runs and again at the end). Everything else is insert-if-missing on natural keys.
    Runs and environments are insert-or-fetch (ON CONFLICT DO NOTHING, then read the winner's row), so
    concurrent ingests of one document agree on them; a concurrent writer of the same cases makes an attempt
    fail on a unique key, and the retry finds them.
    """
    for attempt in range(3):
        try:
            return _store(session, doc)
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _insert(session: Session, model: type[Run] | type[Environment] | type[Package] | type[Artifact]) -> Insert:
    """INSERT … ON CONFLICT DO NOTHING in the session's dialect (both spell it the same way)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    return sqlite.insert(model).on_conflict_do_nothing()


def _find_environment(session: Session, key: tuple[str, str | None]) -> int | None:
    env_hash, lock_hash = key
    query = select(Environment.id).where(Environment.hash == env_hash)
    query = query.where(Environment.lock_hash == lock_hash if lock_hash is not None
                        else Environment.lock_hash.is_(None))
    return session.scalars(query.order_by(Environment.id).limit(1)).first()


def _find_row_id(session: Session, key: tuple[str, str | None]) -> int:
    found = _find_environment(session, key)
    if found is None:
        raise IntegrityError("environment", key, Exception("vanished after a conflicting insert"))
    return found


def _environment(session: Session, e: EnvironmentDoc) -> tuple[int, bool]:
    """The row id for `e`'s natural key, inserted if missing; True if this call inserted it."""
    found = _find_environment(session, e.key())
    if found is not None:
        return found, False
    fields = e.model_dump(exclude={"lock", "packages"})
    # On PostgreSQL a concurrent insert of the same key makes this wait for that transaction, then do nothing.
    env_id = session.execute(_insert(session, Environment).values(**fields).returning(Environment.id)).scalar()
    if env_id is None:  # the concurrent writer's row, now committed
        return _find_row_id(session, e.key()), False
    if e.packages:
        session.connection().execute(_insert(session, Package),  # a Connection's: no ORM bulk path
                                     [{**p.model_dump(), "environment_id": env_id} for p in e.packages])
    return env_id, True


def _artifact(session: Session, a: ArtifactDoc) -> int:
    """The row id of an artifact key, inserted if missing (on PostgreSQL a concurrent insert waits, then skips)."""
    found = session.scalar(select(Artifact.id).where(Artifact.key == a.key))
    if found is not None:
        return found
    added = session.execute(_insert(session, Artifact).values(**a.model_dump()).returning(Artifact.id)).scalar()
    return added if added is not None else session.scalars(select(Artifact.id).where(Artifact.key == a.key)).one()


def _store(session: Session, doc: Snapshot) -> Imported:
    out = Imported(runs=[r.id for r in doc.runs])
    try:
        for r in doc.runs:
            added = session.execute(_insert(session, Run).values(**r.model_dump()).returning(Run.id)).scalar()
            if added is not None:
                out.runs_added += 1
                continue
            row = session.get_one(Run, r.id)
            if row.status != "finished" and r.status == "finished":
                row.status, row.finished_at, row.counts = r.status, r.finished_at, r.counts
                out.runs_finished += 1
        env_ids: dict[tuple[str, str | None], int] = {}
        for e in doc.environments:
            env_ids[e.key()], env_added = _environment(session, e)
            out.environments_added += env_added
        session.flush()
        artifact_ids = {a.key: _artifact(session, a) for a in doc.artifacts}
        known: dict[int, set[tuple[Any, ...]]] = {}
        touched: set[int] = set()
        new_cases: list[tuple[dict[str, Any], list[StepDoc]]] = []
        for c in doc.cases:
            env_id = env_ids[(c.environment.hash, c.environment.lock_hash)]
            if env_id not in known:
                known[env_id] = {tuple(r) for r in session.execute(
                    select(Case.model, Case.route, Case.exporter, Case.opset, Case.model_hash, Case.runner_version,
                           Case.target, Artifact.key).outerjoin(Artifact, Artifact.id == Case.artifact_id)
                    .where(Case.environment_id == env_id))}
            model = relabel.model_name(c.model, c.model_hash)  # a renamed model's rows go by its new name
            key = (model, c.route, c.exporter, c.opset, c.model_hash, c.runner_version, c.target_or_default,
                   c.artifact)
            if key in known[env_id]:
                out.cases_existing += 1
                continue
            known[env_id].add(key)
            fields = {**c.model_dump(exclude={"run", "environment", "steps", "artifact"}), "model": model,
                      "target": c.target_or_default, "run_id": c.run, "environment_id": env_id,
                      "artifact_id": artifact_ids[c.artifact] if c.artifact is not None else None}
            new_cases.append((fields, c.steps))
            out.cases_added += 1
            if fields["artifact_id"] is None:
                touched.add(env_id)
            if len(new_cases) == _BATCH:
                _insert_cases(session, new_cases)
        _insert_cases(session, new_cases)
        outcomes.refresh(session, touched)  # the readers' summary of joint results (issue 14), in this transaction
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return out


# Cases inserted per statement (with their steps in the next): a case and its steps built as ORM objects and flushed
# through the unit of work took a 10,000-case snapshot's import half a minute, the first `knowngood check` or
# `serve` of a new user included.
_BATCH = 2000


def _insert_cases(session: Session, cases: list[tuple[dict[str, Any], list[StepDoc]]]) -> None:
    """Insert `cases` (columns, steps) in bulk, their steps under the ids the database gave them; empties the list."""
    if not cases:
        return
    # On the session's Connection, not the Session: the ORM's bulk path fetched and spliced its rows one at a time.
    conn = session.connection()
    ids = conn.execute(insert(Case).returning(Case.id, sort_by_parameter_order=True),
                       [fields for fields, _ in cases]).scalars().all()
    steps = [{**s.model_dump(), "case_id": case_id} for case_id, (_, docs) in zip(ids, cases, strict=True)
             for s in docs]
    if steps:
        conn.execute(insert(Step), steps)
    cases.clear()


def import_(session: Session, path: str | Path) -> Imported:
    """Read, validate and store a snapshot file; a bad document stores nothing."""
    return store(session, read(path))
