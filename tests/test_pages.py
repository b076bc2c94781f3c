"""The pages and documents served without a token: GraphiQL, /docs, /openapi.json."""

from __future__ import annotations

import dataclasses
import re

import httpx
import pytest

from leads_gql.app import create_app
from leads_gql.config import Settings

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
        "/api/v1/leads/{id}",
        "/api/v1/leads/{id}/export",
        "/api/v1/leads",
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
    csp = answer.headers["content-security-policy"]
    assert (
        "default-src 'none'" in csp
        and "'unsafe-inline'" not in csp.split("style-src")[0]
    )
    assert answer.headers["x-frame-options"] == "DENY"


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
