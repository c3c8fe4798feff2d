"""create_app(settings) → FastAPI: /api/v1 routers and the dashboard at /."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.cache import CacheMiddleware, ResponseCache
from api.lockfile import LockfileUnavailable
from api.queries import FactsCache, QueryError
from api.routes import chains, check, dashboard, failures, feed, ingest, lockfile, matrix, runs
from api.routes.params import reject_nul, reject_repeats
from store import __version__
from store.db import make_engine, make_sessionmaker
from store.settings import Settings


class AllowEveryMethod:
    """A 405 lists every method of every route at the path (RFC 9110 15.5.6), not just the first route's.

    Starlette answers 405 from the first route whose path matched, so OPTIONS /api/v1/runs said `Allow: GET`
    though POST /api/v1/runs exists too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = sorted({m for route in scope["app"].routes if isinstance(route, Route)
                                  and route.path_regex.match(scope["path"]) for m in route.methods or ()})
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", ", ".join(methods).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_allow)


def create_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Build every route's parameter schemas now, once: pydantic builds some lazily on first use, and several
        # first requests at once race that build (seen as a spurious error under concurrent ingests).
        app.openapi()
        # What exists now (FastAPI, pydantic, SQLAlchemy, the routes) lives as long as the server: out of the
        # collector's sight, so that a full collection walks what requests left behind rather than every module.
        # Unfrozen, one took hundreds of milliseconds under load every dozen checks: POST /check's p99 (issue 14).
        gc.freeze()
        yield
        gc.unfreeze()  # an app made and dropped in one process (tests) leaves no frozen garbage behind
        engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="knowngood",
        version=__version__,
        description="Which versions of PyTorch, ONNX, ONNX Runtime, TensorFlow and converters work together.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    # Answers read without a transaction on PostgreSQL: under READ COMMITTED each statement takes its own snapshot
    # either way, and BEGIN and the ROLLBACK at the end were two of a request's round trips (issue 14). SQLite keeps
    # its transaction, the one snapshot of a WAL reader, which costs no round trip.
    reads = engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else engine
    app.state.read_sessionmaker = make_sessionmaker(reads)
    # One per database (the app's engine); the answers and the response cache read the data version alike.
    app.state.env_facts = FactsCache(recheck=settings.response_cache_recheck)
    app.state.response_cache = ResponseCache(settings.response_cache_size, app.state.env_facts.version)
    app.add_middleware(CacheMiddleware, cache=app.state.response_cache)
    app.add_middleware(AllowEveryMethod)

    @app.exception_handler(QueryError)
    def _query_error(_request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["query", exc.param], "msg": str(exc), "type": "value_error"}]},
        )

    @app.exception_handler(RequestValidationError)
    def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each error's input: for a document-level check of POST /runs that is the
        # whole body (megabytes), and a NaN in it makes the 422 itself fail to encode (a 500). Path and message
        # say what is wrong.
        errors = [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(LockfileUnavailable)
    def _lockfile_unavailable(_request: Request, exc: LockfileUnavailable) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    read_only = [Depends(reject_nul), Depends(reject_repeats)]
    app.include_router(chains.router, prefix="/api/v1", dependencies=read_only)
    app.include_router(lockfile.router, prefix="/api/v1", dependencies=read_only)
    app.include_router(matrix.router, prefix="/api/v1", dependencies=read_only)
    app.include_router(failures.router, prefix="/api/v1", dependencies=read_only)
    app.include_router(runs.router, prefix="/api/v1", dependencies=read_only)
    app.include_router(check.router, prefix="/api/v1", dependencies=read_only)
    app.include_router(feed.router, prefix="/api/v1", dependencies=read_only)
    app.include_router(ingest.router, prefix="/api/v1")
    app.include_router(dashboard.router, dependencies=read_only)
    return app
