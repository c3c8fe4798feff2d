"""Lockfiles a user brings → pins (name → version or specifier, and python where the file says); errors name file:line.

Reads requirements and constraints files (pip-compile and `uv pip compile` output, hashes allowed), `uv.lock`,
`pylock.toml` (PEP 751) and `pyproject.toml` (project dependencies, `[tool.uv]` constraint- and
override-dependencies). Requirements are parsed by `packaging`, TOML by `tomllib`; nothing here touches the network.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any, Literal

from packaging.markers import Marker, default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from store.errors import KnowngoodError

Kind = Literal["requirements", "uv.lock", "pylock", "pyproject"]
EXPECTED = "a requirements or constraints file (.txt, .in), uv.lock, pylock.toml (PEP 751) or pyproject.toml"
# Pythons a requires-python is tried against to find the one minor it allows (if it allows exactly one).
_MINORS = tuple(f"3.{m}" for m in range(8, 16))


class PinsError(KnowngoodError):
    """A lockfile that cannot be read: the message names the file, the line, what was expected and what was found."""

    exit_code = 3


@dataclass(frozen=True)
class FilePin:
    """One package as the file constrains it: `==2.0.1` for a lock, any specifier for pyproject, "" if unknown."""

    name: str
    specifier: str
    line: int

    @property
    def version(self) -> str | None:
        """The exact version, when the file pins one."""
        return _exact(self.specifier)

    def allows(self, version: str) -> bool:
        """Whether a measured version satisfies this pin; a local label (`2.0.1+cpu`) is compared by its public part."""
        return _allows(self.specifier, version)


@lru_cache(maxsize=65536)
def _exact(specifier: str) -> str | None:
    specs = list(SpecifierSet(specifier)) if specifier else []
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


@lru_cache(maxsize=65536)
def _allows(specifier: str, version: str) -> bool:
    # Cached: a check compares one file's few pins with the same few versions of every measured environment.
    if not specifier:
        return True
    exact = _exact(specifier)
    try:
        if exact is not None:
            return Version(exact).public == Version(version).public
        return SpecifierSet(specifier).contains(version, prereleases=True)
    except InvalidVersion:
        return exact == version


@dataclass(frozen=True)
class Pins:
    """What one file pins, keyed by PEP 503 name."""

    path: str
    kind: Kind
    pins: dict[str, FilePin] = field(default_factory=dict)
    python: str | None = None  # the one minor ("3.11") the file is for, when it says
    requires_python: str | None = None  # the file's requires-python specifier, if any


def kind_of(filename: str) -> Kind:
    name = PurePath(filename).name.lower()
    if name == "uv.lock":
        return "uv.lock"
    if re.fullmatch(r"pylock(\.[^.]+)?\.toml", name):
        return "pylock"
    if name == "pyproject.toml":
        return "pyproject"
    if name.endswith((".txt", ".in", ".pip")) or "requirements" in name or "constraints" in name:
        return "requirements"
    raise PinsError(f"{filename}:1: expected {EXPECTED}, got a file named {PurePath(filename).name!r}")


def read(path: str | Path, *, python: str | None = None) -> Pins:
    """Read a lockfile from disk; `python` ("3.11") is used where the file does not say which python it is for."""
    path = Path(path)
    kind = kind_of(str(path))  # before reading: an unsupported name is refused even if it exists
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PinsError(f"{path}:1: expected {EXPECTED}, got no such file") from None
    except OSError as exc:
        raise PinsError(f"{path}:1: expected a readable file, got {exc.strerror}") from None
    return parse(decode(raw, str(path)), str(path), python=python, kind=kind)


def decode(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8-sig")  # pip accepts a BOM; so do we
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PinsError(f"{filename}:{line}: expected UTF-8 text, got byte 0x{raw[exc.start]:02x}") from None


def parse(text: str, filename: str, *, python: str | None = None, kind: Kind | None = None) -> Pins:
    """Parse lockfile text; `filename` picks the format and names the file in errors."""
    kind = kind or kind_of(filename)
    if python is not None and not re.fullmatch(r"3\.\d{1,2}", python):
        raise PinsError(f"--python: expected a version like '3.11', got {python!r}")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise PinsError(f"{filename}:{line}: expected text, got a NUL byte")
    reader = {"requirements": _requirements, "uv.lock": _uv_lock, "pylock": _pylock, "pyproject": _pyproject}[kind]
    return reader(text, filename, python)


# -- requirements and constraints files -------------------------------------------------------------------------

# The tools that wrote the file say which python they resolved for, in the header.
_PYTHON_HEADERS = (
    re.compile(r"^#.*\buv pip compile\b.*?(?:--python-version|--python|-p)[= ](?:cpython-?|python)?(3\.\d+)"),
    re.compile(r"^# This file is autogenerated by pip-compile with Python (3\.\d+)"),
    re.compile(r"^# knowngood lockfile for .* \(python (3\.\d+)"),
)
_INCLUDES = ("-r", "--requirement", "-c", "--constraint")
_EDITABLE = ("-e", "--editable")
_COMMENT = re.compile(r"(^|\s)#.*$")
_OPTIONS = re.compile(r"\s+(?=--?[A-Za-z])")
_OPTION_LINE = re.compile(r"\s*--?[A-Za-z]")  # a physical line that starts with an option (_OPTIONS)
_HASH_LINE = "    --hash="  # how lockers indent a hash: an option line (_OPTION_LINE), told by one comparison


# Lock lines repeat across files (`numpy==1.26.4` is in most of them): each distinct line and specifier goes through
# packaging's parser once per process, which cost a check most of a millisecond per 10 lines when parsed every time
# (issue 14). Invalid ones raise each time: lru_cache keeps no exceptions.
_requirement = lru_cache(maxsize=8192)(Requirement)
_specifier_set = lru_cache(maxsize=8192)(SpecifierSet)


# `name==version`, the form of nearly every line a locker writes. Where the version is one packaging reads and
# already writes that way, the line means what packaging's Requirement would make of it, so it is taken as it is:
# the general parser cost a check two milliseconds per hundred-line lock whose lines it had not seen (issue 14).
# Anything else (extras, markers, URLs, other operators, unnormalized versions) goes through packaging.
_EXACT = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==([0-9][0-9A-Za-z.+!]*)")
# The same, where the name is already canonical and the version already in the form str(Version) writes (PEP 440's
# normal form: no leading zeros, a|b|rc, .post, .dev, a lowercase local part): taken with no Version at all. Locks
# of a hundred lines seen for the first time spent most of their parse in Version (issue 14).
_NUMBER = r"(?:0|[1-9][0-9]*)"
_NORMAL = re.compile(
    rf"([a-z0-9]+(?:-[a-z0-9]+)*)==((?:[1-9][0-9]*!)?{_NUMBER}(?:\.{_NUMBER})*(?:(?:a|b|rc){_NUMBER})?"
    rf"(?:\.post{_NUMBER})?(?:\.dev{_NUMBER})?(?:\+(?:[a-z0-9]*[a-z][a-z0-9]*|{_NUMBER})"
    rf"(?:\.(?:[a-z0-9]*[a-z][a-z0-9]*|{_NUMBER}))*)?)"
)


def _exact_pin(text: str) -> tuple[str, str] | None:
    return _normal_pin(text) or _unnormal_exact_pin(text)


def _normal_pin(text: str) -> tuple[str, str] | None:
    # Not memoised: a regex is as quick as the lookup, and a cache of every line seen churns where most lines are
    # new (each entry it evicts is an old object freed, which lets the collector's youngest generation grow to
    # thousands of objects between collections: 2 ms pauses, issue 14).
    if match := _NORMAL.fullmatch(text):
        return match[1], f"=={match[2]}"
    return None


@lru_cache(maxsize=8192)  # lines repeat across files, as for _requirement
def _unnormal_exact_pin(text: str) -> tuple[str, str] | None:
    match = _EXACT.fullmatch(text)
    if match is None:
        return None
    name, version = match.groups()
    try:
        if str(Version(version)) != version:
            return None
    except InvalidVersion:
        return None
    return canonicalize_name(name), f"=={version}"


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first physical line number, logical line) with backslash continuations joined, as pip reads them; lines
    that are blank or only a comment are left out.

    A continuation line that starts with an option (`    --hash=sha256:…`, most lines of a hashed lock) is left
    out of the join once the logical line has begun: what a reader takes from a line is the text before its first
    option, which such a line comes after, and a comment in it only cuts text after that. One loop, no more per line
    than it needs: a hashed lock has three physical lines per package, and a check reads it per request (issue 14).
    """
    lines = text.splitlines()
    count, i = len(lines), 0
    while i < count:
        line = lines[i]
        i += 1
        start = i
        if _continued(line):
            parts = [line[:-1]]
            while i < count:
                line = lines[i]
                i += 1
                if line.startswith(_HASH_LINE) or _OPTION_LINE.match(line):
                    if line.endswith("\\"):
                        continue
                    break
                if _continued(line):
                    parts.append(line[:-1])
                    continue
                parts.append(line)
                break
            line = " ".join(parts)
        # A comment starts at '#' at the line's start or after whitespace (pip's rule), so URL fragments survive.
        line = line.strip()
        if not line or line[0] == "#":
            continue
        if "#" in line:
            line = _COMMENT.sub("", line).rstrip()
        yield start, line


def _continued(line: str) -> bool:
    """Whether the next physical line continues this one: a backslash at the end of a line that is not a comment."""
    return line.endswith("\\") and not line.lstrip().startswith("#")


def _requirements(text: str, filename: str, python: str | None) -> Pins:
    header = _header_python(text) or python
    pins = _Collector(filename)
    env: dict[str, str] | None = None  # made for the first marker
    for number, line in _logical_lines(text):
        if line[0] == "-":
            option = re.split(r"[\s=]", line, maxsplit=1)[0]
            if option in _INCLUDES:
                target = line[len(option):].strip(" =")
                raise PinsError(f"{filename}:{number}: {option}: expected a self-contained file, got an include of "
                                f"{target!r}; check that file on its own")
            continue  # index, hash-mode and editable options change where packages come from, not which versions
        exact = _normal_pin(line)  # the usual line: a plain pin and nothing after it (no whitespace, so no option)
        if exact is None:
            # Per-requirement options (--hash=…) follow the requirement after whitespace.
            text_req = _OPTIONS.split(line, maxsplit=1)[0]
            exact = _exact_pin(text_req)
        if exact:
            pins.add_exact(exact[0], exact[1], number)
            continue
        try:
            req = _requirement(text_req)
        except InvalidRequirement as exc:
            raise PinsError(f"{filename}:{number}: expected a PEP 508 requirement such as 'torch==2.0.1', got "
                            f"{text_req!r} ({str(exc).splitlines()[0]})") from None
        if req.marker is not None:
            env = env or _marker_environment(header)
            if not req.marker.evaluate(env):
                continue
        pins.add(req.name, _specifier(req), number)
    return Pins(filename, "requirements", pins.pins, header, None)


def _head(text: str, count: int) -> list[str]:
    """text.splitlines()[:count], without splitting the whole of a long file."""
    lines = text[:4096].splitlines()
    return lines[:count] if len(lines) > count or len(text) <= 4096 else text.splitlines()[:count]


def _header_python(text: str) -> str | None:
    for line in _head(text, 12):  # headers are at the top; a stray comment further down is not one
        for pattern in _PYTHON_HEADERS:
            if m := pattern.match(line):
                return m.group(1)
    return None


def _specifier(req: Requirement) -> str:
    """A requirement's version constraint; a direct wheel URL names its version in the filename."""
    if req.url:
        try:
            return f"=={parse_wheel_filename(req.url.rsplit('/', 1)[-1].split('#')[0].replace('%2B', '+'))[1]}"
        except (InvalidWheelFilename, InvalidVersion):
            return ""  # a VCS or sdist URL: the version is not knowable without building it
    return str(req.specifier)


def _marker_environment(python: str | None) -> dict[str, str]:
    """Markers are evaluated for the platform every environment was measured on: CPython on Linux x86_64.

    With no python known, packaging's default (the checker's own interpreter) answers python markers.
    """
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env.update(sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix",
               implementation_name="cpython", platform_python_implementation="CPython")
    if python:
        env.update(python_version=python, python_full_version=f"{python}.0")
    return env


class _Collector:
    """Pins by name; the same package twice (after markers) must agree."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.pins: dict[str, FilePin] = {}

    def add_exact(self, name: str, specifier: str, line: int) -> None:
        """add() of a name already canonical and a `==version` specifier known to be valid (_exact_pin)."""
        if name in self.pins:
            self.add(name, specifier, line)
        else:
            self.pins[name] = FilePin(name, specifier, line)

    def add(self, name: str, specifier: str, line: int) -> None:
        name = canonicalize_name(name)
        try:
            _specifier_set(specifier)
        except InvalidSpecifier:
            raise PinsError(f"{self.filename}:{line}: {name}: expected a PEP 440 specifier such as '==2.0.1', got "
                            f"{specifier!r}") from None
        old = self.pins.get(name)
        if old is None:
            self.pins[name] = FilePin(name, specifier, line)
            return
        merged = FilePin(name, ",".join(s for s in (old.specifier, specifier) if s), old.line)
        if old.version and FilePin(name, specifier, line).version not in (None, old.version):
            raise PinsError(f"{self.filename}:{line}: {name}: expected one version, got {specifier} here and "
                            f"{old.specifier} on line {old.line}")
        self.pins[name] = merged


# -- TOML formats ----------------------------------------------------------------------------------------------

def _toml(text: str, filename: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_in_message(str(exc))
        raise PinsError(f"{filename}:{line}: expected valid TOML, got {exc}") from None


def _line_in_message(message: str) -> int:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else 1


def _table_lines(text: str, header: str) -> list[int]:
    """Line numbers of each `[[header]]`, in order: the i-th belongs to the i-th array entry."""
    pattern = re.compile(rf"^\s*\[\[\s*{re.escape(header)}\s*\]\]\s*(#.*)?$")
    return [n for n, line in enumerate(text.splitlines(), start=1) if pattern.match(line)]


def _python_of(requires: str | None, filename: str, line: int) -> str | None:
    """The one minor a requires-python allows, if it allows exactly one of the pythons we know."""
    if not requires:
        return None
    try:
        spec = SpecifierSet(requires)
    except InvalidSpecifier:
        raise PinsError(f"{filename}:{line}: requires-python: expected a PEP 440 specifier such as '>=3.11', got "
                        f"{requires!r}") from None
    allowed = [m for m in _MINORS if spec.contains(f"{m}.0") or spec.contains(f"{m}.99")]
    return allowed[0] if len(allowed) == 1 else None


def _key_line(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 1


def _locked_packages(text: str, filename: str, data: dict[str, Any], array: str,
                     python: str | None) -> tuple[dict[str, FilePin], str | None, str | None]:
    """[[package]] (uv.lock) or [[packages]] (pylock) → pins; entries whose markers exclude Linux x86_64 are skipped."""
    requires = data.get("requires-python")
    if requires is not None and not isinstance(requires, str):
        raise PinsError(f"{filename}:{_key_line(text, 'requires-python')}: requires-python: expected a string, got "
                        f"{requires!r}")
    chosen = _python_of(requires, filename, _key_line(text, "requires-python")) or python
    entries = data.get(array)
    if not isinstance(entries, list):
        raise PinsError(f"{filename}:1: expected [[{array}]] tables, got "
                        f"{'none' if entries is None else type(entries).__name__}")
    lines = _table_lines(text, array)
    env = _marker_environment(chosen)
    pins = _Collector(filename)
    for i, entry in enumerate(entries):
        line = lines[i] if i < len(lines) else 1
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PinsError(f"{filename}:{line}: [[{array}]]: expected a table with a name, got {entry!r}")
        source = entry.get("source") or {}
        if isinstance(source, dict) and {"virtual", "editable", "directory"} & set(source):
            continue  # the project itself (or a local checkout): not something we measured
        markers = entry.get("resolution-markers") or ([entry["marker"]] if entry.get("marker") else [])
        if markers and not any(_marker_holds(m, env, filename, line) for m in markers):
            continue
        version = entry.get("version")
        if version is not None and not isinstance(version, str):
            raise PinsError(f"{filename}:{line}: {entry['name']}: version: expected a string, got {version!r}")
        pins.add(entry["name"], f"=={version}" if version else "", line)
    return pins.pins, chosen, requires


def _marker_holds(text: str, env: dict[str, str], filename: str, line: int) -> bool:
    try:
        return Marker(text).evaluate(env)
    except Exception as exc:  # packaging raises several types for a bad marker; all mean the same here
        raise PinsError(f"{filename}:{line}: expected a PEP 508 marker, got {text!r} ({exc})") from None


def _uv_lock(text: str, filename: str, python: str | None) -> Pins:
    data = _toml(text, filename)
    if "version" not in data:
        raise PinsError(f"{filename}:1: expected a uv.lock with a top-level 'version', got none")
    pins, chosen, requires = _locked_packages(text, filename, data, "package", python)
    return Pins(filename, "uv.lock", pins, chosen, requires)


def _pylock(text: str, filename: str, python: str | None) -> Pins:
    data = _toml(text, filename)
    version = data.get("lock-version")
    if not isinstance(version, str) or not version.startswith("1."):
        raise PinsError(f"{filename}:{_key_line(text, 'lock-version')}: lock-version: expected '1.0' (PEP 751), "
                        f"got {version!r}")
    pins, chosen, requires = _locked_packages(text, filename, data, "packages", python)
    return Pins(filename, "pylock", pins, chosen, requires)


def _pyproject(text: str, filename: str, python: str | None) -> Pins:
    """[project] dependencies, narrowed by [tool.uv] constraint-dependencies and replaced by override-dependencies."""
    data = _toml(text, filename)
    project = data.get("project") or {}
    uv = (data.get("tool") or {}).get("uv") or {}
    requires = project.get("requires-python")
    chosen = _python_of(requires, filename, _key_line(text, "requires-python")) or python
    env = _marker_environment(chosen)
    found: dict[str, list[tuple[str, str, int]]] = {}
    for key, table in (("dependencies", project), ("constraint-dependencies", uv), ("override-dependencies", uv)):
        values = table.get(key, [])
        if not isinstance(values, list):
            raise PinsError(f"{filename}:{_key_line(text, key)}: {key}: expected a list of requirements, got "
                            f"{values!r}")
        for value in values:
            line = _string_line(text, value) or _key_line(text, key)
            try:
                req = Requirement(value)
            except (InvalidRequirement, TypeError):
                raise PinsError(f"{filename}:{line}: {key}: expected a PEP 508 requirement such as 'torch>=2.3', got "
                                f"{value!r}") from None
            if req.marker is None or req.marker.evaluate(env):
                found.setdefault(canonicalize_name(req.name), []).append((key, _specifier(req), line))
    pins = _Collector(filename)
    for name, entries in found.items():
        overrides = [e for e in entries if e[0] == "override-dependencies"]
        # An override replaces every other requirement on the package (uv's rule); constraints narrow the rest.
        for _key, spec, line in overrides or entries:
            pins.add(name, spec, line)
    return Pins(filename, "pyproject", pins.pins, chosen, requires)


def _string_line(text: str, value: object) -> int | None:
    if not isinstance(value, str):
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if f'"{value}"' in line or f"'{value}'" in line:
            return number
    return None
