"""docs/matrix.md, its heatmaps and coverage grids: generated from the database (`knowngood docs`), never by hand."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable
from html import escape
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import coverage, queries
from api.schemas import MatrixOut
from matrix.routes import ROUTES, TARGETS
from store.models import Case, Environment, Run

# The chain practitioners quote as the one that works.
PRACTITIONER = {"torch": "2.0.1", "onnx": "1.14.0", "tensorflow": "2.13.0"}


def _versions(session: Session, env_ids: list[int]) -> dict[int, dict[str, str]]:
    return queries.package_versions(session, env_ids)


def _grid_svg(xs: list[str], ys: list[str], paint: Callable[[str, str], tuple[str, str]], title: str,
              footer: str, y_prefix: str = "") -> str:
    """A grid as SVG: `xs` across, `ys` down, each cell filled and labelled by `paint(x, y)` → (fill, label)."""
    cw, ch, left, top = 64, 26, 90, 48
    width, height = max(left + cw * len(xs) + 10, 480), top + ch * len(ys) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<text x="{left}" y="{height - 8}">{escape(footer)}</text>',
    ]
    for i, x in enumerate(xs):
        parts.append(f'<text x="{left + i * cw + cw / 2}" y="{top - 6}" text-anchor="middle">{escape(x)}</text>')
    for j, y in enumerate(ys):
        parts.append(f'<text x="{left - 6}" y="{top + j * ch + 17}" text-anchor="end">{escape(y_prefix + y)}</text>')
        for i, x in enumerate(xs):
            fill, label = paint(x, y)
            parts.append(f'<rect x="{left + i * cw}" y="{top + j * ch}" width="{cw - 2}" height="{ch - 2}" '
                         f'fill="{fill}"/><text x="{left + i * cw + cw / 2 - 1}" y="{top + j * ch + 17}" '
                         f'text-anchor="middle">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap_svg(grid: MatrixOut, title: str, y_label: str = "tf ") -> str:
    """A torch × TensorFlow (or ONNX Runtime) grid of one target as SVG: each cell coloured by its pass fraction,
    labelled passed/total.

    The grid holds one cell per (x, y, target, environment kind). Joint environments and split chains at one
    (x, y) are added up (cases passed / cases run, whichever kind ran them); targets are not, so a grid with
    more than one is refused: a .tflite failing beside a SavedModel passing must not read as either.
    """
    targets = {c.target for c in grid.cells if c.target is not None}  # None: an environment that never resolved
    if len(targets) > 1:
        raise ValueError(f"one heatmap per target; this grid holds {', '.join(sorted(targets))}")
    xs = [v for v in grid.x_versions if v is not None]
    ys = [v for v in grid.y_versions if v is not None]
    counts: dict[tuple[str, str], list[int]] = {}
    unresolved: set[tuple[str, str]] = set()
    for c in grid.cells:
        if c.x is None or c.y is None:
            continue
        tally = counts.setdefault((c.x, c.y), [0, 0])
        tally[0] += c.passed
        tally[1] += c.passed + c.failed
        if c.status == "unresolved":
            unresolved.add((c.x, c.y))

    def paint(x: str, y: str) -> tuple[str, str]:
        if (x, y) not in counts:
            return "#ffffff", ""
        passed, total = counts[x, y]
        if total == 0:
            return "#d0d0d0", "unres." if (x, y) in unresolved else "—"
        share = passed / total
        return (f"rgb({int(230 - 120 * share)},{int(90 + 140 * share)},{int(90 + 20 * share)})",
                f"{passed}/{total}")

    return _grid_svg(xs, ys, paint, title, "torch →   (cell: cases passed / cases run; grey: no case ran)", y_label)


# Coverage cells by status: measured (all pass, all fail, mixed), known not to resolve, no answer yet.
COVERAGE_FILL = {"pass": "#6fcf6f", "fail": "#e06060", "mixed": "#f2b441", "unresolvable": "#c8c8c8",
                 "missing": "#ffffff"}


def coverage_svg(cov: coverage.Coverage) -> str:
    """A route's coverage grid as SVG, torch minors down, the production side's minors across."""
    columns = cov.columns if cov.column else ["torch"]

    def paint(x: str, y: str) -> tuple[str, str]:
        cell = cov.cell(y, x if cov.column else "")
        return COVERAGE_FILL[cell.status], _cell_text(cell, unresolvable="unres.", missing="")

    across = f"{cov.column} minor →" if cov.column else ""
    return _grid_svg(
        columns, cov.rows, paint,
        f"route {cov.route}: {cov.answered} of {len(cov.rows) * len(cov.columns)} cells answered",
        f"{across}  (green: all passed, amber: some, red: none; grey: cannot resolve; white: no answer)",
        "torch ")


def _cell_text(cell: coverage.CoverageCell, *, unresolvable: str, missing: str) -> str:
    if cell.total:
        return f"{cell.passed}/{cell.total}"
    return unresolvable if cell.unresolvable else missing


def render(session: Session, out_dir: Path) -> Path:
    """Write matrix.md, heatmap-<route>[-<target>].svg and coverage-<route>.svg into `out_dir`; returns the
    Markdown file. Pictures an earlier render wrote and this one does not (a route or target no longer
    measured, a renamed file) are removed, so the folder holds exactly what matrix.md links."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (*out_dir.glob("heatmap-*.svg"), *out_dir.glob("coverage-*.svg")):
        stale.unlink()
    env_status = Counter({s: n for s, n in session.execute(
        select(Environment.status, func.count()).group_by(Environment.status))})
    case_status = Counter({s: n for s, n in session.execute(select(Case.status, func.count()).group_by(Case.status))})
    runs = session.scalars(select(Run).order_by(Run.started_at)).all()
    lines = [
        "# The measured matrix",
        "",
        f"Generated by `knowngood docs` from {len(runs)} runs "
        f"({', '.join(sorted({r.spec_name for r in runs}))}) on {dt.date.today():%Y-%m-%d}. Do not edit by hand.",
        "",
        f"- **Environments:** {sum(env_status.values())} "
        f"({', '.join(f'{n} {s}' for s, n in env_status.most_common())})",
        f"- **Cases:** {sum(case_status.values())} ({', '.join(f'{n} {s}' for s, n in case_status.most_common())})",
        "",
    ]
    lines += _practitioner(session)
    lines += _chains(session)
    lines += _converter_stacks(session)
    lines += _heatmaps(session, out_dir)
    measured = coverage.measurements(session)
    lines += _coverage(measured, out_dir)
    lines += _pins(session, measured)
    lines += _torch_spans(measured)
    lines += _default_exports(session, measured)
    lines += _failures(session)
    path = out_dir / "matrix.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _converter_stacks(session: Session) -> list[str]:
    """Environments with the same Python, torch and TensorFlow but another onnx/onnxruntime/converter stack.

    This is where the resolver's newest choice and an older, contemporary stack part ways (history.toml against
    history-era.toml): the table shows which of them keeps the models working.
    """
    counts: dict[int, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for env_id, route, status in session.execute(select(Case.environment_id, Case.route, Case.status)):
        counts[env_id][route]["pass" if status == "pass" else "other"] += 1
    pythons: dict[int, str] = {env_id: python for env_id, python in session.execute(
        select(Environment.id, Environment.python).where(Environment.id.in_(list(counts))))}
    versions = _versions(session, list(pythons))
    groups: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for env_id, python in pythons.items():
        v = versions[env_id]
        tf = v.get("tensorflow") or v.get("tensorflow-cpu")
        for converter in ("onnx2tf", "onnx-tf"):
            if v.get("torch") and tf and converter in v:
                groups[(python, v["torch"], tf, converter)].append(env_id)
    stacks = {k: ids for k, ids in groups.items() if len({versions[e][k[3]] for e in ids}) > 1}
    lines = ["## Same torch and TensorFlow, another converter release", "",
             "Environments that pin the same Python, torch and TensorFlow but another release of the converter (with "
             "the onnx and onnxruntime that came with it) — the resolver's newest stack (history.toml) beside the one "
             "of that TensorFlow's own time (history-era.toml). Cells: cases passed / run on the route.", ""]
    if not stacks:
        return [*lines, "No such pair has been recorded yet.", ""]
    routes = [r for r in ROUTES if any(r in counts[e] for ids in stacks.values() for e in ids)]
    lines += ["| python | torch | tensorflow | onnx | onnxruntime | converter | " + " | ".join(routes) + " |",
              "|---" * (6 + len(routes)) + "|"]
    for (python, torch, tf, name), ids in sorted(
        stacks.items(), key=lambda kv: (kv[0][3], queries.version_key(kv[0][2]), queries.version_key(kv[0][1]))
    ):
        for env_id in sorted(ids, key=lambda e: queries.version_key(versions[e][name])):
            v = versions[env_id]
            converter = f"{name} {v[name]}"
            cells = []
            for route in routes:
                c = counts[env_id].get(route)
                cells.append(f"{c['pass']}/{c['pass'] + c['other']}" if c else "")
            lines.append(f"| {python} | {torch} | {tf} | {v.get('onnx', '')} | {v.get('onnxruntime', '')} | "
                         f"{converter} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _practitioner(session: Session) -> list[str]:
    lines = ["## The practitioner's chain: torch 2.0.1 → onnx 1.14.0 → TensorFlow 2.13.0", ""]
    env_ids = list(session.scalars(select(Environment.id).where(Environment.lock_hash.is_not(None))))
    versions = _versions(session, env_ids)
    chosen = [e for e in env_ids if all(versions[e].get(k) == v for k, v in PRACTITIONER.items())]
    if not chosen:
        return [*lines, "No environment with exactly these versions has been recorded.", ""]
    names = list(session.scalars(select(Environment.name).where(Environment.id.in_(chosen))))
    rows = session.execute(
        select(Case.model, Case.route, Case.status, Case.signature, Case.max_abs_diff)
        .where(Case.environment_id.in_(chosen), Case.exporter == "torchscript")
    ).all()
    cells: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    worst: dict[tuple[str, str], float] = {}
    for model, route, status, signature, diff in rows:
        cells[(model, route)][signature or status] += 1
        if status == "pass" and diff is not None:
            worst[(model, route)] = max(worst.get((model, route), 0.0), diff)
    routes = [r for r in ROUTES if any(k[1] == r for k in cells)]
    lines += [f"{len(names)} environments pin exactly these three: " + ", ".join(f"`{n}`" for n in sorted(names)),
              "", "TorchScript exporter at opset 17; each cell counts outcomes over those environments "
              "(worst passing max abs diff in brackets).", "",
              "| model | " + " | ".join(routes) + " |", "|---" * (len(routes) + 1) + "|"]
    for model in sorted({k[0] for k in cells}):
        row = []
        for route in routes:
            counts = cells.get((model, route), Counter())
            text = ", ".join(f"{k} ×{n}" for k, n in counts.most_common())
            if (model, route) in worst:
                text += f" [{worst[(model, route)]:.1e}]"
            row.append(text)
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _chains(session: Session) -> list[str]:
    lines = ["## Known-good chains, per route and model", "",
             "The newest environment in which the model passed on the route (any exporter), and how many did.", "",
             "| route | model | chains | newest known-good | torch | onnx | onnxruntime | tensorflow | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    models = sorted(queries.known_models(session))
    facts = queries.FactsCache()
    for route in ROUTES:
        for model in models:
            chains = queries.known_good_chains(session, queries.ChainQuery.parse(model, route), facts)
            if not chains:
                continue
            best = chains[0]
            v = best.versions
            tf = v.get("tensorflow") or v.get("tensorflow-cpu") or ""
            diff = best.models[0].max_abs_diff if best.models else None
            lines.append(f"| {route} | {model} | {len(chains)} | `{best.name}` | {v.get('torch', '')} | "
                         f"{v.get('onnx', '')} | {v.get('onnxruntime', '')} | {tf} | "
                         f"{'' if diff is None else f'{diff:.1e}'} |")
    return [*lines, ""]


# The routes drawn as heatmaps, with the package across (y) and its label. litert-torch has no second axis: its
# coverage grid (torch alone) says it all.
HEATMAP_AXES = (("onnxruntime", "onnxruntime", "ort "), ("onnx2tf", "tensorflow", "tf "),
                ("onnx-tf", "tensorflow", "tf "), ("nobuco", "tensorflow", "tf "))
AXIS_NAMES = {"onnxruntime": "ONNX Runtime", "tensorflow": "TensorFlow"}


def _heatmaps(session: Session, out_dir: Path) -> list[str]:
    """One heatmap per (route, target) with a measured case: heatmap-<route>.svg, heatmap-<route>-<target>.svg."""
    lines = ["## torch × TensorFlow, torch × ONNX Runtime", "",
             "One heatmap per route and target (a SavedModel passing says nothing about the .tflite of the same "
             "environment). Cells: cases passed / run at that torch and TensorFlow (ONNX Runtime on its route), "
             "all models and exporters, joint environments and split chains together.", ""]
    for route, y, y_label in HEATMAP_AXES:
        for target in TARGETS.get(route, ("",)):
            grid = queries.matrix_grid(session, queries.MatrixQuery(x="torch", y=y, route=route,
                                                                    target=target or None))
            if not any(c.passed + c.failed for c in grid.cells):  # unresolved environments alone: nothing ran
                continue
            name = f"heatmap-{route}-{target}.svg" if target else f"heatmap-{route}.svg"
            what = f"route {route}, target {target}" if target else f"route {route}"
            (out_dir / name).write_text(heatmap_svg(grid, f"{what}: all models, all exporters", y_label))
            lines += [f"![torch × {AXIS_NAMES[y]} on {what}]({name})", ""]
    return lines


def _failures(session: Session) -> list[str]:
    out = queries.failures(session, queries.FailureQuery(package="torch", limit=40))
    lines = ["## Failure signatures", "",
             "Grouped across every run; the torch versions are the span where each was seen.",
             "", "| signature | scope | cases | environments | torch from | torch to | routes | models |",
             "|---|---|---|---|---|---|---|---|"]
    for f in out.failures:
        lines.append(f"| `{f.signature}` | {f.scope} | {f.count} | {f.environments} | {f.first_version or ''} | "
                     f"{f.last_version or ''} | {', '.join(f.routes)} | {', '.join(f.models[:6])} |")
    return [*lines, ""]


def _coverage(m: coverage.Measurements, out_dir: Path) -> list[str]:
    """Issue 17: per route, which torch minor × TensorFlow (onnxruntime) minor cells hold an answer."""
    lines = ["## Coverage per route", "",
             "Rows are torch minors; columns the production side's minor (TensorFlow, or onnxruntime on its route; "
             "litert-torch has one column). A cell is measured (cases passed / run, joint environments and split "
             "chains together: a graph exported by torch X and run beside TensorFlow Y answers X × Y), "
             "`unres.` (uv cannot resolve those versions together: an answer too), or `·` (no answer: nothing "
             "planned, or resolved but never run). Answered = measured + unresolvable.", ""]
    for route in ROUTES:
        cov = coverage.coverage(m, route)
        if not cov.rows or not cov.columns:
            continue
        size = len(cov.rows) * len(cov.columns)
        statuses = Counter(cov.cell(x, y).status for x in cov.rows for y in cov.columns)
        measured = statuses["pass"] + statuses["fail"] + statuses["mixed"]
        heading = f"torch × {cov.column}" if cov.column else "torch"
        name = f"coverage-{route}.svg"
        (out_dir / name).write_text(coverage_svg(cov))
        lines += [f"### {route}: {heading}", "",
                  f"**{cov.answered} of {size} cells answered ({cov.share:.0%})**: {measured} measured "
                  f"({statuses['pass']} all pass, {statuses['mixed']} mixed, {statuses['fail']} all fail), "
                  f"{statuses['unresolvable']} unresolvable, {statuses['missing']} missing.", "",
                  f"![coverage of {route}]({name})", ""]
        columns = cov.columns if cov.column else [""]
        lines += ["| torch | " + " | ".join(c or "cases" for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for x in cov.rows:
            lines.append(f"| {x} | " + " | ".join(
                _cell_text(cov.cell(x, y), unresolvable="unres.", missing="·") for y in columns) + " |")
        lines.append("")
    return lines


def _pins(session: Session, m: coverage.Measurements) -> list[str]:
    """Issues 11 and 17: per deployment target and model family, the newest chain that passes."""
    lines = ["## What to pin", "",
             "Per model, grouped by family, the newest chain in which it passed (with the exporters that passed), "
             "ranked by torch, TensorFlow, onnx, onnxruntime, converter. A family's variants are listed apart: "
             "one that never passes (batchnorm in train mode) would otherwise hide the chains that serve the "
             "others. *Split*: export in one environment (torch, onnx) and convert or run in another (no "
             "torch); the Python reads research → production where they differ. Evidence: passing cases in this "
             "chain; chains it passed in at any versions, over how many environments.", ""]
    for deployment in coverage.DEPLOYMENTS:
        answers = coverage.pins(session, m, deployment)
        routes = ", ".join(dict.fromkeys(f"{r} ({t})" if t else r for r, t in deployment.routes))
        lines += [f"### For {deployment.title} pin…", "", f"Routes: {routes}.", ""]
        if not answers:
            lines += ["No case has been measured for this target yet.", ""]
            continue
        found = [a for a in answers if isinstance(a, coverage.Pin)]
        # ONNX Runtime runs the ONNX file itself: the TensorFlow or converter its environment also held is not
        # part of what a user deploys there, so those columns are left out rather than shown as if they were.
        tf_columns = any(route != "onnxruntime" for route, _ in deployment.routes)
        columns = ["torch", "onnx", *(["tensorflow", "converter"] if tf_columns else []), "onnxruntime",
                   *(["onnx2tf backend"] if tf_columns else [])]
        if found:
            lines += ["| family | model | route | chain | python | " + " | ".join(columns) + " | exporter | evidence |",
                      "|---" * (len(columns) + 7) + "|"]
        for pin in found:
            v = pin.versions
            cell = {"torch": v.get("torch", ""), "onnx": v.get("onnx", ""),
                    "tensorflow": v.get("tensorflow") or v.get("tensorflow-cpu") or "", "converter": pin.converter,
                    "onnxruntime": v.get("onnxruntime", ""), "onnx2tf backend": pin.backend}
            lines.append(
                f"| {pin.family} | {pin.model} | {pin.route} | {'split' if pin.split else 'joint'} | {pin.python} | "
                + " | ".join(cell[c] for c in columns)
                + f" | {', '.join(pin.exporters)} | {pin.cases} cases; {pin.chains} chains over "
                f"{pin.environments} environments |")
        if found:
            lines.append("")
        for miss in answers:
            if isinstance(miss, coverage.Miss):
                lines.append(f"- **{miss.model}** ({miss.family}): nothing passes. " + _miss_text(miss))
        lines.append("")
    return lines


def _miss_text(miss: coverage.Miss) -> str:
    if miss.step is None and miss.signature is None:
        return "No failure with a signature was recorded either."
    v = miss.versions
    shown = ", ".join(f"{n} {v[n]}" for n in ("torch", "onnx", "tensorflow", "tensorflow-cpu", "onnxruntime",
                                             "onnx2tf", "onnx-tf", "nobuco", "litert-torch", "ai-edge-torch")
                      if n in v)
    return (f"Closest failure: step `{miss.step or '?'}`, `{miss.signature or '?'}` on {miss.route}"
            f"{f' ({miss.target})' if miss.target else ''}, {'split' if miss.split else 'joint'}: {shown}.")


def _torch_spans(m: coverage.Measurements) -> list[str]:
    """Issue 10: per family, route and target, the first and last torch minor with a passing chain."""
    spans = coverage.torch_spans(m)
    lines = ["## First and last passing torch minor", "",
             "Per model (grouped by family), route and target: the oldest and newest torch minor with a chain "
             "where it passed (joint, or split by the torch that exported the graph), the minors measured, and "
             "those between first and last measured without a pass.", ""]
    if not spans:
        return [*lines, "No case has been measured yet.", ""]
    lines += ["| family | model | route | target | first | last | measured | no pass between |", "|---" * 8 + "|"]
    for s in spans:
        lines.append(f"| {s.family} | {s.model} | {s.route} | {s.target} | {s.first or 'none'} | {s.last or 'none'} | "
                     f"{', '.join(s.measured)} | {', '.join(s.gaps)} |")
    return [*lines, ""]


def _default_exports(session: Session, m: coverage.Measurements) -> list[str]:
    """Issue 10: what an unchanged torch.onnx.export(model, args, f) ran in each torch minor, and what it emitted."""
    rows = coverage.default_exports(session, m)
    lines = ["## What torch.onnx.export(model, args, f) does", "",
             "Export steps of cases with exporter `default` (no `dynamo=`, no opset), as the worker recorded them: "
             "the exporter that ran, the opset and IR version read back from the file. One row per torch minor and "
             "onnxscript release beside it: torch's dynamo exporter is onnxscript's code.", ""]
    if not rows:
        return [*lines, "No case with the default exporter has been recorded yet.", ""]
    lines += ["| torch | onnxscript | exporter that ran | opset emitted | IR version | export failures |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        ran = ", ".join(f"{name} ×{n}" for name, n in r.ran.most_common())
        failed = ", ".join(f"`{sig}` ×{n}" for sig, n in r.failed.most_common(3))
        lines.append(f"| {r.torch} | {r.onnxscript or 'none'} | {ran} | {', '.join(map(str, sorted(r.opsets)))} | "
                     f"{', '.join(map(str, sorted(r.ir_versions)))} | {failed} |")
    return [*lines, ""]
