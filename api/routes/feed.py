"""GET /feed.atom (new failures and passes per run) and GET /badge (a shields.io endpoint for a chain query)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api import feed, queries
from api.cache import CacheDep
from api.routes.chains import parse_query
from api.routes.params import ExporterParam, ModelsParam, PythonParam, RequireParam, RouteParam, json_response

router = APIRouter(tags=["feed"])


class BadgeOut(BaseModel):
    """https://shields.io/badges/endpoint-badge: `https://img.shields.io/endpoint?url=<this URL, encoded>`."""

    # camelCase: these are shields.io's field names.
    schemaVersion: int = 1
    label: str
    message: str
    color: str
    isError: bool = Field(default=False)


@router.get("/feed.atom", response_class=Response, responses={
    200: {"description": "Atom 1.0", "content": {"application/atom+xml": {"schema": {"type": "string"}}}}})
async def feed_atom(
    request: Request, cache: CacheDep,
    limit: Annotated[int, Query(ge=1, le=200, description="the newest runs, one entry each")] = 20,
) -> Response:
    """One entry per run: the cells it turned failing and the cells it turned passing, as `knowngood report`."""
    def build(session: Session) -> Response:
        text = feed.atom(feed.run_changes(session, limit), str(request.base_url))
        return Response(content=text, media_type="application/atom+xml")

    return await cache.serve(request, build)


@router.get("/badge", response_model=BadgeOut)
async def badge(
    request: Request, cache: CacheDep, models: ModelsParam, route: RouteParam, exporter: ExporterParam = None,
    python: PythonParam = None, require: RequireParam = None,
) -> Response:
    """The best known-good chain's torch and runtime/converter versions, or red when there is none."""
    def build(session: Session) -> Response:
        query = parse_query(session, models, route, exporter, python, require, limit=1)
        page, _total = queries.known_good_chain_page(session, query, request.app.state.env_facts)
        label = f"{', '.join(query.models)} → {route}"
        if not page:
            return json_response(BadgeOut(label=label, message="no known-good chain", color="red"))
        versions = page[0].versions
        shown = [n for n in ("torch", route if route in versions else "onnxruntime", "tensorflow-cpu", "tensorflow")
                 if n in versions]
        message = " · ".join(f"{n.removesuffix('-cpu')} {versions[n]}" for n in dict.fromkeys(shown))
        return json_response(BadgeOut(label=label, message=message, color="brightgreen"))

    return await cache.serve(request, build)
