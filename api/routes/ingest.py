"""POST /runs: store a remote runner's results, sent as a snapshot document, behind a bearer token."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SessionDep, SettingsDep
from store import snapshot

router = APIRouter(tags=["ingest"])

_bearer = HTTPBearer(auto_error=False, description="KNOWNGOOD_INGEST_TOKEN of the server")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless the request carries the configured token; with no token configured, ingest is closed (401)."""
    if not settings.ingest_token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "ingest is disabled: the server has no "
                            "KNOWNGOOD_INGEST_TOKEN configured", headers=_CHALLENGE)
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "expected an 'Authorization: Bearer <token>' header",
                            headers=_CHALLENGE)
    if not secrets.compare_digest(credentials.credentials.encode(), settings.ingest_token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong ingest token", headers=_CHALLENGE)


@router.post(
    "/runs",
    dependencies=[Depends(require_token)],
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "everything in the document was already stored"},
               400: {"description": "the body is not JSON"},
               401: {"description": "missing or wrong token, or ingest disabled"}},
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
