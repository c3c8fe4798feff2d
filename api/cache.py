"""Responses memoised per data version: rows are only ever added, so an answer holds until the next one is."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import queries

Key = tuple[str, tuple[tuple[str, str], ...]]
Version = tuple[int, int]
Build = Callable[[Session], Response]


class ResponseCache:
    """A bounded LRU of successful response bodies, each valid for the data version it was computed at.

    The version (max case id, max environment id: two primary-key lookups) is read at most once per `recheck`
    seconds per process, so a hit costs no database round trip and no thread hop; an answer is at most `recheck`
    seconds behind newly recorded results (0: never). `size=0` turns the cache off.
    """

    def __init__(self, size: int, recheck: float = 0.0) -> None:
        self.size = size
        self.recheck = recheck
        self._entries: OrderedDict[Key, tuple[Version, bytes, str | None, dict[str, str]]] = OrderedDict()
        self._version: Version | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    async def serve(self, request: Request, build: Build) -> Response:
        """The cached answer to this request, or `build(session)` run in the thread pool (and cached if 200)."""
        key = (request.url.path, tuple(sorted(request.query_params.multi_items())))
        if self.size and self._version is not None and time.monotonic() - self._checked_at < self.recheck:
            hit = self._get(key, self._version)
            if hit is not None:
                return hit
        return await run_in_threadpool(self._serve_sync, request, key, build)

    def clear(self) -> None:
        """Forget every answer, e.g. right after this process stored new results."""
        with self._lock:
            self._entries.clear()
            self._version = None

    def _serve_sync(self, request: Request, key: Key, build: Build) -> Response:
        with request.app.state.sessionmaker() as session:
            if not self.size:
                return build(session)
            version = queries.data_version(session)
            with self._lock:
                self._version, self._checked_at = version, time.monotonic()
            hit = self._get(key, version)
            if hit is not None:
                return hit
            response = build(session)
        if response.status_code == 200:
            headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
            with self._lock:
                self._entries[key] = (version, bytes(response.body), response.media_type, headers)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return response

    def _get(self, key: Key, version: Version) -> Response | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(key)
        return Response(content=entry[1], media_type=entry[2], headers=entry[3])


async def get_cache(request: Request) -> ResponseCache:  # async: no thread hop on the hot path
    return request.app.state.response_cache  # type: ignore[no-any-return]


CacheDep = Annotated[ResponseCache, Depends(get_cache)]
