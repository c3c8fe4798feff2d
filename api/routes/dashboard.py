"""GET /: the first page, a table of every recorded case."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api import queries
from api.deps import SessionDep

router = APIRouter(include_in_schema=False)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem;font-size:.9rem}
td.pass{background:#d4f7d4}td.fail,td.crash,td.timeout,td.oom,td.error{background:#f9d0d0}td.skip{background:#eee}
code{font-size:.85rem}
"""


@router.get("/", response_class=HTMLResponse)
def dashboard(session: SessionDep) -> HTMLResponse:
    rows = queries.status_table(session)
    body = "".join(
        f"<tr><td>{escape(env)}</td><td>{escape(model)}</td><td>{escape(route)}</td>"
        f"<td>{escape(exporter)} / {opset}</td><td class='{escape(status)}'>{escape(status)}</td>"
        f"<td>{'' if diff is None else f'{diff:.2e}'}</td><td><code>{escape(sig or '')}</code></td></tr>"
        for env, model, route, exporter, opset, status, diff, sig in rows
    )
    html = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>knowngood</title><style>{_STYLE}</style>"
        f"</head><body><h1>knowngood</h1><p>{len(rows)} recorded cases. API: <a href='/docs'>/docs</a>, "
        f"e.g. <code>/api/v1/chains?models=resnet&amp;route=onnxruntime</code></p>"
        f"<table id='cases'><thead><tr><th>environment</th><th>model</th><th>route</th><th>exporter / opset</th>"
        f"<th>status</th><th>max abs diff</th><th>signature</th></tr></thead><tbody>{body}</tbody></table>"
        f"</body></html>"
    )
    return HTMLResponse(html)
