"""create_app(settings) → FastAPI: /api/v1 routers and the dashboard at /."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from api.cache import CacheMiddleware, ResponseCache
from api.lockfile import LockfileUnavailable
from api.queries import FactsCache, QueryError
from api.routes import chains, check, dashboard, failures, feed, ingest, lockfile, matrix, runs
from api.routes.params import reject_nul
from store import __version__
from store.db import make_engine, make_sessionmaker
from store.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
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
    app.state.env_facts = FactsCache()  # one per database: the app's engine
    app.state.response_cache = ResponseCache(settings.response_cache_size, settings.response_cache_recheck)
    app.add_middleware(CacheMiddleware, cache=app.state.response_cache)

    @app.exception_handler(QueryError)
    def _query_error(_request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["query", exc.param], "msg": str(exc), "type": "value_error"}]},
        )

    @app.exception_handler(LockfileUnavailable)
    def _lockfile_unavailable(_request: Request, exc: LockfileUnavailable) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    read_only = [Depends(reject_nul)]
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
