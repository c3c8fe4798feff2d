"""TOML → Spec. Errors name the file, the line, the field, what was expected and what was found."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidName, canonicalize_name
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from matrix.routes import CONVERTER_OPTIONS, EXPORT_SIDE, EXPORTERS, ROUTES, TARGETS

SPECS_DIR = Path(__file__).parent / "specs"


class SpecError(ValueError):
    """A spec that cannot be used, with a message that says where and why."""


class LatestMinors(BaseModel):
    """`{latest-minors = 3}`: the newest patch of each of the newest N minor releases."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    latest_minors: int = Field(alias="latest-minors", ge=1, le=50)
    within: str | None = Field(default=None, description="PEP 440 range the minors must fall in")

    @field_validator("within")
    @classmethod
    def _specifier(cls, v: str | None) -> str | None:
        if v is not None:
            _check_specifier(v)
        return v


Selector = str | LatestMinors


def check_pattern(pattern: str) -> str:
    """An environment-id pattern whose braces pair up; `py3.{11` would otherwise match nothing, silently."""
    depth = 0
    for char in pattern:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0 or depth > 1:  # expand_braces takes one level: `{a,{b}}` is not nested alternation
            break
    if depth != 0:
        raise ValueError(f"expected an environment-id pattern with balanced braces, got {pattern!r}")
    return pattern


def _package_name(text: str, expected: str) -> str:
    """`text` canonicalised if it is a valid distribution name (PEP 508), else ValueError(expected)."""
    try:
        return canonicalize_name(text, validate=True)
    except InvalidName:
        raise ValueError(expected) from None


def _check_specifier(value: str) -> str:
    value = value.strip()
    if value in ("*", ""):
        return "*"
    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise ValueError(
            f"expected a PEP 440 version specifier such as '==2.0.1' or '>=2.3,<2.5', or '*', got {value!r}"
        ) from None
    return value


def _requirements_by_package(v: dict[str, list[str]], example: str) -> dict[str, list[str]]:
    """package → PEP 508 requirements (companions, overrides), keyed by the normalised package name."""
    for texts in v.values():
        for text in texts:
            try:
                Requirement(text)
            except InvalidRequirement:
                raise ValueError(f"expected PEP 508 requirements such as {example}, got {text!r}") from None
    return {canonicalize_name(k): texts for k, texts in v.items()}


def _check_cutoff(v: str) -> str:
    expected = f"expected a date like '2025-08-01' or '2025-08-01T00:00:00Z', got {v!r}"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}Z)?", v):
        raise ValueError(expected)
    try:  # the shape alone lets "2025-13-45" through, and uv would be the one to refuse it
        dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{expected} (no such date)") from None
    return v


# An `exclude-newer` date, checked wherever a spec gives one (the spec's own, and its runtime side's).
Cutoff = Annotated[str, AfterValidator(_check_cutoff)]


class RuntimeSide(BaseModel):
    """`[runtime]` of a split spec: what the runtime side gets and the export side does not. The export
    environments stay exactly those of the spec without it (same hashes), so a spec that only adds runtime
    environments converts graphs that are already stored and exports nothing again."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    exclude_newer: Cutoff | None = Field(
        default=None, alias="exclude-newer",
        description="the runtime side's own cutoff (a runtime released after the export side's cutoff)",
    )
    axes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="package → version specifiers of the runtime side only (e.g. the onnx that onnx-tf reads "
        "beside torch's own onnx); each value is a runtime environment of its own",
    )

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, values in v.items():
            name = _package_name(key, f"expected a package name such as 'onnx' as the axis key, got {key!r}")
            if name in EXPORT_SIDE or name == "python" or name in CONVERTER_OPTIONS:
                raise ValueError(f"axis {key!r}: expected a package of the runtime side, not one of "
                                 f"{', '.join(EXPORT_SIDE)}, python or a converter option")
            if not values:
                raise ValueError(f"axis {key!r}: expected a non-empty list of version specifiers")
            try:
                out[name] = [_check_specifier(x) for x in values]
            except ValueError as exc:
                raise ValueError(f"axis {key!r}: {exc}") from None
        return out


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prune: bool = Field(default=False, description="remove each environment's venv after its cases ran")
    prune_cache: bool = Field(
        default=False, alias="prune-cache",
        description="environments run torch release by torch release (newest first), and after the last one of a "
        "release (in split mode: its last export environment) that build (torch, triton, nvidia-*, cuda-*) leaves "
        "uv's shared cache, so a sweep holds one torch build at a time. It empties "
        "every torch from the cache, the user's own included: off unless a spec asks",
    )
    step_timeout: float = Field(default=900.0, gt=0, alias="step-timeout", description="seconds")
    memory_limit_mb: int = Field(default=12_000, gt=0, alias="memory-limit-mb")
    # Counted from the axes before their product is built: a few long axes multiply past any memory.
    max_environments: int = Field(default=100_000, gt=0, alias="max-environments")


def _default_exporters() -> list[Literal["torchscript", "dynamo", "default"]]:
    return ["torchscript"]


class Spec(BaseModel):
    """A matrix definition: axes of versions, models, routes, exporters and opsets."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    models: list[str] = Field(min_length=1)
    routes: list[str] = Field(min_length=1)
    exporters: list[Literal["torchscript", "dynamo", "default"]] = Field(default_factory=_default_exporters)
    # "highest": the highest opset the exporter accepts in each torch (the worker finds it and records it)
    opsets: list[StrictInt | Literal["highest"]] = Field(default_factory=lambda: [17], min_length=1)  # type: ignore[arg-type]
    exclude_newer: Cutoff | None = Field(default=None, alias="exclude-newer")
    excludes: list[str] = Field(default_factory=list, description="packages kept out of resolution")
    companions: dict[str, list[str]] = Field(
        default_factory=dict,
        description="package → requirements added to every environment that has it (e.g. a converter's "
        "undeclared dependencies); part of the environment's hash, not of its id",
    )
    include: list[str] = Field(default_factory=list, description="environment-id patterns to keep")
    exclude: list[str] = Field(default_factory=list, description="environment-id patterns to drop")
    corpus: str | None = None
    mode: Literal["joint", "split", "both"] = Field(
        default="joint",
        description="joint: torch and the runtime side in one environment (a hybrid container); split: export "
        "environments make artifacts that runtime environments without torch convert and run; both: each",
    )
    export_python: str | None = Field(
        default=None, alias="export-python", pattern=r"^3\.\d+$",
        description="split and both modes: the Python of every export environment, whatever the runtime side's. The "
        "ONNX file does not depend on it, so one torch build per minor feeds runtime environments of every Python",
    )
    targets: list[str] | None = Field(
        default=None, description="what TF routes deploy and check (saved_model | tflite | keras); all that apply "
        "to each route when omitted",
    )
    overrides: dict[str, list[str]] = Field(
        default_factory=dict,
        description="package → requirements passed to uv as --override: every environment with the package is "
        "also planned with them, resolved only where its declared pins make it unresolvable",
    )
    axes: dict[str, list[Selector]]
    runtime: RuntimeSide = Field(default_factory=RuntimeSide)
    limits: Limits = Field(default_factory=Limits)

    path: Path | None = Field(default=None, exclude=True)
    source_hash: str = Field(default="", exclude=True)
    source_text: str = Field(default="", exclude=True, repr=False)

    def locate(self, *field: str) -> str:
        """`path:line` of a field, for errors found after loading (by expansion)."""
        return f"{self.path or '<spec>'}:{_line_of(self.source_text, field)}"

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: list[str]) -> list[str]:
        for r in v:
            if r not in ROUTES:
                raise ValueError(f"expected one of {sorted(ROUTES)}, got {r!r}")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        known = sorted({t for ts in TARGETS.values() for t in ts})
        for t in v or ():
            if t not in known:
                raise ValueError(f"expected one of {known}, got {t!r}")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return _requirements_by_package(v, "'numpy>=1.26,<2.2'")

    @field_validator("exporters")
    @classmethod
    def _exporters(cls, v: list[str]) -> list[str]:
        assert set(v) <= set(EXPORTERS)
        return v

    @field_validator("opsets", mode="before")
    @classmethod
    def _opset_values(cls, v: Any) -> Any:
        # One message for both union members (an integer, or "highest") instead of one per member.
        for o in v if isinstance(v, list) else ():
            if o != "highest" and (not isinstance(o, int) or isinstance(o, bool)):
                raise ValueError(f"Input should be a valid integer or 'highest', got {o!r}")
        return v

    @field_validator("opsets")
    @classmethod
    def _opsets(cls, v: list[int | str]) -> list[int | str]:
        for o in v:
            if isinstance(o, int) and not 7 <= o <= 30:
                raise ValueError(f"expected an ONNX opset between 7 and 30, got {o}")
        return v

    @field_validator("companions")
    @classmethod
    def _companions(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return _requirements_by_package(v, "'psutil' or 'sng4onnx>=1'")

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            check_pattern(pattern)
        return v

    @field_validator("excludes")
    @classmethod
    def _excludes(cls, v: list[str]) -> list[str]:
        # uv reads these as lines of an excludes file: anything but a bare name would be read as something else.
        return [_package_name(x, f"expected a package name such as 'tensorflow', got {x!r}") for x in v]

    @field_validator("axes", mode="before")
    @classmethod
    def _axes(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for key, values in v.items():
            if not isinstance(values, list) or not values:
                raise ValueError(
                    f"axis {key!r}: expected a non-empty list of version selectors, got {values!r}"
                )
            # The key becomes a requirement line on uv's stdin: a newline in it would add uv options
            # ("-i URL"), and the result would be stored as if it came from the configured index.
            name = "python" if key == "python" else _package_name(
                key, f"expected a package name such as 'torch' as the axis key, got {key!r}")
            checked: list[Any] = []
            if name in CONVERTER_OPTIONS:  # a converter option, not a package: its values are names
                allowed = CONVERTER_OPTIONS[name][2]
                for item in values:
                    if item not in allowed:
                        raise ValueError(f"axis {key!r}: expected one of {list(allowed)}, got {item!r}")
                out[name] = list(values)
                continue
            for item in values:
                if isinstance(item, str):
                    if name == "python":
                        if not re.fullmatch(r"3\.\d{1,2}", item):
                            raise ValueError(f"axis 'python': expected a version like '3.11', got {item!r}")
                        checked.append(item)
                    elif item.strip()[:1].isalpha():
                        # A whole requirement ("onnx-tf==1.10.0"): the axis is then only a label, as in
                        # converter = ["onnx-tf==1.10.0", "onnx2tf==1.15.9"].
                        try:
                            req = Requirement(item)
                        except InvalidRequirement:
                            req = None
                        if req is None or not req.specifier:
                            raise ValueError(
                                f"axis {key!r}: expected a PEP 440 version specifier such as '==2.0.1' or "
                                f"'>=2.3,<2.5', '*', or a pinned requirement like 'onnx-tf==1.10.0', got {item!r}"
                            )
                        checked.append(str(req))
                    else:
                        try:
                            checked.append(_check_specifier(item))
                        except ValueError as exc:
                            raise ValueError(f"axis {key!r}: {exc}") from None
                elif isinstance(item, dict):
                    checked.append(item)
                else:
                    raise ValueError(
                        f"axis {key!r}: expected a specifier string or {{latest-minors = N}}, got {item!r}"
                    )
            out[name] = checked
        return out

    @model_validator(mode="after")
    def _needs(self) -> Spec:
        if "python" not in self.axes:
            raise ValueError("axes: expected a 'python' axis, e.g. python = [\"3.11\"]")
        if self.export_python and self.mode == "joint":
            raise ValueError("export-python: applies to split chains only; expected mode = \"split\" or \"both\"")
        if (self.runtime.axes or self.runtime.exclude_newer) and self.mode == "joint":
            raise ValueError("runtime: applies to split chains only; expected mode = \"split\" or \"both\"")
        return self


def load(path: str | Path, *, corpus: str | Path | None = None) -> Spec:
    """Read and validate a spec file; `corpus` (a path from the command line) replaces the spec's own."""
    path = Path(path)
    raw_text = _read(path)
    try:
        data = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_describe(path, raw_text, exc)) from None
    if corpus is not None:
        if not Path(corpus).is_file():
            raise SpecError(f"--corpus: expected a Python file with MODELS, got {str(corpus)!r} (no such file)")
        spec.corpus = str(Path(corpus).resolve())
    elif spec.corpus is not None:
        corpus = (path.parent / spec.corpus).resolve()  # relative to the spec file, like an include
        if not corpus.is_file():
            raise SpecError(f"{path}:{_line_of(raw_text, ('corpus',))}: corpus: expected a Python file with "
                            f"MODELS, got {spec.corpus!r} (no such file: {corpus})")
        spec.corpus = str(corpus)
    if spec.corpus is not None:
        _check_corpus_syntax(Path(spec.corpus))
    _check_models(path, raw_text, spec)
    spec.path = path
    spec.source_hash = hashlib.sha256(raw_text.encode()).hexdigest()
    spec.source_text = raw_text
    return spec


def _check_corpus_syntax(corpus: Path) -> None:
    """Compile (not import: that needs torch) a user corpus, so `plan` reports what every worker would."""
    try:
        compile(corpus.read_bytes(), str(corpus), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise SpecError(f"{corpus}:{exc.lineno}: corpus: expected Python source, got a syntax error: "
                        f"{exc.msg}") from None
    except ValueError as exc:  # NUL bytes
        raise SpecError(f"{corpus}: corpus: expected Python source, got {exc}") from None


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: expected a TOML spec file, got a directory") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: expected UTF-8 text, got byte 0x{raw[exc.start]:02x}") from None


def _check_models(path: Path, raw_text: str, spec: Spec) -> None:
    if spec.corpus is not None:
        return  # a user corpus is checked by the worker, which can import it
    from matrix import corpus

    for name in spec.models:
        if name not in corpus.REGISTRY:
            line = _line_of(raw_text, ("models",))
            raise SpecError(
                f"{path}:{line}: models: expected one of {sorted(corpus.REGISTRY)}, got {name!r}"
            )


def _describe(path: Path, raw_text: str, exc: ValidationError) -> str:
    lines = []
    errors = exc.errors()
    for err in errors:
        if err["type"] == "string_type" and err["loc"][:1] == ("axes",) and len(errors) > 1:
            continue  # the `str` branch of a selector union: the table branch's error says more
        loc = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
        msg = err["msg"].removeprefix("Value error, ")
        if (m := re.match(r"axis '([^']+)': ", msg)) and loc == ("axes",):
            loc, msg = ("axes", m.group(1)), msg[m.end() :]
        # pydantic reports union members (str / LatestMinors) as extra path parts; keep the field path.
        loc = tuple(p for p in loc if p not in ("str", "LatestMinors", "function-after[_specifier(), str]"))
        field = ".".join(loc) or "(top level)"
        line = _line_of(raw_text, loc)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}; expected one of {_known_keys(loc[:-1])}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg}, got {err['input']!r}"
        lines.append(f"{path}:{line}: {field}: {msg}")
    return "\n".join(lines)


def _known_keys(loc: tuple[str, ...]) -> str:
    model: type[BaseModel] = Spec
    if loc and loc[0] == "limits":
        model = Limits
    elif loc and loc[0] == "axes":
        model = LatestMinors
    names = [f.alias or n for n, f in model.model_fields.items() if n not in ("path", "source_hash")]
    return ", ".join(sorted(names))


def _line_of(raw_text: str, loc: tuple[str, ...]) -> int:
    """Best line for a field path: the key's own line inside its table, else the table header, else 1."""
    table: tuple[str, ...] = ()
    header_line: dict[tuple[str, ...], int] = {}
    found: int | None = None
    for number, line in enumerate(raw_text.splitlines(), start=1):
        stripped = line.strip()
        m = re.fullmatch(r"\[\s*([^\]]+?)\s*\]", stripped)
        if m:
            table = tuple(part.strip().strip('"') for part in m.group(1).split("."))
            header_line.setdefault(table, number)
            continue
        m = re.match(r"([A-Za-z0-9_\-\"]+)\s*=", stripped)
        if not m:
            continue
        key = m.group(1).strip('"')
        full = (*table, key)
        if _same(full, loc):
            return number
        if found is None and len(loc) >= 1 and _same(full, loc[:-1]):
            found = number
    if found is not None:
        return found
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in header_line:
            return header_line[loc[:depth]]
    return 1


def _same(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    def norm(t: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(x.replace("_", "-").lower() for x in t)

    return bool(b) and norm(a) == norm(b)
