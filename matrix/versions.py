"""Version selectors → concrete versions, read from the package index uv is configured to use (PEP 691/700)."""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.request
from collections.abc import Callable, Mapping

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from matrix.spec import LatestMinors, Spec

DEFAULT_INDEX = "https://pypi.org/simple"
ACCEPT = "application/vnd.pypi.simple.v1+json"

Fetcher = Callable[[str], list[tuple[str, dt.datetime | None]]]


def index_url(settings: Mapping[str, str] | None = None) -> str:
    settings = os.environ if settings is None else settings
    url = settings.get("UV_DEFAULT_INDEX") or settings.get("UV_INDEX_URL") or DEFAULT_INDEX
    return url.rstrip("/")


def fetch_releases(name: str, index: str | None = None) -> list[tuple[str, dt.datetime | None]]:
    """(version, first upload time) for every non-yanked release of `name` on the index."""
    url = f"{index or index_url()}/{canonicalize_name(name)}/"
    request = urllib.request.Request(url, headers={"Accept": ACCEPT, "User-Agent": "knowngood"})
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.load(response)
    first_upload: dict[str, dt.datetime | None] = {v: None for v in data.get("versions", [])}
    for f in data.get("files", []):
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
        cutoff = dt.datetime.fromisoformat(spec.exclude_newer.replace("Z", "+00:00"))
        if cutoff.tzinfo is None:
            cutoff = cutoff.replace(tzinfo=dt.UTC)
    out: dict[str, list[str]] = {}
    for name, values in spec.axes.items():
        for value in values:
            if isinstance(value, LatestMinors):
                out.setdefault(name, []).extend(latest_minors(fetch(name), value, cutoff))
    return out
