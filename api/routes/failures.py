"""GET /failures: signatures with counts, the versions between which each was seen, and one example."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from api import queries
from api.cache import CacheDep
from api.routes.params import (
    ExporterParam,
    KindParam,
    OptionalModelsParam,
    OptionalRouteParam,
    PythonParam,
    TargetFilterParam,
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
    target: TargetFilterParam = None, kind: KindParam = None,
) -> Response:
    """Most frequent signatures first; resolution conflicts count once per environment.

    Each signature is split into `slices` of one target and one environment kind; a runtime side's example
    names the export environments (their torch) whose graph it ran.
    """
    def build(session: Session) -> Response:
        query = queries.FailureQuery(package=package, route=route, models=tuple(queries.split_names(models)),
                                     exporter=exporter, python=python, limit=limit, target=target,
                                     kind=kind)
        check_case_filters(session, route, exporter, query.models, target, kind)
        check_packages(session, "package", [package])
        return json_response(queries.failures(session, query))

    return await cache.serve(request, build)
