"""POST /check: the verdict on a lockfile sent as JSON or multipart (what `knowngood check --server` sends)."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import queries, verdicts
from api.cache import read_ahead
from api.routes.params import errors, json_response
from api.schemas import CheckOut
from store.pins import Pins, PinsError, decode, parse

router = APIRouter(tags=["check"])

MAX_BYTES = 5_000_000  # a torch lock with every hash is about 100 kB; this is room, not a target


class CheckIn(BaseModel):
    """The file's name (it picks the format and names the file in errors), its text, and the options of the CLI."""

    model_config = ConfigDict(extra="forbid")
    filename: str = Field(min_length=1, max_length=500, examples=["requirements.txt"])
    text: str = Field(max_length=MAX_BYTES, examples=["torch==2.0.1\nonnx==1.14.0\nonnxruntime==1.15.1\n"])
    models: list[str] | str = Field(description="model names, a list or comma-separated", examples=["resnet"])
    routes: list[str] | str = Field(default_factory=list, description="default: the routes the file pins")
    exporter: str | None = None
    python: str | None = Field(default=None, description="python minor, where the file does not say")
    target: str | None = Field(default=None, description="TF routes: saved_model | tflite | keras; default: any")


_MULTIPART_FIELDS = ("filename", "models", "routes", "route", "exporter", "python", "target")
_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": CheckIn.model_json_schema()},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file", "models"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           **{f: {"type": "string"} for f in _MULTIPART_FIELDS}},
        }},
    },
}


@router.post("/check", response_model=CheckOut, responses=errors(413, 415, 422), openapi_extra={"requestBody": _BODY})
async def check(request: Request) -> Response:
    """known-good, known-bad or untested per model and route, with evidence and the smallest change to a chain."""
    body = await request.body()
    if len(body) > MAX_BYTES:
        raise HTTPException(413, detail=f"expected a lockfile of at most {MAX_BYTES} bytes, got {len(body)}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        doc = _validated(_multipart(body, content_type))
    elif content_type.startswith("application/json"):
        try:
            doc = CheckIn.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, detail=_describe(exc)) from None
    else:
        raise HTTPException(415, detail=f"expected application/json or multipart/form-data, got {content_type!r}")
    # Serialized here, as /chains does: returned as a model, FastAPI would dump it, validate the dump against
    # response_model and encode that, three passes over the answer where one will do (issue 14).
    question = _Question(_pins(doc) if len(doc.text) <= IN_LOOP_BYTES else None, doc)
    if question.pins is None:
        return json_response(await run_in_threadpool(question.answer, request))
    # A lock of usual size is read here, on the event loop: a millisecond of CPU. When the answer then needs no read
    # either (the per-version index holds what it weighs, api/verdicts.py), it is answered here too. A thread hop
    # only added the wait for the interpreter lock, which the loop and every answer share: POST /check's p99
    # (issue 14). Anything that reads the store goes to the thread pool, so that the loop never waits on it.
    facts = request.app.state.env_facts
    if facts.version.held() is None:  # once per `recheck` seconds: the one read, in the pool; the answer may still
        await run_in_threadpool(_read_version, request)  # come from memory (answered in the pool, it was the p99)
    else:  # while answers keep coming, read again before the window ends, where none of them waits for it
        read_ahead(facts.version, request.app.state.read_sessionmaker)
    if verdicts.held_in_memory(facts, question.pins, question.models, question.routes, question.exporter,
                               question.target):
        return json_response(question.answer(request))
    return json_response(await run_in_threadpool(question.answer, request))


# Larger files are read in the thread pool: a five-megabyte lock would hold the event loop for a noticeable time.
IN_LOOP_BYTES = 256_000


def _pins(doc: CheckIn) -> Pins:
    try:
        return parse(doc.text, doc.filename, python=doc.python)
    except PinsError as exc:
        raise queries.QueryError("file", str(exc)) from None


class _Question:
    """A check's file and options, its names split once; the file read here, or (pins None) where it is answered."""

    def __init__(self, pins: Pins | None, doc: CheckIn) -> None:
        self.pins, self.doc = pins, doc
        self.models = queries.split_names(doc.models)
        self.routes = queries.split_names(doc.routes) or None
        self.exporter, self.target = doc.exporter or None, doc.target or None

    def answer(self, request: Request) -> CheckOut:
        pins = _pins(self.doc) if self.pins is None else self.pins
        with request.app.state.read_sessionmaker() as session:
            return verdicts.check(session, pins, self.models, self.routes, self.exporter,
                                  request.app.state.env_facts, self.target)


def _read_version(request: Request) -> None:
    with request.app.state.read_sessionmaker() as session:
        request.app.state.env_facts.version.read(session)


def _multipart(body: bytes, content_type: str) -> dict[str, Any]:
    """multipart/form-data → fields, read with the standard library's MIME parser (RFC 7578 is MIME)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise HTTPException(422, detail="expected a multipart/form-data body with a boundary")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == "file":
            fields.setdefault("filename", part.get_filename() or "requirements.txt")
            try:
                fields["text"] = decode(data, str(fields["filename"]))
            except PinsError as exc:
                raise HTTPException(422, detail=str(exc)) from None
        elif name in _MULTIPART_FIELDS:
            key = "routes" if name == "route" else str(name)
            fields[key] = data.decode("utf-8", "replace")
    if "text" not in fields:
        raise HTTPException(422, detail="file: expected a form field 'file' holding the lockfile")
    return fields


def _validated(fields: dict[str, Any]) -> CheckIn:
    try:
        return CheckIn.model_validate(fields)
    except ValidationError as exc:
        raise HTTPException(422, detail=_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
