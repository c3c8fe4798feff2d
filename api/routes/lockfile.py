"""GET /lockfile: the pinned environment of the best known-good chain, as text."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import PlainTextResponse

from api import lockfile, queries
from api.deps import SessionDep
from api.routes.chains import ModelsParam, RequireParam, RouteParam, parse_query

router = APIRouter(tags=["lockfile"])


@router.get("/lockfile", response_class=PlainTextResponse)
def get_lockfile(
    session: SessionDep, models: ModelsParam, route: RouteParam, exporter: str | None = None,
    python: str | None = None, require: RequireParam = None,
    format: Literal["requirements", "constraints"] = "requirements",
) -> PlainTextResponse:
    query = parse_query(session, models, route, exporter, python, require)
    chains = queries.known_good_chains(session, query)
    if not chains:
        raise HTTPException(404, detail="no known-good chain for these models, route and requirements")
    return PlainTextResponse(lockfile.render(session, chains[0], format))
