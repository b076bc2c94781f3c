"""Operations over HTTP: /healthz, /readyz, /metrics, request ids, JSON logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leads_gql.app import create_app
from leads_gql.config import Settings
from leads_gql.telemetry import JSONFormatter
from tests.conftest import new_id

pytestmark = pytest.mark.anyio


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_readyz_is_503_when_the_schema_is_behind(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/empty.db",
        jwt_secret="s" * 40,
        migrate_on_start=False,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert "leads-gql migrate" in ready.json()["reason"]
            assert (await c.get("/healthz")).status_code == 200


async def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:9/none",
        jwt_secret="s" * 40,
        migrate_on_start=False,
        db_connect_timeout=2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["retry-after"]
            assert (await c.get("/healthz")).status_code == 200


async def test_metrics_count_requests_operations_and_leads(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    before = (await client.get("/metrics")).text
    flow = new_id()
    lead = {"id": new_id(), "chatflowid": flow, "name": "Ada"}
    for _ in range(2):  # the retry stores nothing new
        assert (
            await client.post("/api/v1/leads", json=lead, headers=auth)
        ).status_code == 200
    await client.post(
        "/graphql",
        json={
            "query": "query Mine($id: ID!) { lead(id: $id) { id } }",
            "variables": {"id": lead["id"]},
        },
        headers=auth,
    )
    after = (await client.get("/metrics")).text
    assert after.startswith("# HELP")

    def delta(name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        return samples(after, name).get(key, 0) - samples(before, name).get(key, 0)

    assert delta("leads_created_total") == 1
    assert (
        delta(
            "leads_http_requests_total",
            method="POST",
            route="/api/v1/leads",
            status="200",
        )
        == 2
    )
    assert delta("leads_graphql_operations_total", operation="Mine", outcome="ok") == 1


async def test_refused_documents_cannot_use_up_the_operation_labels(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for n in range(250):
        refused = await client.post(
            "/graphql", json={"query": f"query Junk{n} {{ nope }}"}, headers=auth
        )
        assert "errors" in refused.json()
    await client.post(
        "/graphql", json={"query": "query Dashboard { __typename }"}, headers=auth
    )
    text = (await client.get("/metrics")).text
    ops = samples(text, "leads_graphql_operations_total")
    assert ops[(("operation", "Dashboard"), ("outcome", "ok"))] >= 1
    assert not any(dict(labels)["operation"].startswith("Junk") for labels in ops)


async def test_request_id_is_kept_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "req-42"})
    assert given.headers["x-request-id"] == "req-42"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert len(made.headers["x-request-id"]) == 32
    assert (
        made.headers["x-request-id"]
        != (await client.get("/healthz")).headers["x-request-id"]
    )


async def test_logs_are_json_without_tokens_or_contact_data(
    client: httpx.AsyncClient,
    make_token: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_token()
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "log-1"}
    flow = new_id()
    lead = {"chatflowid": flow, "email": "ada@example.com", "phone": "+44 20 7946 0958"}
    with caplog.at_level(logging.INFO, logger="leads_gql"):
        await client.post("/leads", json=lead, headers=headers)
        await client.post(
            "/graphql",
            json={
                "query": "mutation($i: LeadInput!) { createLead(input: $i) { id } }",
                "variables": {"i": {**lead, "email": "not-an-email"}},
            },
            headers=headers,
        )
        await client.get(
            f'/graphql?query={{lead(id:"{new_id()}"){{id}}}}', headers=headers
        )
        await client.get("/leads/" + flow, headers={"Authorization": "Bearer junk"})
    lines = [JSONFormatter().format(record) for record in caplog.records]
    assert lines
    text = "\n".join(lines)
    for secret in (token, "ada@example.com", "7946", "not-an-email", "junk"):
        assert secret not in text
    entries = [json.loads(line) for line in lines]
    first = entries[0]
    assert {"method", "path", "status", "duration_ms", "request_id"} <= first.keys()
    assert first["request_id"] == "log-1"
    assert first["status"] == 200
