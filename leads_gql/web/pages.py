"""The pages for people and what they load: the leads page (`/`), GraphiQL (a
browser's GET /graphql), the REST docs (`/docs`) and the files under `/static/`.

Every page loads its code from this server alone (GraphiQL and React are vendored
under `static/vendor/`, see tools/vendor_assets.py), under a Content-Security-Policy
whose sources are the server's own origin only: no inline script, no other host.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import hashlib
import html
import json
import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from leads_gql.errors import NotFound

# The pages' policy: the server's own origin, nothing inline, no eval.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'{styles}; "
    "img-src 'self'; font-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE_CSP = _POLICY.format(styles="")
# GraphiQL's menus and dialogs lock the page's scrolling with one <style> element
# (react-remove-scroll-bar), the same text on this page, which never scrolls: it is
# allowed by its hash. The browser tests fail on any other blocked style.
_GRAPHIQL_SCROLL_LOCK = "'sha256-Y/huXlwoYkVyQlxwSVcCi1RCDGDCSVBzDt0hYP9qlTc='"
# GraphiQL's, and that of any other HTML that sets none of its own (the edge adds it).
GRAPHIQL_CSP = _POLICY.format(styles=f" {_GRAPHIQL_SCROLL_LOCK}")
# A static file opened by itself (an SVG, say) runs nothing either.
_ASSET_CSP = "default-src 'none'; style-src 'self'; frame-ancestors 'none'; sandbox"
# A year: vendored files sit in folders named by their version, and the pages link
# their own files with ?v=<hash of the content>; other requests revalidate.
_FOREVER = "public, max-age=31536000, immutable"
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".json": "application/json",
    "": "text/plain; charset=utf-8",  # the licences: LICENSE
}


@dataclasses.dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    version: str  # the start of its sha256, in links as ?v=
    immutable: bool

    @property
    def etag(self) -> str:
        # Weak: the gzipped and the plain bytes are the same file.
        return f'W/"{self.version}"'

    @property
    def compressible(self) -> bool:
        return self.media_type.startswith(("text/", "image/svg", "application/json"))


@functools.cache
def _gzipped(name: str) -> bytes:
    return gzip.compress(ASSETS[name].body, 6, mtime=0)


def _walk(folder: Traversable, prefix: str = "") -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            assets.update(_walk(entry, f"{name}/"))
            continue
        suffix = "." + entry.name.rpartition(".")[2] if "." in entry.name else ""
        if suffix == ".html" or suffix not in _MEDIA_TYPES:
            continue  # the page templates are served by their routes
        body = entry.read_bytes()
        assets[name] = Asset(
            body=body,
            media_type=_MEDIA_TYPES[suffix],
            version=hashlib.sha256(body).hexdigest()[:16],
            immutable=name.startswith("vendor/"),
        )
    return assets


STATIC = files("leads_gql.web").joinpath("static")
ASSETS = _walk(STATIC)
_LINK = re.compile(r'(src|href)="/static/([^"?#]+)"')


def _linked(page: str) -> str:
    """The page with each link to a file of ours carrying the file's version, so
    that browsers may keep the file for a year and still see every change."""

    def versioned(match: re.Match[str]) -> str:
        attribute, name = match.groups()
        asset = ASSETS.get(name)
        if asset is None:
            raise LookupError(f"a page links /static/{name}, which is not shipped")
        query = "" if asset.immutable else f"?v={asset.version}"
        return f'{attribute}="/static/{name}{query}"'

    return _LINK.sub(versioned, page)


GRAPHIQL_HTML = _linked(STATIC.joinpath("graphiql.html").read_text())
LEADS_HTML = _linked(STATIC.joinpath("leads.html").read_text())
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


async def leads_page(request: Request) -> Response:
    """The operators' page. It needs no token to load: everything it shows comes
    from the GraphQL API, with the token typed into it."""
    return HTMLResponse(LEADS_HTML, headers=_PAGE_HEADERS)


async def static_file(request: Request) -> Response:
    """A shipped file, from memory; only names in ASSETS (no path from the URL
    reaches the file system)."""
    name = request.path_params["path"]
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound("No such file")
    forever = asset.immutable or request.query_params.get("v") == asset.version
    headers = {
        "ETag": asset.etag,
        "Cache-Control": _FOREVER if forever else "no-cache",
        "Content-Security-Policy": _ASSET_CSP,
        "Vary": "Accept-Encoding",
    }
    if f'"{asset.version}"' in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.compressible and "gzip" in request.headers.get("accept-encoding", ""):
        body = _gzipped(name)
        headers["Content-Encoding"] = "gzip"
    return Response(body, headers=headers, media_type=asset.media_type)


def csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


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
