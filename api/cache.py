"""Responses memoised per data version: an answer holds until the store's change counter moves."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, Request, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api import queries

Key = tuple[str, tuple[tuple[str, str], ...]]
Version = int
Build = Callable[[Session], Response]


def cache_key(path: str, query_string: bytes) -> Key:
    # Parsed as Starlette parses it, then ordered by name only: `?a=1&b=2` and `?b=2&a=1` are one question, but
    # the values of a repeated name keep their order (`models=a&models=b` answers in that order, and a repeated
    # single-valued name is refused, not merged), so two keys are equal only if the questions are.
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return path, tuple(sorted(pairs, key=lambda pair: pair[0]))


@dataclass(frozen=True)
class Entry:
    version: Version
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]


class ResponseCache:
    """A bounded LRU of successful response bodies, each valid for the data version it was computed at.

    The version (the `data_change` counter, one primary-key lookup; triggers move it on every insert, update or
    delete, so `db resignature` and a run being finished show too) is read at most once per `recheck` seconds
    per process (queries.DataVersion, shared with the answers' own index). Within that window a hit is answered
    by `CacheMiddleware` before routing: no parameter parsing, no thread hop, no database round trip. An answer is
    therefore at most `recheck` seconds behind newly changed results (0: checked on every request). `size=0` turns
    the cache off.
    """

    def __init__(self, size: int, version: queries.DataVersion | None = None) -> None:
        self.size = size
        self.version = version or queries.DataVersion()
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, key: Key) -> Entry | None:
        """The entry for `key` if the data version was confirmed less than `recheck` seconds ago."""
        version = self.version.held() if self.size else None
        return None if version is None else self._get(key, version)

    async def serve(self, request: Request, build: Build) -> Response:
        """The cached answer to this request, or `build(session)` run in the thread pool (and cached if 200)."""
        read_ahead(self.version, request.app.state.read_sessionmaker)
        return await run_in_threadpool(self._serve_sync, request, build)

    def clear(self) -> None:
        """Forget every answer, e.g. right after this process stored new results."""
        with self._lock:
            self._entries.clear()
        self.version.forget()

    def _serve_sync(self, request: Request, build: Build) -> Response:
        key = cache_key(request.scope["path"], request.scope["query_string"])
        with request.app.state.read_sessionmaker() as session:
            if not self.size:
                return build(session)
            version = self.version.read(session)
            entry = self._get(key, version)
            if entry is not None:
                return Response(content=entry.body, headers={k.decode(): v.decode() for k, v in entry.headers})
            response = build(session)
        if response.status_code == 200:
            headers = tuple((k, v) for k, v in response.raw_headers if k != b"content-length")
            with self._lock:
                self._entries[key] = Entry(version, bytes(response.body), headers)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return response

    def _get(self, key: Key, version: Version) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.version != version:
                return None
            self._entries.move_to_end(key)
        return entry


def read_ahead(version: queries.DataVersion, sessions: sessionmaker[Session]) -> None:
    """When DataVersion.ahead() says so, read the data version again in the thread pool, where no answer waits for
    it. Called on the event loop by the answers that read the version: cache hits, POST /check, and the cached
    routes before they go to the thread pool."""
    if version.ahead():
        task = asyncio.get_running_loop().create_task(run_in_threadpool(_read_ahead, version, sessions))
        _READS.add(task)  # held until done: the loop keeps only a weak reference to a task
        task.add_done_callback(_READS.discard)


_READS: set[asyncio.Task[Any]] = set()


def _read_ahead(version: queries.DataVersion, sessions: sessionmaker[Session]) -> None:
    try:
        with sessions() as session:
            version.read_ahead(session)
    except SQLAlchemyError:
        pass  # the version is then read by the next answer that needs it, which reports what went wrong


class CacheMiddleware:
    """Answers GET requests whose response is cached and fresh before they reach routing; passes the rest on."""

    def __init__(self, app: ASGIApp, cache: ResponseCache) -> None:
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            entry = self.cache.fresh(cache_key(scope["path"], scope["query_string"]))
            if entry is not None:
                read_ahead(self.cache.version, scope["app"].state.read_sessionmaker)
                headers = [*entry.headers, (b"content-length", str(len(entry.body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": entry.body})
                return
        await self.app(scope, receive, send)


async def get_cache(request: Request) -> ResponseCache:  # async: no thread hop
    return request.app.state.response_cache  # type: ignore[no-any-return]


CacheDep = Annotated[ResponseCache, Depends(get_cache)]
