"""GET /chains: known-good chains for a set of models on a route."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api import queries
from api.deps import SessionDep
from api.schemas import ChainsOut

router = APIRouter(tags=["chains"])

ModelsParam = Annotated[str, Query(description="comma-separated model names, e.g. resnet,transformer")]
RouteParam = Annotated[str, Query(description="onnxruntime | onnx2tf | onnx-tf")]
RequireParam = Annotated[list[str] | None, Query(description="PEP 508 pins, repeatable: require=torch>=2.3")]


def parse_query(
    session: SessionDep, models: str, route: str, exporter: str | None, python: str | None,
    require: list[str] | None,
) -> queries.ChainQuery:
    """Shared by /chains and /lockfile: parse, then check names against what is recorded."""
    from runner.worker.routes import EXPORTERS, ROUTES

    query = queries.ChainQuery.parse(models, route, exporter=exporter, python=python, require=require)
    if route not in ROUTES:
        raise queries.QueryError("route", f"expected one of {', '.join(ROUTES)}, got {route!r}")
    if exporter is not None and exporter not in EXPORTERS:
        raise queries.QueryError("exporter", f"expected one of {', '.join(EXPORTERS)}, got {exporter!r}")
    known = queries.known_models(session)
    unknown = [m for m in query.models if m not in known]
    if unknown:
        raise queries.QueryError("models", f"no results recorded for {unknown}; known: {sorted(known)}")
    return query


@router.get("/chains", response_model=ChainsOut)
def chains(
    session: SessionDep, models: ModelsParam, route: RouteParam, exporter: str | None = None,
    python: str | None = None, require: RequireParam = None,
) -> ChainsOut:
    query = parse_query(session, models, route, exporter, python, require)
    return ChainsOut(models=list(query.models), route=route, chains=queries.known_good_chains(session, query))
