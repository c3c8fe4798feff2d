"""The package index client, against a real HTTP server on loopback: JSON and HTML pages, errors, one default."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from matrix import expand, versions

WHEEL = "six-{v}-py2.py3-none-any.whl"
JSON_PAGE = {
    "versions": ["1.16.0", "1.17.0"],
    "files": [
        {"filename": WHEEL.format(v="1.16.0"), "url": "../../files/a.whl", "hashes": {"sha256": "aa"},
         "upload-time": "2021-05-05T14:18:17Z"},
        {"filename": WHEEL.format(v="1.17.0"), "url": "../../files/b.whl", "hashes": {"sha256": "bb"},
         "upload-time": "2024-12-04T17:35:26Z"},
        {"filename": "six-1.15.0.tar.gz", "url": "../../files/c.tar.gz", "hashes": {"sha256": "cc"}, "yanked": True},
    ],
}
HTML_PAGE = """<!DOCTYPE html><html><body>
<a href="../../files/a.whl#sha256=aa">six-1.16.0-py2.py3-none-any.whl</a>
<a href="../../files/b.whl#sha256=bb">six-1.17.0-py2.py3-none-any.whl</a>
<a href="../../files/c.tar.gz#sha256=cc" data-yanked="">six-1.15.0.tar.gz</a>
</body></html>"""


class _Index(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/json/six/":
            body, kind = json.dumps(JSON_PAGE).encode(), "application/vnd.pypi.simple.v1+json"
        elif self.path == "/html/six/":
            body, kind = HTML_PAGE.encode(), "text/html"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def index() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_json_and_html_indexes_give_the_same_releases(index: str) -> None:
    from_json = dict(versions.fetch_releases("six", f"{index}/json/"))
    from_html = dict(versions.fetch_releases("Six", f"{index}/html"))
    assert from_json == {"1.16.0": dt.datetime(2021, 5, 5, 14, 18, 17, tzinfo=dt.UTC),
                         "1.17.0": dt.datetime(2024, 12, 4, 17, 35, 26, tzinfo=dt.UTC)}
    assert from_html == {"1.16.0": None, "1.17.0": None}  # PEP 503 has no upload times; yanked files are left out
    page = versions.fetch_project("six", f"{index}/html")
    assert page.url == f"{index}/html/six/"
    assert [f["hashes"] for f in page.files] == [{"sha256": "aa"}, {"sha256": "bb"}, {"sha256": "cc"}]


def test_index_errors_are_one_line_with_the_status(index: str) -> None:
    with pytest.raises(versions.IndexUnavailable, match=r"^index .*/json: nosuch: not on the index$") as info:
        versions.fetch_project("nosuch", f"{index}/json")
    assert info.value.status == 404
    with pytest.raises(versions.IndexUnavailable, match=r"^index http://127.0.0.1:1: six: could not be reached"):
        versions.fetch_project("six", "http://127.0.0.1:1", timeout=5)


def test_one_default_index() -> None:
    env = expand.Environment(python="3.11", requirements=("six",))
    assert env.index_url == versions.index_url({}) == versions.DEFAULT_INDEX
    mirror = {"UV_DEFAULT_INDEX": "https://mirror.example/simple/"}
    assert expand.Environment(python="3.11", requirements=("six",), index=tuple(mirror.items())).index_url \
        == versions.index_url(mirror) == "https://mirror.example/simple/"
