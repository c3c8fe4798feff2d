"""`knowngood check FILE…`: are these pins known good? Offline against the shipped snapshot, or asking a server.

Exit codes: 0 known-good, 1 known-bad, 2 untested, 3 usage error (a bad option, an unreadable file, an unknown
model); `--fail-on` picks which verdicts fail. Offline, the snapshot is imported once into a SQLite file in the
user's cache, named by the snapshot's hash, and nothing touches the network.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from api.schemas import CheckOut, ModelVerdict

USAGE = 3
# The measured data: inside the package in a wheel (pyproject force-include; what pre-commit and `uv tool` install),
# beside the packages in a checkout (the repository, the Action's own checkout, an editable install).
_PACKAGED = Path(__file__).resolve().parent / "data" / "snapshot.json.gz"
SNAPSHOT = _PACKAGED if _PACKAGED.exists() else Path(__file__).resolve().parent.parent / "data" / "snapshot.json.gz"
FORMATS = ("table", "json", "markdown")
FAIL_ON = ("bad", "untested", "never")
# The spans a person reads beside a failure; numpy and protobuf follow from these and stay in the JSON.
SPAN_SHOWN = ("torch", "onnx", "tensorflow", "onnx2tf", "onnx-tf", "nobuco")


class UsageError(Exception):
    """Anything that stops a check before a verdict: exit code 3, the message says what was expected."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `check` on the CLI's subcommands."""
    sp = sub.add_parser("check", help="are the pins in a lockfile known good? (exit 0 good, 1 bad, 2 untested)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("files", nargs="+", metavar="FILE",
                    help="requirements/constraints .txt, uv.lock, pylock.toml or pyproject.toml")
    sp.add_argument("--models", required=True, help="comma-separated model names, e.g. resnet,transformer")
    sp.add_argument("--route", action="append", help="route (repeatable or comma-separated); default: the routes "
                                                     "whose packages the file pins")
    sp.add_argument("--exporter", help="torchscript | dynamo; default: any exporter that passed")
    sp.add_argument("--target", help="what TF routes deploy: saved_model (TF Serving) | tflite | keras; default: any "
                                     "target that passed")
    sp.add_argument("--python", help="python minor such as 3.11, for a file that does not say which")
    sp.add_argument("--format", choices=FORMATS, default="table")
    sp.add_argument("--fail-on", choices=FAIL_ON, default="untested",
                    help="bad: only known-bad fails; untested (default): known-bad and untested fail; never")
    sp.add_argument("--server", metavar="URL", help="ask this knowngood server (POST /api/v1/check) instead")
    sp.add_argument("--snapshot", type=Path, help=f"measured data to check against offline (default: {SNAPSHOT})")
    sp.add_argument("--db", help="check against this database URL instead of a snapshot")
    sp.set_defaults(func=run)

    def usage(message: str) -> NoReturn:  # argparse exits 2, which here means "untested"
        sp.print_usage(sys.stderr)
        print(f"knowngood check: error: {message}", file=sys.stderr)
        sys.exit(USAGE)

    sp.error = usage  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    routes = [r.strip() for text in args.route or [] for r in text.split(",") if r.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        answers = [check_file(Path(f), models, routes, args) for f in args.files]
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    sys.stdout.write(render(answers, args.format))
    return exit_code([a.verdict for a in answers], args.fail_on)


def exit_code(verdicts: list[str], fail_on: str) -> int:
    if "known-bad" in verdicts and fail_on != "never":
        return 1
    if "untested" in verdicts and fail_on == "untested":
        return 2
    return 0


def check_file(path: Path, models: list[str], routes: list[str], args: argparse.Namespace) -> CheckOut:
    from store.pins import PinsError, decode, kind_of

    try:
        kind_of(str(path))  # refuse an unsupported name before reading, as the server would
        text = decode(path.read_bytes(), str(path))
    except PinsError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{path}:1: expected a readable lockfile, got {exc.strerror}") from None
    if args.server:
        return ask_server(args.server, str(path), text, models, routes, args.exporter, args.python, args.target)
    return check_offline(database_url(args), str(path), text, models, routes, args.exporter, args.python,
                         args.target)


def check_offline(url: str, filename: str, text: str, models: list[str], routes: list[str], exporter: str | None,
                  python: str | None, target: str | None = None) -> CheckOut:
    """The verdict from a local database: the same function the server's route calls."""
    from api import queries, verdicts
    from store.db import make_engine, make_sessionmaker
    from store.pins import PinsError, parse

    try:
        pins = parse(text, filename, python=python)
    except PinsError as exc:
        raise UsageError(str(exc)) from None
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return verdicts.check(session, pins, models, routes or None, exporter, target=target)
    except queries.QueryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        engine.dispose()


def ask_server(server: str, filename: str, text: str, models: list[str], routes: list[str], exporter: str | None,
               python: str | None, target: str | None = None) -> CheckOut:
    """POST the file to a knowngood server; its answer is the same CheckOut the offline path gives."""
    from api.schemas import CheckOut

    body = json.dumps({"filename": filename, "text": text, "models": models, "routes": routes,
                       "exporter": exporter, "python": python, "target": target}).encode()
    request = urllib.request.Request(f"{server.rstrip('/')}/api/v1/check", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "knowngood-check"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return CheckOut.model_validate_json(response.read())
    except urllib.error.HTTPError as exc:
        raise UsageError(f"{server} answered {exc.code}: {_detail(exc.read())}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise UsageError(f"--server: expected a reachable knowngood server, got {exc}") from None


def _detail(body: bytes) -> str:
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:500]
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail)


# -- the offline database --------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knowngood" / "check"


def database_url(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    snapshot = args.snapshot or Path(os.environ.get("KNOWNGOOD_SNAPSHOT") or SNAPSHOT)
    return snapshot_database(snapshot, cache_dir())


def snapshot_database(snapshot: Path, cache: Path) -> str:
    """A SQLite file holding `snapshot`, imported on first use and named by the snapshot's and the schema's hash.

    Written under a temporary name and renamed into place, so checks running side by side (pre-commit runs hooks
    in parallel) never read a half-imported file.
    """
    from store import snapshot as snapshots
    from store.db import make_engine, make_sessionmaker
    from store.migrate import MIGRATIONS_DIR, upgrade

    try:
        data = snapshot.read_bytes()
    except OSError as exc:
        raise UsageError(f"--snapshot: expected a knowngood snapshot file, got {snapshot} ({exc.strerror})") from None
    schema = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py"))
    key = hashlib.sha256(data + "\n".join(schema).encode()).hexdigest()[:16]
    path = cache / f"snapshot-{key}.db"
    if path.exists():
        return f"sqlite:///{path}"
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    url = f"sqlite:///{partial}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            snapshots.import_(session, snapshot)
    except snapshots.SnapshotError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"--snapshot: {exc}") from None
    finally:
        engine.dispose()
    os.replace(partial, path)
    return f"sqlite:///{path}"


# -- output ----------------------------------------------------------------------------------------------------------

def render(answers: list[CheckOut], fmt: str) -> str:
    if fmt == "json":
        docs = [a.model_dump(mode="json") for a in answers]
        return json.dumps(docs[0] if len(docs) == 1 else docs, indent=2) + "\n"
    if fmt == "markdown":
        return "\n".join(markdown(a) for a in answers)
    return "".join(table(a) for a in answers)


def evidence(r: ModelVerdict) -> str:
    if r.environment_id is None:
        return "—"
    run = f", run {r.run_id[:8]}" if r.run_id else ""
    return f"{r.environment} (environment {r.environment_id}{run})"


def detail(r: ModelVerdict) -> str:
    """What a person needs next to the verdict: the failure and its span, or what is nearest."""
    if r.verdict == "known-good":
        return f"passed with {r.exporter}"
    if r.verdict == "known-bad":
        where = ""
        if r.seen:
            spans = ", ".join(f"{n} {v[0]}–{v[1]}" if v[0] != v[1] else f"{n} {v[0]}"
                              for n, v in r.seen.versions.items() if n in SPAN_SHOWN)
            where = f"; seen in {r.seen.environments} environments, {spans}"
        return f"{r.step or 'case'} failed ({r.exporter}): {r.signature}{where}"
    if not r.nearest:
        return "nothing measured for this model on this route"
    from api.verdicts import summary

    return "nearest: " + "; ".join(f"environment {n.environment_id} ({n.status}) differs in {summary(n.differs)}"
                                   for n in r.nearest)


def fix_text(r: ModelVerdict) -> str:
    if r.fix is None:
        return "no measured environment passes it"
    return f"{r.fix.summary} (environment {r.fix.environment_id})"


def table(answer: CheckOut) -> str:
    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    # Colour and the terminal's width at a terminal; plain text, wide enough for a CI log, everywhere else.
    tty = sys.stdout.isatty()
    console = Console(file=out, force_terminal=tty, width=None if tty else 160)
    style = {"known-good": "green", "known-bad": "red", "untested": "yellow"}
    title = f"{answer.file} ({answer.format}, python {answer.python or 'unknown'}): {answer.verdict}"
    grid = Table(title=title, show_lines=True)
    for column in ("model", "route", "verdict", "evidence", "detail", "smallest change to a known-good chain"):
        grid.add_column(column, overflow="fold")
    for r in answer.results:
        grid.add_row(r.model, r.route, f"[{style[r.verdict]}]{r.verdict}[/]", evidence(r), detail(r), fix_text(r))
    console.print(grid)
    for route, fix in answer.fixes.items():
        if len(answer.models) > 1:
            what = f"{fix.summary} (environment {fix.environment_id}: {fix.environment})" if fix else \
                "no measured environment passes every model"
            console.print(f"{route}, all of {', '.join(answer.models)}: {what}")
    return out.getvalue()


def markdown(answer: CheckOut) -> str:
    """For CI summaries ($GITHUB_STEP_SUMMARY): one heading and one table per file."""
    icon = {"known-good": "✅", "known-bad": "❌", "untested": "❔"}
    lines = [f"### {icon[answer.verdict]} `{answer.file}`: {answer.verdict}", "",
             f"python {answer.python or 'unknown'}; pins: "
             + ", ".join(f"{n} {v}" for n, v in answer.pins.items()), "",
             "| model | route | verdict | evidence | detail | smallest change to a known-good chain |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in answer.results:
        cells = [r.model, r.route, f"{icon[r.verdict]} {r.verdict}", evidence(r), detail(r), fix_text(r)]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    for route, fix in answer.fixes.items():
        if len(answer.models) > 1:
            lines.append("")
            lines.append(f"**{route}**, every model: " + (f"{fix.summary} (environment {fix.environment_id})"
                                                          if fix else "no measured environment passes every model"))
    return "\n".join(lines) + "\n"
