"""GET /lockfile: the pinned environment of the best known-good chain, as text."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

from api import lockfile, queries
from api.cache import CacheDep
from api.routes.chains import parse_query
from api.routes.params import ExporterParam, ModelsParam, PythonParam, RequireParam, RouteParam, TargetParam, errors

router = APIRouter(tags=["lockfile"])


@router.get("/lockfile", response_class=PlainTextResponse, responses=errors(404, 409, 502))
async def get_lockfile(
    request: Request, cache: CacheDep, models: ModelsParam, route: RouteParam, exporter: ExporterParam = None,
    python: PythonParam = None, require: RequireParam = None, format: lockfile.Format = "requirements",
    target: TargetParam = None,
) -> Response:
    """The best chain's environment as requirements (hashed), constraints, pylock.toml (PEP 751) or pyproject."""
    def build(session: Session) -> Response:
        query = parse_query(session, models, route, exporter, python, require, limit=1, target=target)
        chains = queries.known_good_chains(session, query, request.app.state.env_facts)
        if not chains:
            raise HTTPException(404, detail="no known-good chain for these models, route and requirements")
        return text_response(lockfile.render(session, chains[0], format), format)

    return await cache.serve(request, build)


def text_response(text: str, fmt: str) -> PlainTextResponse:
    return PlainTextResponse(text, headers={"Content-Disposition": f'inline; filename="{lockfile.FILENAMES[fmt]}"'})
