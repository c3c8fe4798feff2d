"""GET /failures: signatures with counts, the versions between which each was seen, and one example."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from api import queries
from api.cache import CacheDep
from api.routes.params import (
    ExporterParam,
    OptionalModelsParam,
    OptionalRouteParam,
    PythonParam,
    check_case_filters,
    check_packages,
    json_response,
)
from api.schemas import FailuresOut

router = APIRouter(tags=["failures"])


@router.get("/failures", response_model=FailuresOut)
async def failures(
    request: Request, cache: CacheDep,
    package: Annotated[str, Query(description="whose versions bound each signature")] = "torch",
    route: OptionalRouteParam = None, models: OptionalModelsParam = None, exporter: ExporterParam = None,
    python: PythonParam = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Most frequent signatures first; resolution conflicts count once per environment."""
    def build(session: Session) -> Response:
        query = queries.FailureQuery(package=package, route=route, models=tuple(queries.split_names(models)),
                                     exporter=exporter, python=python, limit=limit)
        check_case_filters(session, route, exporter, query.models)
        check_packages(session, "package", [package])
        return json_response(queries.failures(session, query))

    return await cache.serve(request, build)
