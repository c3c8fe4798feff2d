"""The API's answers on the shipped snapshot, pinned: a layout change must not change a single byte of them.

`KNOWNGOOD_WRITE_GOLDEN=1 pytest tests/test_api_golden.py` rewrites the fixture; do that only for a change
whose new answers were read and meant (say which in the commit).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store.settings import Settings

GOLDEN = Path(__file__).parent / "fixtures" / "api-golden.json.gz"

# GET paths with their query strings, as a user would type them.
QUERIES = [
    "/api/v1/chains?models=resnet&route=onnxruntime",
    "/api/v1/chains?models=resnet,grid_sample&route=onnxruntime",
    "/api/v1/chains?models=resnet,transformer&route=onnx2tf",
    "/api/v1/chains?models=resnet&route=onnx2tf&require=tensorflow-cpu>=2.18",
    "/api/v1/chains?models=batchnorm&route=onnx-tf",
    "/api/v1/chains?models=control_flow&route=onnxruntime&exporter=dynamo",
    "/api/v1/lockfile?models=resnet&route=onnxruntime",
    "/api/v1/lockfile?models=resnet&route=onnx2tf&format=constraints",
    "/api/v1/lockfile?models=resnet&route=onnx2tf&format=pyproject",
    "/api/v1/matrix?route=onnxruntime",
    "/api/v1/matrix?route=onnx2tf&models=resnet",
    "/api/v1/failures",
    "/api/v1/failures?route=onnx2tf",
    "/api/v1/runs",
]
# Local to one database: row ids and timestamps as the driver renders them.
_VOLATILE = re.compile(r'"(environment_id|id|run_id)": \d+')


def answers(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with TestClient(create_app(Settings(database_url=url))) as client:
        for query in QUERIES:
            resp = client.get(query)
            body = resp.text
            out[query] = {"status": resp.status_code, "body": _VOLATILE.sub(r'"\1": 0', body)}
    return out


def test_api_answers_on_the_shipped_snapshot_are_unchanged(shipped_db: Callable[[str], str]) -> None:
    got = answers(shipped_db("sqlite"))  # imported with `knowngood snapshot import`
    if os.environ.get("KNOWNGOOD_WRITE_GOLDEN") == "1":
        GOLDEN.write_bytes(gzip.compress(json.dumps(got, indent=1, sort_keys=True).encode(), mtime=0))
        pytest.skip("golden answers written")
    expected = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    assert [q for q in QUERIES if got[q] != expected.get(q)] == []
