"""POST /runs: store a remote runner's results, sent as a snapshot document, behind a bearer token."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SessionDep, SettingsDep
from store import snapshot
from store.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="KNOWNGOOD_INGEST_TOKEN of the server")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def check_token(settings: Settings, authorization: str | None) -> None:
    """401 unless the header carries the configured token; with no token configured, ingest is closed (401)."""
    if not settings.ingest_token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "ingest is disabled: the server has no "
                            "KNOWNGOOD_INGEST_TOKEN configured", headers=_CHALLENGE)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "expected an 'Authorization: Bearer <token>' header",
                            headers=_CHALLENGE)
    if not secrets.compare_digest(token.strip().encode(), settings.ingest_token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong ingest token", headers=_CHALLENGE)


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The same check as a dependency: it puts the bearer scheme in the OpenAPI document."""
    check_token(settings, None if credentials is None else f"Bearer {credentials.credentials}")


def _too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"the body is larger than {limit} bytes (KNOWNGOOD_INGEST_MAX_BYTES)")


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed `limit`: from Content-Length before reading a byte,
    else (chunked, or a length that lies) by counting while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class GuardedRoute(APIRoute):
    """Checks the token, then the size, before FastAPI reads and parses the body into the route's model.

    FastAPI reads the body before it runs any dependency, so `require_token` alone would let anyone make the
    server buffer and parse a document of any size. The body read here is kept on the request (Starlette's
    `_body`), which is where FastAPI's own reading finds it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            check_token(settings, request.headers.get("authorization"))
            request._body = await read_capped(request, settings.ingest_max_bytes)
            return await handler(request)

        return guarded


router = APIRouter(tags=["ingest"], route_class=GuardedRoute)


@router.post(
    "/runs",
    dependencies=[Depends(require_token)],
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "everything in the document was already stored"},
               400: {"description": "the body is not JSON"},
               401: {"description": "missing or wrong token, or ingest disabled"},
               413: {"description": "the body is larger than KNOWNGOOD_INGEST_MAX_BYTES"}},
)
def ingest(doc: snapshot.Snapshot, session: SessionDep, request: Request, response: Response) -> dict[str, Any]:
    """Store runs, environments, cases and steps; idempotent on natural keys, all or nothing."""
    stored = snapshot.store(session, doc)
    if not stored.changed:
        response.status_code = status.HTTP_200_OK
    else:
        cache = getattr(request.app.state, "response_cache", None)
        if cache is not None:
            cache.clear()  # new results (or a run now finished) show at once
    return stored.as_dict()
