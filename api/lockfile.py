"""Stored environment → lockfile text a tool accepts unchanged: requirements, constraints, pylock.toml, pyproject."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any, Literal

import tomli_w
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from sqlalchemy.orm import Session

from api.queries import Provenance
from api.schemas import ChainOut, SplitChainOut
from matrix.routes import KEY_PACKAGES
from store.models import Environment, Package
from store.settings import DEFAULT_PYLOCK_INDEXES

Format = Literal["requirements", "constraints", "pylock", "pyproject"]
FORMATS: tuple[Format, ...] = ("requirements", "constraints", "pylock", "pyproject")
FILENAMES = {"requirements": "requirements.txt", "constraints": "constraints.txt", "pylock": "pylock.toml",
             "pyproject": "pyproject.toml"}
# PEP 691 JSON first; PEP 503 HTML for indexes (e.g. download.pytorch.org) that only speak that.
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"


class LockfileUnavailable(Exception):
    """The environment's lock cannot be rendered in this format; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def render(session: Session, chain: ChainOut, fmt: str, indexes: Sequence[str] = DEFAULT_PYLOCK_INDEXES) -> str:
    """The lockfile of a known-good chain, stamped with the run that proved it."""
    env = session.get_one(Environment, chain.environment_id)
    return render_environment(env, Provenance(chain.run_id, chain.recorded_at, tuple(m.model for m in chain.models)),
                              fmt, indexes)


def render_environment(env: Environment, provenance: Provenance, fmt: str,
                       indexes: Sequence[str] = DEFAULT_PYLOCK_INDEXES) -> str:
    """`indexes`: where format=pylock may fetch file lists (Settings.pylock_indexes); nothing else is asked."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if env.lock_text is None:
        raise LockfileUnavailable(409, f"environment {env.name} has no resolved lock (status {env.status})")
    stamp = _stamp(env, provenance)
    if fmt == "requirements":
        # The text uv itself wrote, hashes included: `uv pip sync --require-hashes` takes it as it is.
        return stamp + env.lock_text
    if fmt == "constraints":
        if env.overrides:
            # Exact pins of packages whose declared pins were relaxed conflict as constraints: uv takes the same
            # file as overrides (pip has no overrides, so it cannot install this environment).
            stamp += "# install with: uv pip install -r constraints.txt --overrides constraints.txt\n"
        return stamp + "".join(f"{p.name}=={p.version}\n" for p in _top_level(env))
    if fmt == "pyproject":
        return stamp + _pyproject(env)
    return stamp + _pylock(env, provenance, tuple(indexes))


def _line(text: str) -> str:
    # Stamp values come from ingested documents: none may end the comment line and start a line of its own
    # (`\n--index-url …` would be obeyed by pip).
    return "".join(c if c.isprintable() else "?" for c in text)


def _stamp(env: Environment, provenance: Provenance) -> str:
    recorded = f"{provenance.recorded_at:%Y-%m-%d}" if provenance.recorded_at else "never"
    lines = [
        f"# knowngood lockfile for {env.name} (python {env.python_full or env.python})",
        f"# run {provenance.run_id or 'none'}, recorded {recorded}, resolution cutoff {env.cutoff or 'none'}",
        f"# resolved against {env.index_url}; models passed: {', '.join(provenance.models) or 'none'}",
    ]
    return "".join(_line(line) + "\n" for line in lines) + _settings_stamp(env)


def _settings_stamp(env: Environment) -> str:
    """What else the environment was made with (issue 11): uv overrides that relaxed declared pins, and converter
    options, so that a user reproduces exactly what passed."""
    lines = ""
    if env.overrides:
        lines += _line(f"# resolved with uv overrides (declared pins relaxed): {'; '.join(env.overrides)}") + "\n"
    for axis, value in sorted((env.options or {}).items()):
        lines += _line(f"# converter option {axis} = {value}") + "\n"
    return lines


def allowed_index(index_url: str, indexes: Sequence[str]) -> bool:
    """An http(s) index at or under one of the configured `indexes` (the same scheme, host and path prefix)."""
    url = index_url.rstrip("/")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return False
    return any(url == base.rstrip("/") or url.startswith(base.rstrip("/") + "/") for base in indexes)


# Pinned in constraints too, though nobody asks for them by name: the measured data shows that letting the
# resolver move them breaks working chains (IncompatibleDependency(ml_dtypes): onnx and onnx-ir need a newer
# ml_dtypes than older TensorFlow allows).
FRAGILE = ("ml-dtypes",)


def _top_level(env: Environment) -> list[Package]:
    """The pins a user writes by hand: what the environment asked for, the frameworks, numpy, protobuf and FRAGILE."""
    asked = set(KEY_PACKAGES) | set(FRAGILE)
    for text in env.requirements:
        try:
            asked.add(canonicalize_name(Requirement(text).name))
        except InvalidRequirement:
            continue
    return [p for p in env.packages if p.name in asked]


def _requires_python(env: Environment) -> str:
    return f"=={env.python}.*"


def _pyproject(env: Environment) -> str:
    doc: dict[str, Any] = {
        "project": {
            "name": "your-project",
            "version": "0",
            "requires-python": _requires_python(env),
            "dependencies": [f"{p.name}=={p.version}" for p in _top_level(env)],
        },
    }
    uv: dict[str, Any] = {}
    if env.cutoff:
        uv["exclude-newer"] = env.cutoff
    if env.index_url.rstrip("/") != "https://pypi.org/simple":
        uv["index"] = [{"url": env.index_url, "default": True}]
    if env.overrides:
        uv["override-dependencies"] = list(env.overrides)
    if uv:
        doc["tool"] = {"uv": uv}
    return tomli_w.dumps(doc, indent=4)


def _pylock(env: Environment, provenance: Provenance, indexes: tuple[str, ...]) -> str:
    """PEP 751 (https://packaging.python.org/en/latest/specifications/pylock-toml/), one file entry per locked hash.

    The database holds names, versions and hashes; a pylock names each file and where to fetch it, so the files
    are looked up on the index the environment was resolved against, keeping only those whose hash uv locked.
    That index is ingested data and the request is an unauthenticated GET, so it is asked only if it is one of
    the configured `indexes` (issue 15: no file://, no arbitrary hosts), and redirects may not leave them.
    """
    if not allowed_index(env.index_url, indexes):
        raise LockfileUnavailable(409, f"format=pylock: the index {env.index_url} is not one this server fetches "
                                       f"from (KNOWNGOOD_PYLOCK_INDEXES: {', '.join(indexes) or 'none'}); "
                                       "the other formats need no index")
    packages = list(env.packages)
    with ThreadPoolExecutor(max_workers=16) as pool:
        files = list(pool.map(lambda p: index_files(env.index_url, p.name, p.version, indexes), packages))
    entries = []
    for package, found in zip(packages, files, strict=True):
        locked = {h.partition(":")[2] for h in package.hashes if h.startswith("sha256:")}
        chosen = [f for f in found if not locked or f.sha256 in locked]
        wheels = [f.entry() for f in chosen if f.filename.endswith(".whl")]
        sdists = [f.entry() for f in chosen if not f.filename.endswith(".whl")]
        if not wheels and not sdists:
            raise LockfileUnavailable(409, f"{package.name}=={package.version}: none of its locked files is listed "
                                           f"on {env.index_url}")
        entry: dict[str, Any] = {"name": package.name, "version": package.version, "index": env.index_url}
        if sdists:
            entry["sdist"] = sdists[0]
        if wheels:
            entry["wheels"] = wheels
        entries.append(entry)
    doc = {
        "lock-version": "1.0",
        "requires-python": _requires_python(env),
        "created-by": "knowngood",
        "packages": entries,
        "tool": {"knowngood": {
            "environment": env.name, "run": provenance.run_id or "", "cutoff": env.cutoff or "",
            "index": env.index_url, "models-passed": list(provenance.models),
            **({"overrides": list(env.overrides)} if env.overrides else {}),
            **({"options": dict(env.options)} if env.options else {}),
        }},
    }
    return tomli_w.dumps(doc, indent=4)


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str
    hashes: tuple[tuple[str, str], ...]
    size: int | None = None
    upload_time: dt.datetime | None = None

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if urllib.parse.unquote(urllib.parse.urlsplit(self.url).path).rsplit("/", 1)[-1] != self.filename:
            out["name"] = self.filename
        out["url"] = self.url
        if self.upload_time:
            out["upload-time"] = self.upload_time
        if self.size is not None:
            out["size"] = self.size
        out["hashes"] = dict(self.hashes)
        return out


class _RedirectWithin(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed index (a simple index may redirect to the normalised name)."""

    def __init__(self, indexes: tuple[str, ...]) -> None:
        self.indexes = indexes

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if not allowed_index(newurl, self.indexes):
            raise urllib.error.HTTPError(newurl, code, f"redirect outside the allowed indexes: {newurl}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(indexes: tuple[str, ...]) -> urllib.request.OpenerDirector:
    """http(s) only: unlike urlopen's default opener, no file:, ftp: or data: handler."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(), _RedirectWithin(indexes),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


@lru_cache(maxsize=4096)
def index_files(index_url: str, name: str, version: str,
                indexes: tuple[str, ...] = DEFAULT_PYLOCK_INDEXES) -> tuple[IndexFile, ...]:
    """The files of `name==version` on a simple index (PEP 691 JSON or PEP 503 HTML); pinned files never change."""
    if not allowed_index(index_url, indexes):
        raise LockfileUnavailable(409, f"the index {index_url} is not one this server fetches from")
    page = f"{index_url.rstrip('/')}/{canonicalize_name(name)}/"
    request = urllib.request.Request(page, headers={"Accept": _ACCEPT, "User-Agent": "knowngood"})
    try:
        with _opener(indexes).open(request, timeout=30) as response:
            content_type = response.headers.get("Content-Type", "")
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise LockfileUnavailable(409, f"{name} is not on the index {index_url}") from None
        raise LockfileUnavailable(502, f"index {index_url} answered {exc.code} for {name}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise LockfileUnavailable(502, f"index {index_url} could not be reached for {name}: {exc}") from None
    raw = _parse_json(body) if "json" in content_type else _parse_html(body.decode("utf-8", "replace"))
    wanted = Version(version)
    out = []
    for f in raw:
        filename, url = f["filename"], urllib.parse.urljoin(page, f["url"])
        hashes = {k.lower(): v for k, v in f.get("hashes", {}).items()}
        # Yanked files stay: an exact pin may still install them, and uv locked this one before it was yanked.
        if "sha256" not in hashes or not _matches(filename, wanted):
            continue
        when = f.get("upload-time")
        out.append(IndexFile(
            filename=filename, url=url.split("#", 1)[0], sha256=hashes["sha256"], hashes=tuple(sorted(hashes.items())),
            size=f.get("size"), upload_time=dt.datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None,
        ))
    return tuple(sorted(out, key=lambda f: f.filename))


def _matches(filename: str, wanted: Version) -> bool:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1] == wanted
        return parse_sdist_filename(filename)[1] == wanted
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return False


def _parse_json(body: bytes) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = json.loads(body).get("files", [])
    return files


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.files: list[dict[str, Any]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href:
            url, _, fragment = self._href.partition("#")
            algo, _, digest = fragment.partition("=")
            filename = "".join(self._text).strip() or urllib.parse.unquote(url.rsplit("/", 1)[-1])
            self.files.append({"filename": filename, "url": url, "hashes": {algo: digest} if digest else {}})
            self._href = None


def _parse_html(text: str) -> list[dict[str, Any]]:
    parser = _Anchors()
    parser.feed(text)
    return parser.files


SIDES = ("research", "production")


def render_side(session: Session, chain: SplitChainOut, side: str, fmt: str,
                indexes: Sequence[str] = DEFAULT_PYLOCK_INDEXES) -> str:
    """One side of a split chain: the research side (export environment, torch) or the production side
    (runtime environment, no torch), stamped with the other side it was proven with."""
    mine, other = (chain.research, chain.production) if side == "research" else (chain.production, chain.research)
    env = session.get_one(Environment, mine.environment_id)
    text = render_environment(env, Provenance(chain.run_id, chain.recorded_at, tuple(m.model for m in chain.models)),
                              fmt, indexes)
    note = (f"# {side} side of a split chain: the graphs exported in {chain.research.name} passed when run in "
            f"{chain.production.name}; the {'production' if side == 'research' else 'research'} side's lockfile is "
            f"side={'production' if side == 'research' else 'research'} (lock {other.lock_hash[:12]})\n")
    head, _, rest = text.partition("\n# resolved against")
    return head + "\n" + note + "# resolved against" + rest
