"""Command line: run | plan | serve | chains | lock | db upgrade|check. Each body delegates."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from matrix.spec import SpecError
from store.errors import KnowngoodError
from store.settings import Settings

# Exit codes, one per kind of failure a caller (CI, a shell script) may want to tell apart. 3, 4 and 5 are the
# runner's (runner/errors.py); the CLI owns the rest. Printed by --help (EXIT_CODES below).
EXIT_NOTHING = 1
EXIT_USAGE = 2  # as argparse exits on a bad flag
EXIT_DATABASE = 6
EXIT_OUTPUT = 7
EXIT_CODES = """\
exit codes:
  0 success
  1 nothing found (chains, lock: no known-good chain for the query)
  2 usage: a bad flag or setting, spec, plan or query (argparse's own code)
  3 no interpreter for a Python version the run needs
  4 uv not found (PATH, or KNOWNGOOD_UV)
  5 the package index could not be reached, or uv failed (e.g. an install)
  6 the database cannot be opened or reached
  7 an output path cannot be written (its directory does not exist)
  130, 143 run stopped by SIGINT or SIGTERM: finished cases are recorded, the run is marked interrupted, and
    running it again resumes (KNOWNGOOD_STOP_GRACE: seconds from the signal to exit, default 20)
"""


class UsageError(KnowngoodError):
    exit_code = EXIT_USAGE


class DatabaseUnavailable(KnowngoodError):
    exit_code = EXIT_DATABASE


class OutputUnwritable(KnowngoodError):
    exit_code = EXIT_OUTPUT


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {"database_url": args.db} if getattr(args, "db", None) else {}
    if getattr(args, "jobs", None):
        overrides["jobs"] = args.jobs
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        # Flags are checked by argparse, so a value refused here came from a KNOWNGOOD_* variable.
        err = exc.errors()[0]
        name = f"KNOWNGOOD_{str(err['loc'][0]).upper()}"
        raise UsageError(f"{name}: {err['msg']}, got {err.get('input')!r}") from None
    _check_url(settings.database_url, "--db" if getattr(args, "db", None) else "KNOWNGOOD_DATABASE_URL")
    return settings


def _check_url(url: str, source: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise UsageError(f"{source}: expected a database URL such as sqlite:///store.db or "
                         f"postgresql://user@host/db, got {url!r}") from None


# What a database that holds no answers yet needs, said by every command that reads answers from one.
_FILL = ("load the measurements that ship with knowngood (`knowngood snapshot import data/snapshot.json.gz`) or "
         "record your own (`knowngood run SPEC`)")


def _database(args: argparse.Namespace, *, existing: bool = False) -> Settings:
    """Settings whose database can be opened: one connection up front, so a wrong URL is one line, not a
    traceback from deep inside a migration or a query. `existing`: a SQLite file must be there already (a read
    does not create it)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from store.db import make_engine

    settings = _settings(args)
    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # SQLite creates the file but not its folder, and says only "unable to open database file".
        folder = Path(str(url.database)).parent
        if not folder.is_dir():
            raise DatabaseUnavailable(f"cannot open database {shown}: directory {folder} does not exist")
        if existing and not Path(str(url.database)).exists():
            raise DatabaseUnavailable(f"database {shown} does not exist: {_FILL}")
    try:
        engine = make_engine(settings.database_url)
    except ArgumentError as exc:  # e.g. a driver we do not ship
        raise UsageError(f"--db: {exc}") from None
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        reason = (str(exc.orig or exc).strip().splitlines() or ["no reason given"])[0]
        raise DatabaseUnavailable(f"cannot open database {shown}: {reason}") from None
    finally:
        engine.dispose()
    return settings


def _writable(path: Path, label: str) -> None:
    """Refuse an output path whose folder is missing: we create our own folder, not a whole tree a typo made."""
    if not path.parent.is_dir():
        raise OutputUnwritable(f"{label}: cannot write here: directory {path.parent} does not exist")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        index, total = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 1/4, got {text!r}") from None
    if not 1 <= index <= total:
        raise argparse.ArgumentTypeError(f"expected 1 <= I <= N, got {text!r}")
    return index, total


def _timestamp(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO time such as 2026-11-24T02:00:00Z, got {text!r}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from runner.run import run
    from store.migrate import ensure_head

    settings = _database(args)
    if args.queue and args.shard:
        raise UsageError("--queue and --shard: choose one (the queue hands out environments as workers free up; "
                         "--shard splits the plan up front, for CI without database credentials)")
    if args.queue and not settings.database_url.startswith("postgresql"):
        raise UsageError("--queue needs a PostgreSQL database (--db or KNOWNGOOD_DATABASE_URL): workers claim "
                         "environments with row locks that skip locked rows; with SQLite use --jobs or --shard I/N")
    ensure_head(settings.database_url)
    summary = run(args.spec, settings, force=args.force, shard=args.shard, only=args.only, corpus=args.corpus,
                  resolve_only=args.resolve_only, queue=args.queue)
    result = {"run": summary.run_id, "environments": dict(summary.environments), "cases": dict(summary.cases),
              "skipped_recorded": summary.skipped_recorded, "installs": summary.installs,
              "seconds": round(summary.seconds, 1)}
    if summary.interrupted:
        result["interrupted"] = summary.interrupted
    print(json.dumps(result))
    return summary.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    from matrix import expand, spec, versions
    from runner import uv

    settings = _settings(args)
    loaded = spec.load(args.spec)
    plan = expand.plan(loaded, index=uv.index_settings(), selectors=versions.resolve_selectors(loaded),
                       max_environments=settings.max_environments)
    envs = [{"id": env.id, "hash": env.hash, "python": env.python, "requirements": list(env.requirements),
             **({"overrides": list(env.overrides)} if env.overrides else {}),
             **({"options": dict(env.options)} if env.options else {}),
             "cases": [c.key for c in cases]} for env, cases in plan.items]
    sides = expand.split(plan) if loaded.mode != "joint" else None
    if args.format == "json":
        out: dict[str, Any] = {"spec": plan.spec.name, "corpus_version": plan.corpus_version,
                               "environments": envs, "cases": plan.case_count}
        if sides is not None:  # the runtime side's cases depend on the graphs the exports store: only routes here
            out["split"] = {
                "exports": [{"id": e.id, "hash": e.hash, "python": e.python, "requirements": list(e.requirements),
                             "cases": [c.key for c in cs]} for e, cs in sides.exports],
                "runtimes": [{"id": e.id, "hash": e.hash, "python": e.python, "requirements": list(e.requirements),
                              "routes": list(rs)} for e, rs in sides.runtimes],
                "pairs": len(sides.pairs), "installs": sides.installs}
        print(json.dumps(out, indent=2))
        return 0
    if loaded.mode != "split":
        for env in envs:
            print(f"{env['id']}  ({len(env['cases'])} cases)")
    if sides is not None:
        for e, cs in sides.exports:
            print(f"{e.id}  ({len(cs)} exports)")
        for e, rs in sides.runtimes:
            print(f"{e.id}  (routes {', '.join(rs)}: each distinct graph its export partners store)")
        print(f"split: {len(sides.exports)} export + {len(sides.runtimes)} runtime environments = {sides.installs} "
              f"installs, {len(sides.pairs)} (export, runtime) pairs; joint: {len(plan.items)} environments")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from store.migrate import upgrade

    settings = _database(args)
    upgrade(settings.database_url)
    print(f"serving http://{args.host}:{args.port}/  (API under /api/v1, docs at /docs)", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def _recorded(args: argparse.Namespace) -> Settings:
    """Settings of a database to read answers from. One that does not exist, holds no schema or is at an older
    migration is one line naming the command that fixes it, not a traceback about a missing table (and a
    SQLite file is not created by asking)."""
    from sqlalchemy.engine import make_url

    from store import migrate

    settings = _database(args, existing=True)
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    at, head = migrate.current(settings.database_url), migrate.head()
    if at is None:
        raise DatabaseUnavailable(f"database {shown} holds no knowngood data: {_FILL}")
    if at != head:
        raise DatabaseUnavailable(f"database {shown} is at migration {at}, this knowngood reads {head}: run "
                                  "`knowngood db upgrade` first")
    return settings


def _chain_query(session: Any, args: argparse.Namespace) -> Any:
    """The query the flags ask for, with the same checks (and words) the API answers with 422."""
    from api import queries
    from matrix.routes import ROUTES

    if args.route not in ROUTES:
        raise UsageError(f"--route: expected one of {', '.join(ROUTES)}, got {args.route!r}")
    try:
        query = queries.ChainQuery.parse(args.models, args.route)
    except queries.QueryError as exc:
        raise UsageError(f"--{exc}") from None
    unknown = queries.unknown_models(session, query.models)
    if unknown:
        known = sorted(queries.known_models(session))
        raise UsageError(f"--models: no results recorded for {unknown}; known: {known}")
    return query


def cmd_chains(args: argparse.Namespace) -> int:
    from api import queries, verdicts
    from store.db import make_engine, make_sessionmaker

    engine = make_engine(_recorded(args).database_url)
    try:
        with make_sessionmaker(engine)() as session:
            query = _chain_query(session, args)
            chains = [*queries.known_good_chains(session, query), *queries.split_chain_page(session, query)[0]]
            near, counts = verdicts.explain_chains(session, query)
    finally:
        engine.dispose()
    for chain in chains:  # joint chains first, then split ones; each line says which in "kind"
        print(json.dumps(chain.model_dump(mode="json")))
    # Last, as one line of its own: what was measured and the closest failures, so an empty answer explains itself.
    print(json.dumps({"environments": counts.model_dump(), "near_misses": [n.model_dump(mode="json") for n in near]}))
    if not chains:
        print("no known-good chain for that query", file=sys.stderr)
        return EXIT_NOTHING
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from api import lockfile, queries
    from store.db import make_engine, make_sessionmaker

    engine = make_engine(_recorded(args).database_url)
    try:
        with make_sessionmaker(engine)() as session:
            query = _chain_query(session, args)
            chains = [] if args.side else queries.known_good_chains(session, query)
            split = [] if chains else queries.split_chain_page(session, query)[0]
            if not chains and not (split and args.side):
                print("only split chains are known good for that query: pass --side research (the export "
                      "environment) or --side production (the runtime environment)" if split
                      else "no known-good chain for that query", file=sys.stderr)
                return EXIT_NOTHING
            try:
                sys.stdout.write(lockfile.render(session, chains[0], args.format) if chains
                                 else lockfile.render_side(session, split[0], args.side, args.format))
            except lockfile.LockfileUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    finally:
        engine.dispose()
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from knowngood import docs
    from store.db import make_engine, make_sessionmaker

    out = Path(args.out)
    _writable(out, f"--out {out}")
    engine = make_engine(_recorded(args).database_url)
    try:
        with make_sessionmaker(engine)() as session:
            path = docs.render(session, out)
    except OSError as exc:
        raise OutputUnwritable(f"--out {out}: cannot write here: {exc.strerror}") from None
    finally:
        engine.dispose()
    print(f"wrote {path}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from store import migrate

    url = _database(args).database_url
    if args.action == "upgrade":
        migrate.upgrade(url)
    elif args.action == "check":
        migrate.check(url)
    else:
        from runner.record import resignature
        from store.db import make_engine, make_sessionmaker

        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            print(f"{resignature(session)} signatures updated")
        engine.dispose()
    print(f"database {args.action}: ok")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from store import snapshot
    from store.db import make_engine, make_sessionmaker
    from store.migrate import upgrade

    if args.action == "export":
        _writable(Path(args.path), args.path)
    url = _database(args).database_url
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            if args.action == "export":
                try:
                    doc = snapshot.export(session, args.path, run_ids=args.run or None)
                except OSError as exc:
                    raise OutputUnwritable(f"{args.path}: cannot write here: {exc.strerror}") from None
                result = {"runs": len(doc.runs), "environments": len(doc.environments), "cases": len(doc.cases)}
            else:
                result = snapshot.import_(session, args.path).as_dict()
    finally:
        engine.dispose()
    print(json.dumps({args.action: args.path, **result}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from knowngood import report
    from store.db import make_engine, make_sessionmaker

    engine = make_engine(_recorded(args).database_url)
    try:
        with make_sessionmaker(engine)() as session:
            rep = report.compare(session, run=args.run, against=args.against, since=args.since)
            sys.stdout.write(report.render(rep))
    finally:
        engine.dispose()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knowngood", description=__doc__, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log uv and worker commands")
    sub = p.add_subparsers(dest="command", required=True)

    def with_db(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--db", help="database URL (default: KNOWNGOOD_DATABASE_URL or sqlite:///store.db)")
        return sp

    sp = with_db(sub.add_parser("run", help="resolve, install, execute and record a spec"))
    sp.add_argument("spec")
    sp.add_argument("--jobs", type=_positive, help="environments processed at once (default 1)")
    sp.add_argument("--shard", type=_shard, help="run only shard I of N, e.g. 2/4")
    sp.add_argument("--queue", action="store_true",
                    help="PostgreSQL: plan once into a work queue (or join this spec's unfinished one) and claim "
                    "environments from it; start the same command on as many machines as you like")
    sp.add_argument("--force", action="store_true", help="re-run cases that are already recorded")
    sp.add_argument("--resolve-only", action="store_true",
                    help="record every environment's resolution (lock or conflict) and run nothing")
    sp.add_argument("--corpus", metavar="PATH", help="run the spec's models from this file instead (see README)")
    sp.add_argument("--only", action="append", metavar="PATTERN",
                    help="only environments whose id matches (fnmatch with {a,b} braces); repeatable")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("plan", help="list environments and cases without running them")
    sp.add_argument("spec")
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.set_defaults(func=cmd_plan)

    sp = with_db(sub.add_parser("serve", help="serve the API and dashboard"))
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.set_defaults(func=cmd_serve)

    for name, func, helptext in (("chains", cmd_chains, "known-good chains as JSON lines"),
                                 ("lock", cmd_lock, "the lockfile of the best chain")):
        sp = with_db(sub.add_parser(name, help=helptext))
        sp.add_argument("--models", required=True, help="comma-separated model names")
        sp.add_argument("--route", required=True)
        if name == "lock":
            sp.add_argument("--format", default="requirements",
                            choices=["requirements", "constraints", "pylock", "pyproject"])
            sp.add_argument("--side", choices=["research", "production"],
                            help="one side of the best split chain (export or runtime environment)")
        sp.set_defaults(func=func)

    sp = with_db(sub.add_parser("docs", help="generate docs/matrix.md and its heatmaps from the database"))
    sp.add_argument("--out", default="docs", help="folder for matrix.md, heatmap-*.svg and coverage-*.svg")
    sp.set_defaults(func=cmd_docs)

    sp = with_db(sub.add_parser("db", help="database schema (Alembic)"))
    sp.add_argument("action", choices=["upgrade", "check", "resignature"],
                    help="resignature: re-normalise stored failures with the current signature rules")
    sp.set_defaults(func=cmd_db)

    sp = with_db(sub.add_parser("snapshot", help="export or import runs as a portable JSON document"))
    sp.add_argument("action", choices=["export", "import"])
    sp.add_argument("path", help="file to write or read; gzip-compressed when it ends in .gz")
    sp.add_argument("--run", action="append", help="export only this run id (repeatable)")
    sp.set_defaults(func=cmd_snapshot)

    sp = with_db(sub.add_parser("report", help="Markdown: what changed since the previous run of the same spec"))
    sp.add_argument("--run", help="run id (default: the newest run)")
    sp.add_argument("--against", default="previous", help="run id, or 'previous' (the same spec's run before)")
    sp.add_argument("--since", type=_timestamp, help="report every run of the spec started since this ISO time "
                    "(the shards of one CI run) against the state before it")
    sp.set_defaults(func=cmd_report)

    from knowngood import check
    check.add_parser(sub)
    return p


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    # In a container knowngood is PID 1, where a signal without a handler is ignored: without this, `docker stop`
    # during start-up (spec, plan, version selectors, migrations) would wait out its timeout and SIGKILL. A run
    # replaces it with its graceful stop (runner/stop.py) once it has something to record; `serve` with uvicorn's.
    if threading.current_thread() is threading.main_thread():  # (only there can a handler be installed)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KnowngoodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
