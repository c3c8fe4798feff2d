"""GET /lockfile: the pinned environment of the best known-good chain, as text."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
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
    side: Annotated[Literal["research", "production"] | None, Query(
        description="a split chain is two lockfiles: research (the export environment, torch) or production "
                    "(the runtime environment, no torch); without it, the best joint chain")] = None,
    target: TargetParam = None,
) -> Response:
    """The best chain's environment as requirements (hashed), constraints, pylock.toml (PEP 751) or pyproject;
    with `side`, one side of the best split chain."""
    def build(session: Session) -> Response:
        query = parse_query(session, models, route, exporter, python, require, limit=1, target=target)
        facts, indexes = request.app.state.env_facts, request.app.state.settings.pylock_indexes
        if side is None:
            chains = queries.known_good_chains(session, query, facts)
            if chains:
                return text_response(lockfile.render(session, chains[0], format, indexes), format)
        split, _ = queries.split_chain_page(session, query, facts)
        if split and side is not None:
            return text_response(lockfile.render_side(session, split[0], side, format, indexes), format)
        if split:
            raise HTTPException(409, detail="only split chains are known good for these models, route and "
                                "requirements: ask for side=research (the export environment) and side=production "
                                "(the runtime environment), one lockfile each")
        raise HTTPException(404, detail="no known-good chain for these models, route and requirements")

    return await cache.serve(request, build)


def text_response(text: str, fmt: str) -> PlainTextResponse:
    return PlainTextResponse(text, headers={"Content-Disposition": f'inline; filename="{lockfile.FILENAMES[fmt]}"'})
