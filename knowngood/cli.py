"""Command line: run | plan | serve | chains | lock | db upgrade|check. Each body delegates."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence

from matrix.spec import SpecError
from store.errors import KnowngoodError
from store.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"database_url": args.db} if getattr(args, "db", None) else {}
    if getattr(args, "jobs", None):
        overrides["jobs"] = args.jobs
    return Settings(**overrides)


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

    settings = _settings(args)
    ensure_head(settings.database_url)
    summary = run(args.spec, settings, force=args.force, shard=args.shard, only=args.only, corpus=args.corpus,
                  resolve_only=args.resolve_only)
    print(json.dumps({"run": summary.run_id, "environments": dict(summary.environments),
                      "cases": dict(summary.cases), "skipped_recorded": summary.skipped_recorded,
                      "installs": summary.installs, "seconds": round(summary.seconds, 1)}))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from matrix import expand, spec, versions
    from runner import uv

    loaded = spec.load(args.spec)
    plan = expand.plan(loaded, index=uv.index_settings(), selectors=versions.resolve_selectors(loaded))
    envs = [{"id": env.id, "hash": env.hash, "python": env.python, "requirements": list(env.requirements),
             "cases": [c.key for c in cases]} for env, cases in plan.items]
    if args.format == "json":
        print(json.dumps({"spec": plan.spec.name, "corpus_version": plan.corpus_version,
                          "environments": envs, "cases": plan.case_count}, indent=2))
    else:
        for env in envs:
            print(f"{env['id']}  ({len(env['cases'])} cases)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from store.migrate import upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    print(f"serving http://{args.host}:{args.port}/  (API under /api/v1, docs at /docs)", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_chains(args: argparse.Namespace) -> int:
    from api import queries, verdicts
    from store.db import make_engine, make_sessionmaker

    engine = make_engine(_settings(args).database_url)
    with make_sessionmaker(engine)() as session:
        query = queries.ChainQuery.parse(args.models, args.route)
        chains = queries.known_good_chains(session, query)
        near, counts = verdicts.explain_chains(session, query)
    for chain in chains:
        print(json.dumps(chain.model_dump(mode="json")))
    # Last, as one line of its own: what was measured and the closest failures, so an empty answer explains itself.
    print(json.dumps({"environments": counts.model_dump(), "near_misses": [n.model_dump(mode="json") for n in near]}))
    return 0 if chains else 1


def cmd_lock(args: argparse.Namespace) -> int:
    from api import lockfile, queries
    from store.db import make_engine, make_sessionmaker

    engine = make_engine(_settings(args).database_url)
    with make_sessionmaker(engine)() as session:
        query = queries.ChainQuery.parse(args.models, args.route)
        chains = queries.known_good_chains(session, query)
        if not chains:
            print("no known-good chain for that query", file=sys.stderr)
            return 1
        try:
            sys.stdout.write(lockfile.render(session, chains[0], args.format))
        except lockfile.LockfileUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from knowngood import docs
    from store.db import make_engine, make_sessionmaker

    engine = make_engine(_settings(args).database_url)
    with make_sessionmaker(engine)() as session:
        path = docs.render(session, Path(args.out))
    engine.dispose()
    print(f"wrote {path}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from store import migrate

    url = _settings(args).database_url
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

    url = _settings(args).database_url
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            if args.action == "export":
                doc = snapshot.export(session, args.path, run_ids=args.run or None)
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

    engine = make_engine(_settings(args).database_url)
    try:
        with make_sessionmaker(engine)() as session:
            rep = report.compare(session, run=args.run, against=args.against, since=args.since)
            sys.stdout.write(report.render(rep))
    finally:
        engine.dispose()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knowngood", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log uv and worker commands")
    sub = p.add_subparsers(dest="command", required=True)

    def with_db(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--db", help="database URL (default: KNOWNGOOD_DATABASE_URL or sqlite:///store.db)")
        return sp

    sp = with_db(sub.add_parser("run", help="resolve, install, execute and record a spec"))
    sp.add_argument("spec")
    sp.add_argument("--jobs", type=int)
    sp.add_argument("--shard", type=_shard, help="run only shard I of N, e.g. 2/4")
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
        sp.set_defaults(func=func)

    sp = with_db(sub.add_parser("docs", help="generate docs/matrix.md and its heatmaps from the database"))
    sp.add_argument("--out", default="docs", help="folder for matrix.md and heatmap-*.svg")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KnowngoodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
