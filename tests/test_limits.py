"""Write rate limits: off by default for tokens, on when the operator sets them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import pytest

from leads_gql.app import create_app
from leads_gql.config import ConfigError, Settings
from leads_gql.errors import RateLimited
from leads_gql.limits import Rate, TokenBuckets
from tests.conftest import new_id

pytestmark = pytest.mark.anyio

MUTATION = "mutation($i: LeadInput!) { createLead(input: $i) { id } }"


async def test_token_writes_are_not_limited_by_default(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    for i in range(60):
        answer = await client.post(
            "/leads", json={"chatflowid": flow, "name": f"n{i}"}, headers=auth
        )
        assert answer.status_code == 200


async def test_per_subject_limit_covers_rest_and_graphql(
    settings: Settings, make_token: Callable[..., str]
) -> None:
    app = create_app(dataclasses.replace(settings, rate_limit_writes=Rate(3, 60)))
    alice = {"Authorization": f"Bearer {make_token(sub='alice')}"}
    bob = {"Authorization": f"Bearer {make_token(sub='bob')}"}
    flow = new_id()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(2):
                ok = await c.post(
                    "/leads", json={"chatflowid": flow, "name": "a"}, headers=alice
                )
                assert ok.status_code == 200
            third = await c.post(
                "/graphql",
                json={
                    "query": MUTATION,
                    "variables": {"i": {"chatflowid": flow, "name": "a"}},
                },
                headers=alice,
            )
            assert "errors" not in third.json()
            limited = await c.post(
                "/leads", json={"chatflowid": flow, "name": "a"}, headers=alice
            )
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            over_graphql = await c.post(
                "/graphql",
                json={
                    "query": MUTATION,
                    "variables": {"i": {"chatflowid": flow, "name": "a"}},
                },
                headers=alice,
            )
            assert (
                over_graphql.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
            )
            # Reads are never limited; other subjects have their own bucket.
            assert (await c.get(f"/leads/{flow}", headers=alice)).status_code == 200
            ok = await c.post(
                "/leads", json={"chatflowid": flow, "name": "b"}, headers=bob
            )
            assert ok.status_code == 200


def test_buckets_refill_over_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("leads_gql.limits.time.monotonic", lambda: now[0])
    buckets = TokenBuckets(Rate(2, 10))
    buckets.take("k")
    buckets.take("k")
    with pytest.raises(RateLimited) as info:
        buckets.take("k")
    assert info.value.retry_after == 5
    now[0] += 5
    buckets.take("k")


@pytest.mark.parametrize("raw", ["10", "ten/minute", "0/second", "5/fortnight"])
def test_bad_rates_fail_at_start(raw: str) -> None:
    with pytest.raises(ConfigError, match="LEADS_RATE_LIMIT_WRITES"):
        Settings.from_env({"LEADS_RATE_LIMIT_WRITES": raw})
