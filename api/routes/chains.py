"""GET /chains: known-good chains for a set of models on a route."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from api import queries, verdicts
from api.cache import CacheDep
from api.routes.params import (
    ExporterParam,
    ModelsParam,
    PythonParam,
    RequireParam,
    RouteParam,
    TargetParam,
    check_case_filters,
    check_exporter,
    check_names,
    check_route,
    check_target,
    json_response,
)
from api.schemas import ChainsOut

router = APIRouter(tags=["chains"])

LimitParam = Annotated[int, Query(ge=1, le=1000, description="at most this many chains, best first")]


def parse_query(
    session: Session, models: list[str], route: str, exporter: str | None, python: str | None,
    require: list[str] | None, limit: int | None = None, target: str | None = None,
) -> queries.ChainQuery:
    """Shared by /chains and /lockfile: parse, then check names against what is recorded."""
    query = queries.ChainQuery.parse(models, route, exporter=exporter, python=python, require=require, limit=limit,
                                     target=target)
    check_case_filters(session, route, exporter, query.models, target, require=[r.name for r in query.require])
    return query


@router.get("/chains", response_model=ChainsOut)
async def chains(
    request: Request, cache: CacheDep, models: ModelsParam, route: RouteParam, exporter: ExporterParam = None,
    python: PythonParam = None, require: RequireParam = None, limit: LimitParam = 20, target: TargetParam = None,
) -> Response:
    """Known-good chains, newest versions first, each with its evidence (run, date, per-model parity): joint
    chains (one environment) in `chains`, split chains (export environment → runtime environment) in
    `split_chains`.

    Beside them: the closest failing environments (`near_misses`, with step and signature) and how many
    environments were measured, resolved only or unresolvable for the query, so an empty answer says why.
    """
    def build(session: Session) -> Response:
        query = queries.ChainQuery.parse(models, route, exporter=exporter, python=python, require=require,
                                         limit=limit, target=target)
        check_route(route)
        check_exporter(exporter)
        check_target(target)
        facts = request.app.state.env_facts
        # The route's slice of the outcome table and split pairs, and the environments counted, answer both the chains
        # (when no target narrows them) and why not; the names are then checked against what it read, as
        # parse_query checks them up front.
        view = verdicts.chains_view(session, query, facts)
        required = [r.name for r in query.require]
        check_names(session, query.models, required, recorded=view.recorded(),
                    pinned=view.names() if required else ())
        candidates = None if query.target else view.complete()
        page, total = queries.known_good_chain_page(session, query, facts, candidates, view.version)
        pairs = None if query.target else view.complete_pairs()
        split, split_total = queries.split_chain_page(session, query, facts, pairs)
        near, counts = verdicts.explain_chains(session, query, facts, view)
        return json_response(ChainsOut(models=list(query.models), route=route, chains=page, total=total,
                                       split_chains=split, split_total=split_total,
                                       near_misses=near, environments=counts))

    return await cache.serve(request, build)
