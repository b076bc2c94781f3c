"""Chat widgets as they are: Flowise's embed posts leads with no token, from the
visitor's browser on the site's origin. Only flows the operator opts in accept it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from leads_gql.app import create_app
from leads_gql.config import Settings
from leads_gql.limits import Rate
from tests.conftest import new_id
from tests.server import Server, cli_env

pytestmark = pytest.mark.anyio

SITE = "https://shop.example"
FLOW = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
async def public(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        dataclasses.replace(
            settings,
            public_flows={FLOW: (SITE,)},
            public_rate_limit=Rate(5, 60),
            cors_origins=("https://admin.example",),
        )
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


def embed_lead(flow: str = FLOW) -> dict[str, str]:
    return {
        "chatflowid": flow,
        "chatId": new_id(),
        "name": "Visitor",
        "email": "visitor@example.com",
        "phone": "+1 555 123 4567",
    }


async def test_the_embeds_request_preflight_included(public: httpx.AsyncClient) -> None:
    preflight = await public.options(
        "/api/v1/leads/",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == SITE
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"].lower()

    lead = embed_lead()
    created = await public.post(
        "/api/v1/leads/",
        json=lead,
        headers={"Origin": SITE, "Referer": f"{SITE}/products"},
    )
    assert created.status_code == 200, created.text
    assert created.headers["access-control-allow-origin"] == SITE
    body = created.json()
    assert {k: body[k] for k in lead} == lead


async def test_public_capture_is_write_only_and_flow_bound(
    public: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    origin = {"Origin": SITE}
    assert (
        await public.get(f"/api/v1/leads/{FLOW}", headers=origin)
    ).status_code == 401
    graphql = await public.post(
        "/graphql",
        json={
            "query": "query($id: ID!) { lead(id: $id) { id } }",
            "variables": {"id": FLOW},
        },
        headers=origin,
    )
    assert graphql.status_code == 401
    other_flow = await public.post(
        "/api/v1/leads", json=embed_lead(new_id()), headers=origin
    )
    assert other_flow.status_code == 403
    invalid = await public.post(
        "/api/v1/leads", json={**embed_lead(), "email": "nope"}, headers=origin
    )
    assert invalid.status_code == 422
    # Nothing was stored by the refused requests.
    listed = await public.get(f"/leads/{FLOW}", headers=auth)
    assert listed.status_code == 404


async def test_other_origins_and_no_origin_need_a_token(
    public: httpx.AsyncClient,
) -> None:
    for headers in ({}, {"Origin": "https://evil.example"}):
        answer = await public.post("/leads", json=embed_lead(), headers=headers)
        assert answer.status_code == 401
        assert "access-control-allow-origin" not in answer.headers
    preflight = await public.options(
        "/api/v1/leads",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert preflight.status_code == 403
    # The public origin may not preflight a read.
    read = await public.options(
        f"/api/v1/leads/{FLOW}",
        headers={"Origin": SITE, "Access-Control-Request-Method": "GET"},
    )
    assert read.status_code == 403


async def test_public_capture_is_rate_limited(public: httpx.AsyncClient) -> None:
    answers = [
        await public.post("/leads", json=embed_lead(), headers={"Origin": SITE})
        for _ in range(7)
    ]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    limited = answers[-1]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["statusCode"] == 429


async def test_configured_cors_origin_may_read_with_a_token(
    public: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    preflight = await public.options(
        "/graphql",
        headers={
            "Origin": "https://admin.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    answer = await public.get(
        f"/leads/{FLOW}", headers={**auth, "Origin": "https://admin.example"}
    )
    assert answer.headers["access-control-allow-origin"] == "https://admin.example"


async def test_no_cors_by_default(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    answer = await client.get(
        f"/leads/{FLOW}", headers={**auth, "Origin": "https://shop.example"}
    )
    assert "access-control-allow-origin" not in answer.headers


async def test_a_public_visitor_cannot_read_a_lead_by_retrying_its_id(
    public: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    lead_id = new_id()
    stored = await public.post(
        "/leads", json={**embed_lead(), "id": lead_id}, headers=auth
    )
    assert stored.status_code == 200
    probe = await public.post(
        "/leads",
        json={"id": lead_id, "chatflowid": FLOW, "name": "Visitor"},
        headers={"Origin": SITE},
    )
    assert probe.status_code == 200
    assert probe.json() == {**stored.json(), "email": None, "phone": None}


async def test_preflight_methods_are_matched_whole_and_refusals_vary_by_origin(
    public: httpx.AsyncClient,
) -> None:
    for method in ("P", "OS", "GET, POST", "PUT"):
        refused = await public.options(
            "/leads",
            headers={"Origin": SITE, "Access-Control-Request-Method": method},
        )
        assert refused.status_code == 403, method
        assert refused.headers["vary"] == "Origin"
    other = await public.post(
        "/leads", json=embed_lead(), headers={"Origin": "https://evil.example"}
    )
    assert other.status_code == 401
    assert "access-control-allow-origin" not in other.headers
    # A cache must not serve this answer to an allowed origin, nor the reverse.
    assert other.headers["vary"] == "Origin"


@pytest.mark.slow
def test_behind_a_trusted_proxy_visitors_are_limited_by_their_own_slash_64(
    tmp_path: Path,
) -> None:
    """A real server behind a proxy it trusts (LEADS_FORWARDED_ALLOW_IPS): the
    visitor's forwarded address keys the limit, by /64; from an untrusted peer
    X-Forwarded-For changes nothing."""

    def posts(server: Server, forwarded: list[str]) -> list[int]:
        answers = []
        for address in forwarded:
            answer = httpx.post(
                f"{server.url}/leads",
                json=embed_lead(),
                headers={"Origin": SITE, "X-Forwarded-For": address},
            )
            answers.append(answer.status_code)
        return answers

    base = {
        "LEADS_JWT_SECRET": "proxy-test-secret-0123456789abcdefghijklmnopq",
        "LEADS_PUBLIC_FLOWS": json.dumps({FLOW: [SITE]}),
        "LEADS_PUBLIC_RATE_LIMIT": "2/minute",
    }
    trusted = cli_env(
        **base,
        LEADS_DATABASE_URL=f"sqlite:///{tmp_path}/a.db",
        LEADS_FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    with Server(tmp_path, trusted) as server:
        one_64 = posts(
            server, ["2001:db8:7:1::1", "2001:db8:7:1::2", "2001:db8:7:1::3"]
        )
        another = posts(server, ["2001:db8:7:2::1", "203.0.113.5"])
    assert one_64 == [200, 200, 429]
    assert another == [200, 200]
    untrusted = cli_env(**base, LEADS_DATABASE_URL=f"sqlite:///{tmp_path}/b.db")
    with Server(tmp_path, untrusted) as server:
        spoofed = posts(server, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    assert spoofed == [200, 200, 429]
