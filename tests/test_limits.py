"""Write rate limits: off by default for tokens, on when the operator sets them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import pytest

from leads_gql.app import create_app
from leads_gql.config import ConfigError, Settings
from leads_gql.errors import RateLimited
from leads_gql.limits import Rate, TokenBuckets, client_key
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


def test_clients_are_keyed_by_ipv4_address_and_ipv6_slash_64() -> None:
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2::1") == client_key("2001:DB8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key("testclient") == "testclient"


async def test_one_ipv6_slash_64_shares_one_public_bucket(settings: Settings) -> None:
    flow = new_id()
    app = create_app(
        dataclasses.replace(
            settings,
            public_flows={flow: ("https://shop.example",)},
            public_rate_limit=Rate(2, 60),
        )
    )

    async def post(address: str) -> int:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            answer = await c.post(
                "/leads",
                json={"chatflowid": flow, "name": "Visitor"},
                headers={"Origin": "https://shop.example"},
            )
            return answer.status_code

    async with app.router.lifespan_context(app):
        same_64 = [await post(f"2001:db8:aa:bb::{n:x}") for n in range(1, 4)]
        other_64 = await post("2001:db8:aa:bc::1")
    assert same_64 == [200, 200, 429]
    assert other_64 == 200


async def test_a_limited_graphql_create_is_429_with_retry_after(
    settings: Settings, make_token: Callable[..., str]
) -> None:
    """As REST answers: 429 and Retry-After, with `extensions.retryAfter`, on the
    compiled and the ordinary path alike, and for a batch holding a limited write."""
    app = create_app(dataclasses.replace(settings, rate_limit_writes=Rate(2, 60)))
    alice = {"Authorization": f"Bearer {make_token(sub='alice')}"}
    flow = new_id()
    create = {"query": MUTATION, "variables": {"i": {"chatflowid": flow, "name": "a"}}}
    inline = {
        "query": f'mutation {{ createLead(input: {{chatflowid: "{flow}", name: "b"}})'
        " { id } }"
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            answers = [
                await c.post("/graphql", json=body, headers=alice)
                for body in (create, create, create, inline)
            ]
            batch = await c.post("/graphql", json=[create, inline], headers=alice)
            listed = await c.get(f"/leads/{flow}", headers=alice)
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    for limited in (*answers[2:], batch):
        assert 1 <= int(limited.headers["retry-after"]) <= 30
    for limited in answers[2:]:
        (error,) = limited.json()["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] == int(limited.headers["retry-after"])
        assert limited.json()["data"] is None
    assert batch.status_code == 429
    assert [r["errors"][0]["extensions"]["code"] for r in batch.json()] == [
        "RATE_LIMITED",
        "RATE_LIMITED",
    ]
    assert len(listed.json()) == 2
