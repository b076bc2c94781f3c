"""The pages and documents served without a token: GraphiQL, /docs, /openapi.json."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_openapi_document_describes_both_prefixes(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/leads/{id}",
        "/leads",
        "/api/v1/leads/{id}",
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
