"""create_app(settings) → FastAPI: /api/v1 routers and the dashboard at /."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.queries import QueryError
from api.routes import chains, dashboard, ingest, lockfile
from knowngood import __version__
from knowngood.db import make_engine, make_sessionmaker
from knowngood.settings import Settings


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

    @app.exception_handler(QueryError)
    def _query_error(_request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["query", exc.param], "msg": str(exc), "type": "value_error"}]},
        )

    app.include_router(chains.router, prefix="/api/v1")
    app.include_router(lockfile.router, prefix="/api/v1")
    app.include_router(ingest.router, prefix="/api/v1")
    app.include_router(dashboard.router)
    return app
