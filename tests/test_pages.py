"""The pages and documents served without a token: GraphiQL, /docs, /openapi.json."""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import hashlib
import json
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from leads_gql.app import create_app
from leads_gql.config import Settings
from leads_gql.web import pages

pytestmark = pytest.mark.anyio

FLOW = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


async def test_openapi_document_describes_both_prefixes(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/leads/{id}",
        "/leads/{id}/export",
        "/leads",
        "/leads/batch",
        "/api/v1/leads/{id}",
        "/api/v1/leads/{id}/export",
        "/api/v1/leads",
        "/api/v1/leads/batch",
    }
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    lead = doc["components"]["schemas"]["Lead"]
    assert lead["required"] == [
        "id", "name", "email", "phone", "chatflowid", "chatId", "createdDate"
    ]  # fmt: skip
    post = doc["paths"]["/api/v1/leads"]["post"]["responses"]
    assert set(post) >= {"200", "400", "401", "403", "409", "413", "415", "422"}


async def test_docs_page_works_offline(client: httpx.AsyncClient) -> None:
    answer = await client.get("/docs")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert answer.headers["x-content-type-options"] == "nosniff"
    # Nothing is loaded from elsewhere: no script, no external stylesheet or image.
    assert "<script" not in answer.text
    assert not re.search(r"""(src|href)=['"]https?://""", answer.text)
    assert "POST /api/v1/leads" in answer.text


async def test_graphiql_for_browsers_without_a_token(client: httpx.AsyncClient) -> None:
    answer = await client.get("/graphql", headers={"Accept": "text/html"})
    assert answer.status_code == 200
    assert "graphiql" in answer.text.lower()
    assert_own_origin_only(answer.headers["content-security-policy"])
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"


async def test_leads_page_needs_no_token(client: httpx.AsyncClient) -> None:
    answer = await client.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert "<h1" in answer.text and "Access token" in answer.text
    csp = answer.headers["content-security-policy"]
    assert_own_origin_only(csp)
    assert "sha256-" not in csp  # not even a hash: nothing inline at all
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-cache"
    # The REST and GraphQL paths are still what they were.
    assert (await client.get("/leads")).status_code == 405
    assert (await client.post("/", json={})).status_code == 405


def assert_own_origin_only(csp: str) -> None:
    """Sources are the server's own origin ('self'), 'none', or the hash of an
    inline style: no host, no scheme, no wildcard, nothing unsafe."""
    directives = {
        part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()
    }
    assert directives["default-src"] in (["'none'"], ["'self'"])
    for name in ("script-src", "connect-src", "img-src", "font-src", "style-src"):
        assert "'self'" in directives[name], name
    assert directives["script-src"] == ["'self'"]  # no inline script, no eval
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["form-action"] == ["'none'"]
    for name, sources in directives.items():
        for source in sources:
            assert source in ("'self'", "'none'") or (
                name == "style-src"
                and re.fullmatch(r"'sha256-[A-Za-z0-9+/]+={0,2}'", source)
            ), (name, source)


async def test_graphiql_and_introspection_can_be_turned_off(
    settings: Settings, auth: dict[str, str]
) -> None:
    app = create_app(dataclasses.replace(settings, graphiql=False, introspection=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            page = await c.get("/graphql", headers={"Accept": "text/html"})
            assert page.status_code == 401
            assert "graphiql" not in page.text.lower()
            schema = await c.post(
                "/graphql",
                json={"query": "{ __schema { types { name } } }"},
                headers=auth,
            )
            assert "errors" in schema.json() and "data" not in schema.json()
            ok = await c.post(
                "/graphql",
                json={"query": f'{{ lead(id: "{FLOW}") {{ id }} }}'},
                headers=auth,
            )
            assert ok.json() == {"data": {"lead": None}}


# ---- the files the pages load ------------------------------------------------

STATIC = Path(pages.__file__).parent / "static"
OWN_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".png": "image/png",
    ".json": "application/json",
    "": "text/plain; charset=utf-8",
}
# An XML namespace names, it does not fetch.
NAMESPACE = "http://www.w3.org/2000/svg"


def linked(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)


async def test_pages_load_only_files_the_server_ships(
    client: httpx.AsyncClient,
) -> None:
    for path, headers in (("/", {}), ("/graphql", {"Accept": "text/html"})):
        page = (await client.get(path, headers=headers)).text
        # No inline code: every script is a file, no style element or attribute.
        assert "<style" not in page and " style=" not in page
        for script in re.findall(r"<script[^>]*>", page):
            assert 'src="/static/' in script, script
        links = [url for url in linked(page) if url.startswith("/static/")]
        assert len(links) >= 3
        for url in linked(page):
            assert url.startswith(("/", "#")) and not url.startswith("//"), url
        for url in links:
            answer = await client.get(url)
            assert answer.status_code == 200, url
            name = url.split("?")[0].removeprefix("/static/")
            asset = pages.ASSETS[name]
            # Our own files carry their version, and may then be kept a year.
            if not asset.immutable:
                assert url.endswith(f"?v={asset.version}"), url
            assert "immutable" in answer.headers["cache-control"], url


def test_own_files_name_no_other_host() -> None:
    own = [
        path
        for path in STATIC.rglob("*")
        if path.suffix in (".html", ".js", ".css", ".svg")
        and "vendor" not in path.relative_to(STATIC).parts
    ]
    assert {p.name for p in own} >= {
        "leads.html",
        "leads.js",
        "leads.css",
        "graphiql.html",
    }
    for path in own:
        text = path.read_text().replace(NAMESPACE, "")
        hosts = r"\b(https?|wss?)://[\w.-]|[\s\"'(]//[a-z0-9-]+\.[a-z0-9.-]+/"
        assert not re.search(hosts, text, re.I), path
    # The vendored stylesheets load nothing from elsewhere: no import, and each
    # url() is a file beside them (the tool turned data: URLs into files).
    for css in STATIC.glob("vendor/*/*.css"):
        text = css.read_text()
        assert "@import" not in text
        for url in re.findall(r"url\(([^)]*)\)", text):
            assert (css.parent / url.strip("'\"")).is_file(), url


def test_the_leads_page_never_runs_text_as_code() -> None:
    """Text from a lead only ever goes in with textContent or an attribute."""
    script = re.sub(r"^\s*//.*$", "", (STATIC / "leads.js").read_text(), flags=re.M)
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setTimeout("',
        ".srcdoc",
    ):
        assert sink not in script, sink


def test_vendored_files_match_the_manifest() -> None:
    manifest = json.loads((STATIC / "vendor.json").read_text())
    listed = set()
    for package in manifest["packages"]:
        folder = f"vendor/{package['name']}-{package['version']}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"])  # pinned
        assert package["integrity"].startswith("sha512-")
        assert package["license"] == "MIT"
        paths = [entry["path"] for entry in package["files"]]
        assert f"{folder}/LICENSE" in paths  # the licence kept beside the code
        assert "MIT License" in (STATIC / folder / "LICENSE").read_text()
        for entry in package["files"]:
            assert entry["path"].startswith(f"{folder}/")
            data = (STATIC / entry["path"]).read_bytes()
            digest = base64.b64encode(hashlib.sha384(data).digest()).decode()
            assert entry["sha384"] == f"sha384-{digest}", entry["path"]
            listed.add(entry["path"])
    shipped = {
        str(path.relative_to(STATIC))
        for path in (STATIC / "vendor").rglob("*")
        if path.is_file()
    }
    assert shipped == listed


async def test_static_files_types_caching_and_headers(
    client: httpx.AsyncClient,
) -> None:
    assert len(pages.ASSETS) > 10
    for name, asset in pages.ASSETS.items():
        answer = await client.get(
            f"/static/{name}", headers={"Accept-Encoding": "identity"}
        )
        assert answer.status_code == 200, name
        suffix = Path(name).suffix
        assert answer.headers["content-type"] == OWN_TYPES[suffix], name
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.content == (STATIC / name).read_bytes()
        assert answer.headers["etag"] == f'W/"{asset.version}"'
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        expected = "immutable" if name.startswith("vendor/") else "no-cache"
        assert expected in answer.headers["cache-control"], name

    versioned = await client.get(
        f"/static/leads.js?v={pages.ASSETS['leads.js'].version}"
    )
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    stale = await client.get("/static/leads.js?v=0000")
    assert stale.headers["cache-control"] == "no-cache"
    again = await client.get(
        "/static/leads.js", headers={"If-None-Match": stale.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    packed = await client.get(
        "/static/vendor/graphiql-3.9.0/graphiql.min.js",
        headers={"Accept-Encoding": "gzip"},
    )
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert (
        packed.content
        == (STATIC / "vendor/graphiql-3.9.0/graphiql.min.js").read_bytes()
    )
    assert int(packed.headers["content-length"]) < len(packed.content) / 3
    head = await client.head("/static/leads.css")
    assert head.status_code == 200 and head.headers["content-type"].startswith(
        "text/css"
    )


async def test_static_serves_only_what_ships(client: httpx.AsyncClient) -> None:
    for path in (
        "/static/nothing.js",
        "/static/leads.html",  # the templates are served by their routes
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/vendor",
        "/static/",
    ):
        answer = await client.get(path)
        assert answer.status_code == 404, path
        assert answer.json() == {"statusCode": 404, "message": answer.json()["message"]}
        assert answer.headers["x-content-type-options"] == "nosniff"
    posted = await client.post("/static/leads.js")
    assert posted.status_code == 405


def test_every_static_file_is_package_data() -> None:
    """What the pages load is in the wheel, not only in a checkout."""
    pyproject = tomllib.loads((STATIC.parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["leads_gql"]
    for path in STATIC.rglob("*"):
        if path.is_file():
            name = str(path.relative_to(STATIC.parents[1]))
            assert any(
                fnmatch.fnmatch(name, p) and name.count("/") == p.count("/")
                for p in patterns
            ), name
