"""GET /: the dashboard, one self-contained page (HTML, CSS, JavaScript) that reads /api/v1 and nothing else."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from api import queries
from api.cache import CacheDep

router = APIRouter(include_in_schema=False)

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "dashboard.html"


@lru_cache(maxsize=1)
def _template() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, cache: CacheDep) -> Response:
    """The page, with the values its controls offer (models, routes, packages…) embedded as JSON."""
    def build(session: Session) -> Response:
        # "<" escaped so that no recorded name can close the <script> element it is embedded in.
        facets = json.dumps(queries.facets(session)).replace("<", "\\u003c")
        return HTMLResponse(_template().replace("/*FACETS*/null", facets))

    return await cache.serve(request, build)
