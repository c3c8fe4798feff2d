"""Run-to-run changes for the Atom feed: new failures and new passes per run, as `knowngood report` counts them.

A run records only what it did not find recorded, so what it saw is its spec's state: per cell (environment
request × model × route × exporter × opset) the newest case of a run of the same spec that started no later.
A run's changes are the cells whose state it moved from pass (or nothing) to failing, or from failing to pass.
api/changes.py compares two chosen runs the same way (for `knowngood report`), one run pair at a time; the feed
needs every run's changes at once, so it reads the cases in one pass instead (a test keeps the two in step).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.db import as_utc
from store.models import Case, Environment, Run

Cell = tuple[str, str, str, str, int, str, int | None]  # as api/changes.Cell: a case's identity
ATOM = "http://www.w3.org/2005/Atom"


@dataclass(frozen=True)
class CellChange:
    model: str
    route: str
    exporter: str
    opset: int
    environment: str
    signature: str | None


@dataclass
class RunChanges:
    run_id: str
    spec_name: str
    started_at: dt.datetime
    updated: dt.datetime
    new_failures: list[CellChange] = field(default_factory=list)
    new_passes: list[CellChange] = field(default_factory=list)


def run_changes(session: Session, limit: int = 20) -> list[RunChanges]:
    """The newest `limit` runs with what each changed, newest first; one pass over the cases in run order."""
    runs = {r.id: r for r in session.execute(select(Run.id, Run.spec_name, Run.started_at, Run.finished_at))}
    rows = session.execute(
        select(Case.run_id, Environment.hash, Environment.name, Case.model, Case.route, Case.exporter, Case.opset,
               Case.target, Case.artifact_id, Case.status, Case.signature)
        .join(Run, Run.id == Case.run_id).join(Environment, Environment.id == Case.environment_id)
        .order_by(Run.spec_name, Run.started_at, Run.id, Case.recorded_at, Case.id)
    )
    state: dict[str, dict[Cell, str]] = {}  # spec → cell → status, as of the run being read
    out: dict[str, RunChanges] = {}
    for run_id, env_hash, env_name, model, route, exporter, opset, target, artifact, status, signature in rows:
        run = runs[run_id]
        changes = out.get(run_id) or out.setdefault(run_id, RunChanges(
            run_id, run.spec_name, run.started_at, run.finished_at or run.started_at))
        cells = state.setdefault(run.spec_name, {})
        # a case's identity (api/queries.current): targets and the graph a runtime environment ran are apart
        cell: Cell = (env_hash, model, route, exporter, opset, target, artifact)
        before = cells.get(cell)
        cells[cell] = status
        change = CellChange(model, route, exporter, opset, env_name, signature)
        if status != "pass" and before in (None, "pass"):
            changes.new_failures.append(change)
        elif status == "pass" and before is not None and before != "pass":
            changes.new_passes.append(change)
    for run_id, run in runs.items():  # a run that recorded nothing changed nothing, and is news too
        out.setdefault(run_id, RunChanges(run_id, run.spec_name, run.started_at, run.finished_at or run.started_at))
    return sorted(out.values(), key=lambda c: (c.started_at, c.run_id), reverse=True)[:limit]


def atom(changes: list[RunChanges], base_url: str) -> str:
    """An Atom 1.0 document (RFC 4287): one entry per run, its new failures and passes as the content."""
    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed")
    _text(feed, "title", "knowngood: new failures and passes per run")
    _text(feed, "id", f"{base_url}api/v1/feed.atom")
    ET.SubElement(feed, f"{{{ATOM}}}link", rel="self", href=f"{base_url}api/v1/feed.atom")
    _text(feed, "updated", _time(max((c.updated for c in changes), default=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))))
    ET.SubElement(ET.SubElement(feed, f"{{{ATOM}}}author"), f"{{{ATOM}}}name").text = "knowngood"
    for c in changes:
        entry = ET.SubElement(feed, f"{{{ATOM}}}entry")
        _text(entry, "title", f"{c.spec_name} run {c.run_id[:8]}: {len(c.new_failures)} new failures, "
                              f"{len(c.new_passes)} new passes")
        _text(entry, "id", f"urn:uuid:{c.run_id}")
        ET.SubElement(entry, f"{{{ATOM}}}link", href=f"{base_url}api/v1/runs/{c.run_id}")
        _text(entry, "updated", _time(c.updated))
        lines = [f"new failure: {_cell(x)}: {x.signature or 'failed'}" for x in c.new_failures]
        lines += [f"new pass: {_cell(x)}" for x in c.new_passes]
        _text(entry, "content", "\n".join(lines) or "nothing changed").set("type", "text")
    return ET.tostring(feed, encoding="unicode", xml_declaration=True)


def _cell(c: CellChange) -> str:
    return f"{c.model} · {c.route} · {c.exporter} · opset {c.opset} in {c.environment}"


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ATOM}}}{tag}")
    element.text = text
    return element


def _time(value: dt.datetime) -> str:
    return as_utc(value).isoformat()  # Atom requires the offset (RFC 3339)
