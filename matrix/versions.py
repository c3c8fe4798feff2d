"""The package index: its URL (the one default), its project pages (the one HTTP client), and version selectors
→ concrete versions read from it (PEP 691/700 JSON, PEP 503 HTML)."""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from matrix.spec import LatestMinors, Spec
from store.db import as_utc
from store.errors import KnowngoodError

DEFAULT_INDEX = "https://pypi.org/simple"  # uv's default too: what an environment without index settings used
# PEP 691 JSON first; PEP 503 HTML for indexes (e.g. download.pytorch.org) that only speak that.
ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"

Fetcher = Callable[[str], list[tuple[str, dt.datetime | None]]]


class IndexUnavailable(KnowngoodError):
    """The index did not answer for a project; `status` is its HTTP status, None when it could not be reached."""

    exit_code = 5

    def __init__(self, index: str, name: str, status: int | None, reason: str) -> None:
        super().__init__(f"index {index}: {name}: {reason}")
        self.index, self.name, self.status = index, name, status


def index_url(settings: Mapping[str, str] | None = None) -> str:
    """The index uv resolves against under these settings (UV_* variables; the process environment if None)."""
    settings = os.environ if settings is None else settings
    return settings.get("UV_DEFAULT_INDEX") or settings.get("UV_INDEX_URL") or DEFAULT_INDEX


@dataclass(frozen=True)
class ProjectPage:
    """A project's simple-index page: its address (file URLs are relative to it), versions and files, each file
    as a PEP 691 dict (filename, url, hashes, and where the index gives them upload-time, size, yanked)."""

    url: str
    versions: tuple[str, ...]
    files: tuple[dict[str, Any], ...]


def fetch_project(name: str, index: str | None = None, *, timeout: float = 60) -> ProjectPage:
    """Read `name`'s page from the index, as JSON where the index speaks it, else as PEP 503 HTML."""
    index = index or index_url()
    page = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
    request = urllib.request.Request(page, headers={"Accept": ACCEPT, "User-Agent": "knowngood"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "")
            body = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # the error is also the response: its socket stays open until closed
        reason = "not on the index" if exc.code == 404 else f"answered HTTP {exc.code}"
        raise IndexUnavailable(index, name, exc.code, reason) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise IndexUnavailable(index, name, None, f"could not be reached: {getattr(exc, 'reason', exc)}") from None
    if "json" in content_type:
        data = json.loads(body)
        return ProjectPage(page, tuple(data.get("versions", [])), tuple(data.get("files", [])))
    parser = _Anchors()
    parser.feed(body.decode("utf-8", "replace"))
    return ProjectPage(page, (), tuple(parser.files))


class _Anchors(HTMLParser):
    """PEP 503: one anchor per file, its hash in the URL fragment, yanked files marked data-yanked."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[dict[str, Any]] = []
        self._attrs: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._attrs, self._text = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._attrs is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._attrs and self._attrs.get("href"):
            url, _, fragment = str(self._attrs["href"]).partition("#")
            algo, _, digest = fragment.partition("=")
            filename = "".join(self._text).strip() or urllib.parse.unquote(url.rsplit("/", 1)[-1])
            entry: dict[str, Any] = {"filename": filename, "url": url, "hashes": {algo: digest} if digest else {}}
            if "data-yanked" in self._attrs:
                entry["yanked"] = self._attrs["data-yanked"] or True
            self.files.append(entry)
        if tag == "a":
            self._attrs = None


def fetch_releases(name: str, index: str | None = None) -> list[tuple[str, dt.datetime | None]]:
    """(version, first upload time) for every non-yanked release of `name` on the index."""
    page = fetch_project(name, index)
    first_upload: dict[str, dt.datetime | None] = {v: None for v in page.versions}
    for f in page.files:
        if f.get("yanked"):
            continue
        version = _version_of(name, f["filename"])
        if version is None:
            continue
        when = f.get("upload-time")
        stamp = dt.datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None
        old = first_upload.get(version)
        first_upload[version] = stamp if old is None or (stamp and stamp < old) else old
    return list(first_upload.items())


def _version_of(name: str, filename: str) -> str | None:
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def latest_minors(
    releases: list[tuple[str, dt.datetime | None]], selector: LatestMinors, cutoff: dt.datetime | None = None
) -> list[str]:
    """The newest patch of each of the newest N minor releases (final releases only)."""
    within = SpecifierSet(selector.within or "")
    newest: dict[tuple[int, int], Version] = {}
    for text, uploaded in releases:
        try:
            v = Version(text)
        except InvalidVersion:
            continue
        if v.is_prerelease or v.is_devrelease or v.local or v not in within:
            continue
        if cutoff and uploaded and uploaded > cutoff:
            continue
        key = (v.major, v.minor)
        if key not in newest or v > newest[key]:
            newest[key] = v
    chosen = sorted(newest.values(), reverse=True)[: selector.latest_minors]
    return [f"=={v}" for v in chosen]


def resolve_selectors(spec: Spec, fetch: Fetcher | None = None) -> dict[str, list[str]]:
    """For each axis with a `latest-minors` selector, the concrete `==` pins it stands for."""
    fetch = fetch or fetch_releases
    cutoff = None
    if spec.exclude_newer:
        cutoff = as_utc(dt.datetime.fromisoformat(spec.exclude_newer.replace("Z", "+00:00")))
    out: dict[str, list[str]] = {}
    for name, values in spec.axes.items():
        for value in values:
            if isinstance(value, LatestMinors):
                out.setdefault(name, []).extend(latest_minors(fetch(name), value, cutoff))
    return out
