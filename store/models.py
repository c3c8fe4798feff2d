"""Tables, named after the vocabulary: Run, Environment, Package, Case, Step; Outcome, OutcomeAny derive from Case."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from store.db import Base, utcnow

intpk = Annotated[int, mapped_column(primary_key=True)]
name64 = Annotated[str, mapped_column(String(64))]
name200 = Annotated[str, mapped_column(String(200))]
created = Annotated[dt.datetime, mapped_column(default=utcnow)]


class Run(Base):
    """One invocation of the runner over a spec."""

    __tablename__ = "run"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, comment="uuid4, stable across ingest")
    spec_name: Mapped[name200]
    spec_hash: Mapped[name64]
    runner_version: Mapped[name64]
    corpus_version: Mapped[name64]
    host: Mapped[name200]
    cutoff: Mapped[str | None] = mapped_column(String(40), comment="uv --exclude-newer for every resolution")
    started_at: Mapped[created]
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running", comment="running | finished")
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)

    cases: Mapped[list[Case]] = relationship(back_populates="run")


class Environment(Base):
    """A python version plus top-level requirements, resolved by uv into a pinned package set."""

    __tablename__ = "environment"
    __table_args__ = (
        UniqueConstraint("hash", "lock_hash"),
        # The constraint above lets any number of (hash, NULL) rows through: NULLs are distinct in a unique key on
        # both databases. This partial index makes an unresolved environment's natural key hold too, including
        # against concurrent ingests (PostgreSQL 15's NULLS NOT DISTINCT would cover only one backend).
        Index("uq_environment_unresolved_hash", "hash", unique=True,
              sqlite_where=text("lock_hash IS NULL"), postgresql_where=text("lock_hash IS NULL")),
    )

    id: Mapped[intpk]
    hash: Mapped[str] = mapped_column(String(64), index=True, comment="sha256 of the request")
    name: Mapped[str] = mapped_column(String(300), comment="readable id, e.g. py3.11-torch2.0.1-onnx1.14.0")
    python: Mapped[str] = mapped_column(String(16))
    python_full: Mapped[str | None] = mapped_column(String(32))
    requirements: Mapped[list[str]]
    excludes: Mapped[list[str]] = mapped_column(default=list)
    index_url: Mapped[str] = mapped_column(String(500))
    cutoff: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(
        String(24), comment="resolved | conflict | no-interpreter | install-failed | installed | worker-lost"
    )
    kind: Mapped[str] = mapped_column(
        String(16), default="joint", server_default="joint",
        comment="joint (torch and the runtime side in one) | export (torch: makes artifacts) | runtime (no torch)",
    )
    lock_hash: Mapped[str | None] = mapped_column(String(64), index=True, comment="sha256 of the resolved set")
    lock_text: Mapped[str | None] = mapped_column(Text, comment="uv pip compile output, hashes included")
    error: Mapped[str | None] = mapped_column(Text)
    signature: Mapped[str | None] = mapped_column(String(300))
    resolved_at: Mapped[created]
    memory: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="import RSS figures in bytes")
    overrides: Mapped[list[str]] = mapped_column(
        default=list, server_default="[]", comment="uv --overrides the lock was resolved with (relaxed declared pins)"
    )
    options: Mapped[dict[str, Any]] = mapped_column(
        default=dict, server_default="{}", comment="converter options that are a spec axis, e.g. onnx2tf-backend"
    )

    packages: Mapped[list[Package]] = relationship(
        back_populates="environment", cascade="all, delete-orphan", order_by="Package.name"
    )
    cases: Mapped[list[Case]] = relationship(back_populates="environment")


class Package(Base):
    """One pinned distribution of an environment's lock."""

    __tablename__ = "package"
    __table_args__ = (
        UniqueConstraint("environment_id", "name"),
        # Read side: the key versions (torch, tensorflow, …) of many environments at once, from the index alone.
        Index("ix_package_name_environment_id_version", "name", "environment_id", "version"),
    )

    id: Mapped[intpk]
    environment_id: Mapped[int] = mapped_column(ForeignKey("environment.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), index=True, comment="PEP 503 normalised")
    version: Mapped[str] = mapped_column(String(100))
    hashes: Mapped[list[str]] = mapped_column(default=list)

    environment: Mapped[Environment] = relationship(back_populates="packages")


class Case(Base):
    """One model through one route with one exporter, opset and target, in one environment."""

    __tablename__ = "case"
    __table_args__ = (
        UniqueConstraint(
            "environment_id", "model", "route", "exporter", "opset", "target", "model_hash", "runner_version",
            "artifact_id",
            name="uq_case_identity",
        ),
        Index("ix_case_model_route", "model", "route"),
        # Read side: where a signature was seen on a route (POST /check's known-bad span), from the index alone.
        Index("ix_case_signature_route", "signature", "route", "environment_id", "recorded_at"),
        # Read side (api/queries.py): chain completeness and matrix counts answered from the index alone.
        Index("ix_case_chain", "route", "model", "status", "environment_id", "exporter", "target"),
        Index("ix_case_run_id_status", "run_id", "status"),
    )

    id: Mapped[intpk]
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    environment_id: Mapped[int] = mapped_column(ForeignKey("environment.id", ondelete="CASCADE"))
    model: Mapped[name200]
    route: Mapped[name64]
    exporter: Mapped[name64]
    opset: Mapped[int] = mapped_column(comment="opset asked for")
    target: Mapped[str] = mapped_column(
        String(32), default="", server_default="",
        comment="what was deployed and checked: saved_model | tflite | keras on TF routes, empty elsewhere",
    )
    opset_emitted: Mapped[int | None] = mapped_column(comment="opset read back from the exported file")
    model_hash: Mapped[name64]
    corpus_version: Mapped[name64]
    runner_version: Mapped[name64]
    status: Mapped[str] = mapped_column(String(16), comment="pass, or the status of the first step that was not ok")
    signature: Mapped[str | None] = mapped_column(String(300))
    max_abs_diff: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[created]
    artifact_id: Mapped[int | None] = mapped_column(
        ForeignKey("artifact.id", ondelete="RESTRICT"), index=True,
        comment="split chains: the artifact an export case stored, or the one a runtime case started from",
    )

    run: Mapped[Run] = relationship(back_populates="cases")
    environment: Mapped[Environment] = relationship(back_populates="cases")
    steps: Mapped[list[Step]] = relationship(
        back_populates="case", cascade="all, delete-orphan", order_by="Step.ordinal"
    )


class Artifact(Base):
    """An exported graph stored by content: equal graphs from different torch releases are one artifact."""

    __tablename__ = "artifact"

    id: Mapped[intpk]
    key: Mapped[str] = mapped_column(
        String(64), unique=True, comment="sha256 of the graph without producer, doc strings and internal names"
    )
    model: Mapped[name200] = mapped_column(comment="the model of the first export that produced it")
    opset_emitted: Mapped[int | None]
    ir_version: Mapped[int | None]
    created_at: Mapped[created]


class Outcome(Base):
    """The current results of one joint environment for one model, route, exporter and target, summed over opsets.

    Derived from `case`, never written on its own: store/outcomes.py recomputes a key's row in the transaction
    that records or ingests its cases, and migration 0009 filled it from the cases then stored. /chains and
    POST /check read it instead of aggregating every case with its `current()` probe (issue 14). A key whose
    current cases were all skipped has no row: a skip is no evidence either way.
    """

    __tablename__ = "outcome"
    __table_args__ = (
        # The readers' one range per (route, model), every column in the index: rows are written in environment
        # order, so a (route, model) range read through the table would touch a block per row (issue 14).
        Index("ix_outcome_read", "route", "model", "environment_id", "exporter", "target", "passed",
              "pass_case_id", "fail_case_id"),
    )

    # Key order serves the writer, which recomputes whole environments (store/outcomes.py).
    environment_id: Mapped[int] = mapped_column(ForeignKey("environment.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    exporter: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    passed: Mapped[int] = mapped_column(comment="current passing cases (one per opset)")
    pass_case_id: Mapped[int | None] = mapped_column(comment="the newest (highest id) current passing case")
    fail_case_id: Mapped[int | None] = mapped_column(
        comment="the newest current case that failed (any status but pass and skip)")


class OutcomeAny(Base):
    """Outcome rows folded over exporters and targets: per joint environment, model and route, the newest current
    pass and the newest current failure of any exporter and target.

    What /chains and POST /check read when neither an exporter nor a target narrows the question, as most do: one
    row per environment and model where `outcome` holds one per exporter and target, a third to a ninth as many
    rows to aggregate (issue 14). Derived from `outcome` in the same transaction by store/outcomes.py, never
    written on its own; a key with no outcome row has none here either.
    """

    __tablename__ = "outcome_any"
    __table_args__ = (
        # As ix_outcome_read: the readers' one range per (route, model), every column in the index.
        Index("ix_outcome_any_read", "route", "model", "environment_id", "pass_case_id", "fail_case_id"),
    )

    environment_id: Mapped[int] = mapped_column(ForeignKey("environment.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    pass_case_id: Mapped[int | None] = mapped_column(comment="the newest current passing case of any exporter and "
                                                             "target")
    fail_case_id: Mapped[int | None] = mapped_column(comment="the newest current failed case of any exporter and "
                                                             "target")


class Step(Base):
    """One stage of a case with its status, time, memory and (on failure) signature."""

    __tablename__ = "step"
    __table_args__ = (UniqueConstraint("case_id", "ordinal"),)

    id: Mapped[intpk]
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int]
    name: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    seconds: Mapped[float | None] = mapped_column(Float)
    peak_rss: Mapped[int | None] = mapped_column(BigInteger, comment="bytes, high-water mark during the step")
    error_type: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    signature: Mapped[str | None] = mapped_column(String(300))
    max_abs_diff: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    case: Mapped[Case] = relationship(back_populates="steps")


class DataChange(Base):
    """One row counting committed changes to the tables above; the API's response cache polls it.

    Bumped by triggers (migration 0003), not by the code that writes: `db resignature`, a run being finished or
    any other in-place update or delete moves it too, whoever makes it. New rows alone were not enough.
    """

    __tablename__ = "data_change"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    counter: Mapped[int] = mapped_column(BigInteger, comment="incremented once per writing transaction (PostgreSQL) "
                                                             "or per changed row (SQLite)")


class QueueEntry(Base):
    """One environment of a queued run's plan (`knowngood run --queue`), claimed by one worker at a time.

    A claim is a lease: the worker renews `lease_until` while it works; a worker that dies stops renewing, and once
    the lease has passed another worker takes the environment again (recorded cases are skipped as on any rerun).
    After `queue_max_retakes` retakes of workers lost on it, the environment is recorded as `WorkerLost(N times)`
    and the entry is done (runner/queue.py `give_up`).
    """

    __tablename__ = "queue_entry"
    __table_args__ = (
        UniqueConstraint("run_id", "env_hash"),
        # The claim: the next open entry of a run's lowest open phase, in plan order.
        Index("ix_queue_entry_claim", "run_id", "done_at", "phase", "position"),
    )

    id: Mapped[intpk]
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    phase: Mapped[int] = mapped_column(
        comment="0: joint and export environments; 1: runtime environments, claimable once phase 0 is done"
    )
    position: Mapped[int] = mapped_column(comment="order in the plan; claimed lowest first")
    env_hash: Mapped[str] = mapped_column(String(64), comment="expand.Environment.hash of the payload")
    name: Mapped[str] = mapped_column(String(300), comment="readable environment id, for logs")
    payload: Mapped[dict[str, Any]] = mapped_column(
        comment="the planned environment and its cases (runtime side: its routes and export partners)"
    )
    worker: Mapped[str | None] = mapped_column(String(200), comment="host:pid:nonce of the last claimant")
    claimed_at: Mapped[dt.datetime | None]
    lease_until: Mapped[dt.datetime | None] = mapped_column(comment="database clock; past it anyone may claim")
    attempts: Mapped[int] = mapped_column(default=0, comment="claims so far; more than one means a retake")
    lost: Mapped[int] = mapped_column(
        default=0, server_default="0",
        comment="leases that passed with the entry neither finished nor given back: workers lost on it",
    )
    done_at: Mapped[dt.datetime | None]
