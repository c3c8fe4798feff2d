"""Query parameters the routes share, and their checks against what is recorded (422 naming the parameter)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any

from fastapi import Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api import queries
from matrix.routes import EXPORTERS, KINDS, ROUTES, TARGETS

# Repeatable as split_names promises (`models=a,b` is `models=a&models=b`); every other single-valued parameter
# given twice is refused by reject_repeats rather than silently answered with its last value.
ModelsParam = Annotated[list[str], Query(description="model names, comma-separated or repeated, e.g. "
                                                     "resnet,transformer", examples=[["resnet"]])]
OptionalModelsParam = Annotated[list[str] | None, Query(description="model names, comma-separated or repeated; "
                                                                   "all when omitted")]
REPEATABLE = frozenset({"models", "require"})
# The enums are documented for clients and generators; the values are still checked by check_route and
# check_exporter, whose 422 says what was expected in our words.
RouteParam = Annotated[str, Query(description=" | ".join(ROUTES), examples=["onnxruntime"],
                                  json_schema_extra={"enum": list(ROUTES)})]
OptionalRouteParam = Annotated[str | None, Query(description=f"{' | '.join(ROUTES)}; all when omitted",
                                                 json_schema_extra={"enum": list(ROUTES)})]
ExporterParam = Annotated[str | None, Query(description=" | ".join(EXPORTERS),
                                            json_schema_extra={"enum": list(EXPORTERS)})]
TARGET_NAMES = tuple(dict.fromkeys(t for ts in TARGETS.values() for t in ts))
TargetParam = Annotated[str | None, Query(description=f"{' | '.join(TARGET_NAMES)}: the deployed artifact that must "
                                                      "have passed on a TF route; any when omitted",
                                          json_schema_extra={"enum": list(TARGET_NAMES)})]
# The same parameter read as a filter (/matrix, /failures): only cases measured on that target.
TargetFilterParam = Annotated[str | None, Query(description=f"{' | '.join(TARGET_NAMES)}: only cases deployed and "
                                                            "checked as that target; all targets (each its own row) "
                                                            "when omitted",
                                                json_schema_extra={"enum": list(TARGET_NAMES)})]
KindParam = Annotated[str | None, Query(description=f"{' | '.join(KINDS)}: only environments of that kind (export and "
                                                    "runtime are the two sides of a split chain); all when omitted",
                                        json_schema_extra={"enum": list(KINDS)})]
PythonParam = Annotated[str | None, Query(description="python minor version, e.g. 3.11")]
RequireParam = Annotated[list[str] | None, Query(description="PEP 508 pins, repeatable: require=torch>=2.3")]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the {"detail": "..."} errors a route may answer with.

    Spelled out as JSON content: FastAPI would otherwise document them with the route's own media type, which is
    text/plain for the lockfile routes.
    """
    # A message, or FastAPI's list of {loc, msg, type} where a parameter was wrong (QueryError answers that way).
    detail = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
    schema = {"type": "object", "properties": {"detail": detail}, "required": ["detail"]}
    return {code: {"description": "Error", "content": {"application/json": {"schema": schema}}} for code in codes}


def json_response(model: BaseModel) -> Response:
    return Response(content=model.model_dump_json(), media_type="application/json")


def check_route(route: str | None) -> None:
    if route is not None and route not in ROUTES:
        raise queries.QueryError("route", f"expected one of {', '.join(ROUTES)}, got {route!r}")


def check_exporter(exporter: str | None) -> None:
    if exporter is not None and exporter not in EXPORTERS:
        raise queries.QueryError("exporter", f"expected one of {', '.join(EXPORTERS)}, got {exporter!r}")


def check_target(target: str | None) -> None:
    if target is not None and target not in TARGET_NAMES:
        raise queries.QueryError("target", f"expected one of {', '.join(TARGET_NAMES)}, got {target!r}")


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise queries.QueryError("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")


def check_models(session: Session, models: list[str] | tuple[str, ...]) -> None:
    _refuse_models(session, queries.unknown_models(session, models))


def _refuse_models(session: Session, unknown: list[str]) -> None:
    if unknown:
        known = sorted(queries.known_models(session))  # the full scan only on the error path
        raise queries.QueryError("models", f"no results recorded for {unknown}; known: {known}")


def check_case_filters(session: Session, route: str | None, exporter: str | None,
                       models: list[str] | tuple[str, ...], target: str | None = None,
                       kind: str | None = None, require: list[str] | None = None) -> None:
    """The filters every case query takes, in the order their errors are reported. `require`: the package names a
    query pins, checked with the models in one round trip (check_packages)."""
    check_route(route)
    check_exporter(exporter)
    check_target(target)
    check_kind(kind)
    unknown, unpinned = queries.unknown_names(session, models, require or [])
    _refuse_models(session, unknown)
    _refuse_packages("require", unpinned)


def check_names(session: Session, models: Collection[str], require: Collection[str], *,
                recorded: Collection[str] = (), pinned: Collection[str] = ()) -> None:
    """The models and required package names against what is recorded, refused as check_case_filters refuses them.

    `recorded`, `pinned`: models and packages seen in rows the request has read already (a model with an outcome has
    cases, a package a measured environment pins has rows); only the others are probed, usually none.
    """
    unknown, unpinned = queries.unknown_names(
        session, [m for m in models if m not in recorded],
        [n for n in require if not any(a in pinned for a in queries.aliases(n))])
    _refuse_models(session, unknown)
    _refuse_packages("require", unpinned)


def check_packages(session: Session, param: str, names: list[str]) -> None:
    _refuse_packages(param, queries.unknown_packages(session, names))


def _refuse_packages(param: str, unknown: list[str]) -> None:
    if unknown:
        raise queries.QueryError(param, f"no recorded environment pins {', '.join(unknown)}; expected a package "
                                        "name such as torch, tensorflow, onnx, onnxruntime")


async def reject_repeats(request: Request) -> None:  # async: runs on the loop, no thread hop
    """A single-valued parameter given twice (`format=constraints&format=requirements`) is ambiguous: 422."""
    names = [name for name, _ in request.query_params.multi_items()]
    for name in dict.fromkeys(names):
        if name not in REPEATABLE and names.count(name) > 1:
            raise queries.QueryError(name, f"given {names.count(name)} times; expected one value "
                                           f"(only {' and '.join(sorted(REPEATABLE))} repeat)")


async def reject_nul(request: Request) -> None:  # async: runs on the loop, no thread hop
    """Neither database stores a NUL character; a parameter carrying one is the caller's error, not ours."""
    for name, value in [*request.query_params.multi_items(), *request.path_params.items()]:
        if "\x00" in str(value):
            raise queries.QueryError(name, "must not contain a NUL character")
