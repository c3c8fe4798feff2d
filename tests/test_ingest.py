"""POST /api/v1/runs: a bearer token, idempotent storage, and a malformed body stores nothing."""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from knowngood import cli
from store.settings import Settings

SMOKE = Path(__file__).parent / "fixtures" / "smoke-snapshot.json.gz"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def document() -> dict[str, Any]:
    return json.loads(gzip.decompress(SMOKE.read_bytes()))


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url, ingest_token=TOKEN))) as c:
        yield c


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
                         ids=["none", "wrong", "not-bearer"])
def test_without_the_token_it_is_401(client: TestClient, db_url: str, document: dict, headers: dict,
                                     db_counts: Any) -> None:
    resp = client.post("/api/v1/runs", json=document, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert set(db_counts(db_url).values()) == {0}


def test_without_a_configured_token_ingest_is_closed(db_url: str, document: dict) -> None:
    with TestClient(create_app(Settings(database_url=db_url, ingest_token=None))) as c:
        resp = c.post("/api/v1/runs", json=document, headers=AUTH)
    assert resp.status_code == 401
    assert "no KNOWNGOOD_INGEST_TOKEN configured" in resp.json()["detail"]


def test_the_token_is_checked_before_the_body(client: TestClient) -> None:
    assert client.post("/api/v1/runs", json={"junk": True}).status_code == 401


def test_sending_a_run_twice_stores_it_once(client: TestClient, db_url: str, document: dict, fresh_db: Any,
                                            db_dump: Any, api_answers: Any) -> None:
    first = client.post("/api/v1/runs", json=document, headers=AUTH)
    assert first.status_code == 201, first.text
    assert first.json()["cases_added"] == 8 and first.json()["runs"] == [document["runs"][0]["id"]]
    stored = db_dump(db_url)
    second = client.post("/api/v1/runs", json=document, headers=AUTH)
    assert second.status_code == 200
    assert second.json()["cases_added"] == 0 and second.json()["cases_existing"] == 8
    assert db_dump(db_url) == stored
    # What was posted is what a file import stores, and the API answers the same from it.
    reference = fresh_db("sqlite")
    assert cli.main(["snapshot", "import", str(SMOKE), "--db", reference]) == 0
    assert db_dump(reference) == stored
    assert api_answers(db_url) == api_answers(reference)


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (lambda d: d["cases"][6]["steps"][2].update(ordinal=-1), ["body", "cases", 6, "steps", 2, "ordinal"]),
        (lambda d: d["cases"][3].update(environment={"hash": "f" * 64, "lock_hash": None}), "cases[3].environment"),
        (lambda d: d["cases"].append(copy.deepcopy(d["cases"][0])), "cases[8]: the same case identity"),
        (lambda d: d.update(format="something-else"), ["body", "format"]),
    ],
)
def test_a_malformed_body_is_422_and_stores_nothing(client: TestClient, db_url: str, document: dict,
                                                    corrupt: Any, fragment: Any, db_counts: Any) -> None:
    corrupt(document)
    resp = client.post("/api/v1/runs", json=document, headers=AUTH)
    assert resp.status_code == 422
    detail = resp.json()["detail"][0]
    if isinstance(fragment, list):
        assert detail["loc"] == fragment
    else:
        assert fragment in detail["msg"]
    assert set(db_counts(db_url).values()) == {0}


def test_ingest_is_in_the_openapi_document(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/v1/runs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Snapshot")
    assert {"200", "201", "401", "422"} <= set(post["responses"])
    assert post["security"] == [{"HTTPBearer": []}]
