"""The HTML pages: GraphiQL (a browser's GET /graphql) and the REST docs (/docs).

Each page gets a Content-Security-Policy that allows exactly what it loads; inline
code is allowed by its hash, never by 'unsafe-inline' scripts.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib.resources import files
from typing import Any


def csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


GRAPHIQL_HTML = files("leads_gql.web").joinpath("static/graphiql.html").read_text()
_graphiql_script = re.search(r"<script>(.*?)</script>", GRAPHIQL_HTML, re.S)
assert _graphiql_script is not None
# GraphiQL comes from unpkg, pinned by Subresource Integrity in the page.
GRAPHIQL_CSP = (
    "default-src 'none'; "
    f"script-src https://unpkg.com {csp_hash(_graphiql_script.group(1))}; "
    "style-src https://unpkg.com 'unsafe-inline'; "
    "font-src https://unpkg.com data:; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
    "padding:0 1rem;color:#222}code,pre{background:#f4f4f4;padding:.1rem .3rem}"
    "pre{padding:.6rem;overflow:auto}h2{border-top:1px solid #ddd;padding-top:1rem}"
    "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;"
    "text-align:left;vertical-align:top}"
)
# The docs page is plain HTML with one inline style, allowed by its hash: it works
# offline and runs no script at all.
DOCS_CSP = (
    f"default-src 'none'; style-src {csp_hash(_STYLE)}; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def render_docs(doc: dict[str, Any]) -> str:
    """A self-contained HTML page describing the REST shim (no CDN, no script)."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(doc['info']['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(doc['info']['title'])} <small>{e(doc['info']['version'])}</small>",
        "</h1>",
        f"<p>{e(doc['info']['description'])} Every request carries "
        "<code>Authorization: Bearer &lt;JWT&gt;</code>. The machine-readable "
        "document is <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            parts.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2>")
            parts.append(f"<p>{e(op['summary'])}</p>")
            if "requestBody" in op:
                parts.append("<p>Body: a JSON <a href='#LeadInput'>LeadInput</a>.</p>")
            parts.append("<table><tr><th>status</th><th>meaning</th></tr>")
            for status, response in op["responses"].items():
                parts.append(
                    f"<tr><td>{e(status)}</td><td>{e(response['description'])}</td></tr>"
                )
            parts.append("</table>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<h2 id='{e(name)}'>{e(name)}</h2>")
        if "description" in schema:
            parts.append(f"<p>{e(schema['description'])}</p>")
        parts.append(f"<pre>{e(json.dumps(schema, indent=2))}</pre>")
    parts.append("</body></html>")
    return "".join(parts)
