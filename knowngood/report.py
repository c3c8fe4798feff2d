"""Run-to-run report as Markdown: the changes `api.changes.compare` finds, headline first, for a CI summary."""

from __future__ import annotations

import datetime as dt

from api.changes import Cell, Outcome, Report, ReportError, compare
from store.db import as_utc

__all__ = ["ReportError", "compare", "render"]

MAX_ROWS = 25  # per section: a CI summary is read in a minute


def _md(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _sig(outcome: Outcome) -> str:
    return f"{outcome.status} `{_md(outcome.signature)}`" if outcome.signature else outcome.status


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "?"
    return as_utc(value).strftime("%Y-%m-%d %H:%M UTC")


def _n(items: list, word: str, plural: str = "s") -> str:  # type: ignore[type-arg]
    return f"{len(items)} {word}{'' if len(items) == 1 else plural}"


def _counts(cells: dict[Cell, Outcome]) -> tuple[int, int]:
    passed = sum(1 for o in cells.values() if o.status == "pass")
    return passed, len(cells) - passed


def _rows(items: list, header: str, row) -> list[str]:  # type: ignore[no-untyped-def, type-arg]
    if not items:
        return ["None.", ""]
    lines = [header, "|" + " --- |" * header.count(" | ") + " --- |"]
    lines += [row(x) for x in items[:MAX_ROWS]]
    if len(items) > MAX_ROWS:
        lines.append(f"\n…and {len(items) - MAX_ROWS} more.")
    return [*lines, ""]


def render(report: Report) -> str:
    """The report as Markdown, headline first."""
    run, against = report.run, report.against
    lines = [f"# knowngood report: {_md(run.spec_name)}", ""]
    head = f"Run `{run.id[:8]}` ({_when(run.started_at)}, {run.status}, host {_md(run.host)})"
    if len(report.shards) > 1:
        unfinished = sum(1 for r in report.shards if r.status != "finished")
        head = (f"{len(report.shards)} shard runs since {_when(report.shards[0].started_at)} "
                f"({', '.join(f'`{r.id[:8]}`' for r in report.shards)}"
                + (f"; {unfinished} not finished" if unfinished else "") + ")")
    if against is None:
        lines += [f"{head}. No earlier run of spec `{_md(run.spec_name)}`: every failure is new.", ""]
    else:
        how = "the previous run of this spec" if against.spec_name == run.spec_name else f"spec {against.spec_name}"
        lines += [f"{head} against `{against.id[:8]}` ({_when(against.started_at)}, {how}).", ""]
    now_pass, now_fail = _counts(report.now)
    before_pass, before_fail = _counts(report.before)
    lines += [
        f"**{_n(report.new_failures, 'new failure')} · {_n(report.new_passes, 'new pass', 'es')} · "
        f"{_n(report.new_signatures, 'new signature')}** — now {now_pass} pass, {now_fail} not "
        f"(before {before_pass} pass, {before_fail} not).",
        "",
        "## New failures",
        "",
    ]
    lines += _rows(
        report.new_failures,
        "| case | environment | now | before | what changed | first failing combination |",
        lambda c: f"| {c.cell[1]} · {c.cell[2]}{' ' + c.cell[5] if c.cell[5] else ''} · {c.cell[3]} · op{c.cell[4]} | "
        f"{_md(c.now.environment)} | "
                  f"{_sig(c.now)} | {_sig(c.before) if c.before else '–'} | {_md(c.changed)} | "
                  f"{_md(c.first_failing) or '–'} |",
    )
    lines += ["## New passes", ""]
    lines += _rows(
        report.new_passes,
        "| case | environment | before | what changed |",
        lambda c: f"| {c.cell[1]} · {c.cell[2]}{' ' + c.cell[5] if c.cell[5] else ''} · {c.cell[3]} · op{c.cell[4]} | "
        f"{_md(c.now.environment)} | "
                  f"{_sig(c.before) if c.before else '–'} | {_md(c.changed)} |",
    )
    lines += ["## New signatures", ""]
    lines += _rows(
        report.new_signatures,
        "| signature | cells | example |",
        lambda s: f"| `{_md(s.signature)}` | {s.cells} | {_md(s.example)} |",
    )
    return "\n".join(lines).rstrip() + "\n"
