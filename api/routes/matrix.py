"""GET /matrix: versions of one package against another's, each cell pass, fail or mixed with counts."""

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
from api.schemas import MatrixOut

router = APIRouter(tags=["matrix"])

AxisParam = Annotated[str, Query(description="a package name; tensorflow also covers tensorflow-cpu")]


@router.get("/matrix", response_model=MatrixOut)
async def matrix(
    request: Request, cache: CacheDep, x: AxisParam = "torch", y: AxisParam = "tensorflow",
    route: OptionalRouteParam = None, models: OptionalModelsParam = None, exporter: ExporterParam = None,
    python: PythonParam = None, target: TargetFilterParam = None, kind: KindParam = None,
) -> Response:
    """The grid behind the dashboard, for the chosen models and route (all when omitted).

    Each cell is one target in environments of one kind: split chains (kind runtime) are placed by the export
    side's torch and the runtime side's pins, and never share a cell with joint environments.
    """
    def build(session: Session) -> Response:
        query = queries.MatrixQuery(x=x, y=y, route=route, models=tuple(queries.split_names(models)),
                                    exporter=exporter, python=python, target=target, kind=kind)
        check_case_filters(session, route, exporter, query.models, target, kind)
        check_packages(session, "x", [x])
        check_packages(session, "y", [y])
        return json_response(queries.matrix_grid(session, query))

    return await cache.serve(request, build)
