"""GET /runs, /runs/{id}, /environments/{id} and an environment's own lockfile."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse

from api import lockfile, queries
from api.deps import SessionDep, SettingsDep
from api.routes.lockfile import text_response
from api.routes.params import errors, json_response
from api.schemas import EnvironmentOut, RunDetailOut, RunsOut

router = APIRouter(tags=["runs"])

# Ids are 32-bit integers in the database: a larger one is simply not there, not a server error.
EnvironmentId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("/runs", response_model=RunsOut)
def list_runs(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """Runs, newest first, with their cases counted by status."""
    return json_response(queries.runs(session, limit, offset))


@router.get("/runs/{run_id}", response_model=RunDetailOut, responses=errors(404))
def get_run(session: SessionDep, run_id: str) -> Response:
    """One run and the environments it recorded cases in."""
    run = queries.run_detail(session, run_id)
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return json_response(run)


@router.get("/environments/{env_id}", response_model=EnvironmentOut, responses=errors(404))
def get_environment(request: Request, session: SessionDep, settings: SettingsDep, env_id: EnvironmentId) -> Response:
    """An environment: its request, resolved packages, and every case with its steps and signatures."""
    env = queries.environment_detail(session, env_id)
    if env is None:
        raise HTTPException(404, detail=f"no environment {env_id}")
    if env.lock_hash:
        # Never from the Host header (anyone can send one): the configured public URL, else a host-relative link.
        base = (settings.public_url or "").rstrip("/") or request.scope.get("root_path", "")
        path = request.app.url_path_for("get_environment_lockfile", env_id=env_id)
        env.lockfiles = {fmt: f"{base}{path}?format={fmt}" for fmt in lockfile.FORMATS}
    return json_response(env)  # built and validated once, from the query; not validated again on the way out


@router.get("/environments/{env_id}/lockfile", response_class=PlainTextResponse, responses=errors(404, 409, 502))
def get_environment_lockfile(
    session: SessionDep, settings: SettingsDep, env_id: EnvironmentId, format: lockfile.Format = "requirements",
) -> Response:
    """This environment's lockfile, whatever its results: stamped with the newest run that recorded cases in it."""
    env = queries.environment_row(session, env_id)
    if env is None:
        raise HTTPException(404, detail=f"no environment {env_id}")
    text = lockfile.render_environment(env, queries.environment_provenance(session, env_id), format,
                                       settings.pylock_indexes)
    return text_response(text, format)
