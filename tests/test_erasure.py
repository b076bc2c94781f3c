"""Deleting leads over HTTP: deleteLead, eraseContact, the leads:delete scope, the
audit trail and the metrics, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from leads_gql.app import create_app
from leads_gql.config import Settings
from leads_gql.telemetry import JSONFormatter
from tests.conftest import SECRET, new_id
from tests.test_telemetry import samples

pytestmark = pytest.mark.anyio

FIELDS = "id name email phone chatflowid chatId createdDate"
DELETE = f"mutation Delete($id: ID!) {{ deleteLead(id: $id) {{ {FIELDS} }} }}"
ERASE = (
    "mutation Erase($email: String, $phone: String) "
    "{ eraseContact(email: $email, phone: $phone) }"
)
LIST = "query List($f: ID!) { leadsByChatflow(chatflowid: $f) { id } }"
PAGE = (
    "query Page($f: ID!) { leads(chatflowid: $f, first: 10) "
    "{ totalCount edges { node { id } } } }"
)
ONE = "query One($id: ID!) { lead(id: $id) { id } }"
Token = Callable[..., str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def graphql(
    client: httpx.AsyncClient, token: str, query: str, **variables: Any
) -> dict[str, Any]:
    answer = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers=bearer(token),
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def create(
    client: httpx.AsyncClient, auth: dict[str, str], **lead: Any
) -> dict[str, Any]:
    answer = await client.post("/leads", json=lead, headers=auth)
    assert answer.status_code == 200, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def ids_everywhere(
    client: httpx.AsyncClient, reader: str, flow: str
) -> dict[str, Any]:
    """The ids of a flow's leads as every read path shows them."""
    rest = await client.get(f"/leads/{flow}", headers=bearer(reader))
    export = await client.get(
        f"/leads/{flow}/export", params={"format": "ndjson"}, headers=bearer(reader)
    )
    listed = await graphql(client, reader, LIST, f=flow)
    page = await graphql(client, reader, PAGE, f=flow)
    connection = page["data"]["leads"]
    return {
        "rest": sorted(lead["id"] for lead in rest.json())
        if rest.status_code == 200
        else rest.status_code,
        "export": sorted(json.loads(line)["id"] for line in export.text.splitlines())
        if export.status_code == 200
        else export.status_code,
        "graphql": sorted(lead["id"] for lead in listed["data"]["leadsByChatflow"]),
        "page": sorted(edge["node"]["id"] for edge in connection["edges"]),
        "totalCount": connection["totalCount"],
    }


def everywhere(ids: list[str]) -> dict[str, Any]:
    return {
        "rest": sorted(ids) or 404,
        "export": sorted(ids) or 404,
        "graphql": sorted(ids),
        "page": sorted(ids),
        "totalCount": len(ids),
    }


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> Callable[[], list[dict[str, Any]]]:
    """The audit lines logged so far, as the JSON the server writes."""
    caplog.set_level(logging.INFO, logger="leads_gql.audit")
    formatter = JSONFormatter()

    def lines() -> list[dict[str, Any]]:
        return [
            json.loads(formatter.format(record))
            for record in caplog.records
            if record.name == "leads_gql.audit"
        ]

    return lines


def without_time(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "ts"} for line in lines]


def audit_line(sub: str, lead: dict[str, Any], cause: str) -> dict[str, Any]:
    return {
        "level": "info",
        "logger": "leads_gql.audit",
        "msg": "lead deleted",
        "sub": sub,
        "lead_id": lead["id"],
        "chatflowid": lead["chatflowid"],
        "cause": cause,
    }


# --- deleteLead -----------------------------------------------------------------


async def test_delete_lead_returns_it_and_it_is_gone_everywhere(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Token,
    audit: Callable[[], list[dict[str, Any]]],
) -> None:
    flow = new_id()
    gone = await create(
        client,
        auth,
        chatflowid=flow,
        name="Ada Lovelace",
        email="ada@example.com",
        phone="+44 20 7946 0958",
        chatId="chat-1",
        createdDate="2024-08-24T14:15:22Z",
    )
    kept = await create(client, auth, chatflowid=flow, name="Grace Hopper")
    reader = make_token("leads:read")
    assert await ids_everywhere(client, reader, flow) == everywhere(
        [gone["id"], kept["id"]]
    )

    deleter = make_token("leads:delete", sub="dpo@example.org")
    answer = await graphql(client, deleter, DELETE, id=gone["id"].upper())
    assert answer == {"data": {"deleteLead": gone}}

    assert await ids_everywhere(client, reader, flow) == everywhere([kept["id"]])
    assert await graphql(client, reader, ONE, id=gone["id"]) == {"data": {"lead": None}}
    # Deleting again finds nothing, and says so the way an unknown id does.
    again = await graphql(client, deleter, DELETE, id=gone["id"])
    assert again == {"data": {"deleteLead": None}}
    assert without_time(audit()) == [audit_line("dpo@example.org", gone, "deleteLead")]

    await graphql(client, deleter, DELETE, id=kept["id"])
    assert await ids_everywhere(client, reader, flow) == everywhere([])


async def test_delete_lead_of_an_unknown_id_or_outside_the_chatflows_is_null(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Token
) -> None:
    flow = new_id()
    lead = await create(client, auth, chatflowid=flow, name="Ada")
    elsewhere = make_token("leads:delete", chatflows=[new_id()])
    for token, lead_id in (
        (make_token("leads:delete"), new_id()),
        (elsewhere, lead["id"]),
    ):
        answer = await graphql(client, token, DELETE, id=lead_id)
        assert answer == {"data": {"deleteLead": None}}
    assert await graphql(client, make_token(), ONE, id=lead["id"]) == {
        "data": {"lead": {"id": lead["id"]}}
    }
    mine = make_token("leads:delete", chatflows=[flow.upper()])
    answer = await graphql(client, mine, DELETE, id=lead["id"])
    assert answer == {"data": {"deleteLead": lead}}


@pytest.mark.parametrize("bad", ["", "42", "not-a-uuid", new_id() + "0"])
async def test_delete_lead_of_a_non_uuid_names_the_id(
    client: httpx.AsyncClient, make_token: Token, bad: str
) -> None:
    answer = await graphql(client, make_token("leads:delete"), DELETE, id=bad)
    assert answer["data"] == {"deleteLead": None}  # a nullable field
    (error,) = answer["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [e["field"] for e in error["extensions"]["errors"]] == ["id"]


@pytest.mark.parametrize(
    ("scope", "chatflows"),
    [
        (None, None),
        ("", None),
        ("leads:write", None),
        ("leads:read leads:write", None),
        ("leads:deleted leads:erase", None),
        ("leads:delete", []),
    ],
)
async def test_deleting_needs_the_delete_scope(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Token,
    scope: str | None,
    chatflows: list[str] | None,
) -> None:
    flow = new_id()
    lead = await create(
        client, auth, chatflowid=flow, name="Ada Secret", email="ada@example.com"
    )
    token = make_token(scope, chatflows=chatflows)
    for query, variables in (
        (DELETE, {"id": lead["id"]}),
        (ERASE, {"email": "ada@example.com"}),
        # Scope before input: an invalid argument is still FORBIDDEN.
        (DELETE, {"id": "nope"}),
        (ERASE, {}),
    ):
        answer = await graphql(client, token, query, **variables)
        assert answer["data"] is None or answer["data"] == {"deleteLead": None}
        assert [e["extensions"] for e in answer["errors"]] == [{"code": "FORBIDDEN"}]
        assert "Ada Secret" not in json.dumps(answer)
    assert await ids_everywhere(client, make_token(), flow) == everywhere([lead["id"]])


async def test_the_delete_scope_alone_is_enough(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Token
) -> None:
    flow = new_id()
    first = await create(client, auth, chatflowid=flow, email="ada@example.com")
    await create(client, auth, chatflowid=flow, phone="12345")
    deleter = make_token("leads:delete")
    answer = await graphql(client, deleter, DELETE, id=first["id"])
    assert answer == {"data": {"deleteLead": first}}
    answer = await graphql(client, deleter, ERASE, phone="1-2-3-4-5")
    assert answer == {"data": {"eraseContact": 1}}
    assert await ids_everywhere(client, make_token(), flow) == everywhere([])


async def test_a_deleted_lead_can_be_created_again_with_its_id(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Token
) -> None:
    flow, lead_id = new_id(), new_id()
    first = await create(client, auth, id=lead_id, chatflowid=flow, name="Ada")
    await graphql(client, make_token("leads:delete"), DELETE, id=lead_id)
    # Other content under the same id: stored anew, not a conflict.
    again = await create(
        client, auth, id=lead_id, chatflowid=flow, name="Ada L.", chatId="chat-2"
    )
    assert again["id"] == lead_id and again["name"] == "Ada L."
    assert again["createdDate"] >= first["createdDate"]
    listed = (await client.get(f"/leads/{flow}", headers=auth)).json()
    assert listed == [again]


# --- eraseContact ---------------------------------------------------------------


async def test_erase_contact_across_flows_by_email_in_any_case_and_phone_digits(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Token,
    audit: Callable[[], list[dict[str, Any]]],
) -> None:
    flow_a, flow_b, flow_c = new_id(), new_id(), new_id()
    erased = [
        await create(client, auth, chatflowid=flow_a, email="Ada@Example.com"),
        await create(
            client, auth, chatflowid=flow_b, name="Ada", email="ada@example.COM"
        ),
        await create(client, auth, chatflowid=flow_b, phone="442079460958"),
        await create(
            client, auth, chatflowid=flow_c, phone="(44) 20-7946-0958", name="A. L."
        ),
    ]
    kept = [
        await create(client, auth, chatflowid=flow_a, email="ada@example.org"),
        await create(client, auth, chatflowid=flow_b, phone="+44 20 7946 0959"),
        await create(client, auth, chatflowid=flow_c, name="Ada Lovelace"),
        await create(
            client, auth, chatflowid=flow_c, email="xada@example.com", phone="4420794"
        ),
    ]
    answer = await graphql(
        client,
        make_token("leads:delete", sub="dpo"),
        ERASE,
        email="  ADA@example.com ",
        phone="+44 20 7946 0958",
    )
    assert answer == {"data": {"eraseContact": 4}}
    reader = make_token("leads:read")
    for flow in (flow_a, flow_b, flow_c):
        left = [lead["id"] for lead in kept if lead["chatflowid"] == flow]
        assert await ids_everywhere(client, reader, flow) == everywhere(left)
    for lead in erased:
        assert await graphql(client, reader, ONE, id=lead["id"]) == {
            "data": {"lead": None}
        }

    lines = audit()
    by_id = {line["lead_id"]: line for line in without_time(lines)}
    assert len(lines) == 4
    assert by_id == {
        lead["id"]: audit_line("dpo", lead, "eraseContact") for lead in erased
    }
    text = json.dumps(lines).lower()
    for secret in ("ada@", "example.com", "7946", "4420", "a. l.", 'ada"'):
        assert secret not in text

    # Nothing left to erase: 0, and nothing logged.
    again = await graphql(
        client, make_token("leads:delete"), ERASE, email="ada@example.com"
    )
    assert again == {"data": {"eraseContact": 0}}
    assert len(audit()) == 4


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"email": "ADA@EXAMPLE.COM"}, {"email-a", "email-b"}),
        ({"phone": "(44) 20-7946-0958"}, {"phone-b"}),
        ({"email": "ada@example.com", "phone": None}, {"email-a", "email-b"}),
    ],
)
async def test_erase_contact_by_one_argument(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Token,
    arguments: dict[str, Any],
    expected: set[str],
) -> None:
    flow = new_id()
    leads = {
        "email-a": await create(client, auth, chatflowid=flow, email="ada@example.com"),
        "email-b": await create(
            client, auth, chatflowid=new_id(), email="Ada@example.com"
        ),
        "phone-b": await create(
            client, auth, chatflowid=flow, phone="+44 20 7946 0958"
        ),
    }
    answer = await graphql(client, make_token("leads:delete"), ERASE, **arguments)
    assert answer == {"data": {"eraseContact": len(expected)}}
    reader = make_token("leads:read")
    for name, lead in leads.items():
        found = await graphql(client, reader, ONE, id=lead["id"])
        assert (found["data"]["lead"] is None) == (name in expected), name


async def test_erase_contact_stays_within_the_tokens_chatflows(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Token
) -> None:
    mine, also_mine, other = new_id(), new_id(), new_id()
    in_mine = await create(client, auth, chatflowid=mine, email="ada@example.com")
    in_also = await create(client, auth, chatflowid=also_mine, phone="12345")
    in_other = await create(client, auth, chatflowid=other, email="ada@example.com")
    token = make_token("leads:delete", chatflows=[mine.upper(), also_mine])
    answer = await graphql(client, token, ERASE, email="ada@example.com", phone="12345")
    assert answer == {"data": {"eraseContact": 2}}
    reader = make_token("leads:read")
    assert await ids_everywhere(client, reader, mine) == everywhere([])
    assert await ids_everywhere(client, reader, also_mine) == everywhere([])
    assert await ids_everywhere(client, reader, other) == everywhere([in_other["id"]])
    assert in_mine["id"] != in_also["id"]


@pytest.mark.parametrize(
    ("arguments", "fields"),
    [
        ({}, ["email", "phone"]),
        ({"email": None, "phone": None}, ["email", "phone"]),
        ({"email": ""}, ["email"]),
        ({"email": "   "}, ["email"]),
        ({"phone": " "}, ["phone"]),
        ({"email": "not-an-email"}, ["email"]),
        ({"email": "a" * 250 + "@example.com"}, ["email"]),
        ({"phone": "1234"}, ["phone"]),
        ({"phone": "call me"}, ["phone"]),
        ({"email": "ada@example.com", "phone": "12"}, ["phone"]),
        ({"email": "@", "phone": "x"}, ["email", "phone"]),
        ({"email": "ada\x00@example.com"}, ["email"]),
    ],
)
async def test_erase_contact_refuses_bad_arguments_naming_them(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Token,
    arguments: dict[str, Any],
    fields: list[str],
) -> None:
    flow = new_id()
    lead = await create(
        client, auth, chatflowid=flow, email="ada@example.com", phone="12345"
    )
    answer = await graphql(client, make_token("leads:delete"), ERASE, **arguments)
    assert answer["data"] is None
    (error,) = answer["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [e["field"] for e in error["extensions"]["errors"]] == fields
    assert all(e["message"] for e in error["extensions"]["errors"])
    assert await ids_everywhere(client, make_token(), flow) == everywhere([lead["id"]])


async def test_inline_arguments_are_checked_the_same_way(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Token
) -> None:
    lead = await create(client, auth, chatflowid=new_id(), email="ada@example.com")
    token = make_token("leads:delete")
    bad = await graphql(client, token, 'mutation { eraseContact(email: "nope") }')
    assert bad["errors"][0]["extensions"]["errors"][0]["field"] == "email"
    good = await graphql(
        client, token, 'mutation { eraseContact(email: "ADA@example.com") }'
    )
    assert good == {"data": {"eraseContact": 1}}
    gone = await graphql(client, make_token(), ONE, id=lead["id"])
    assert gone == {"data": {"lead": None}}


# --- Metrics ----------------------------------------------------------------------


async def test_metrics_count_deletions_by_cause(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Token
) -> None:
    def counts(text: str) -> dict[str, float]:
        return {
            dict(labels)["cause"]: value
            for labels, value in samples(text, "leads_deleted_total").items()
        }

    before = counts((await client.get("/metrics")).text)
    assert set(before) == {"deleteLead", "eraseContact", "retention"}
    flow = new_id()
    one = await create(client, auth, chatflowid=flow, name="Ada")
    for _ in range(3):
        await create(client, auth, chatflowid=flow, email="ada@example.com")
    deleter = make_token("leads:delete")
    await graphql(client, deleter, DELETE, id=one["id"])
    await graphql(client, deleter, DELETE, id=one["id"])  # nothing: not counted
    await graphql(client, deleter, ERASE, email="ada@example.com")
    after = counts((await client.get("/metrics")).text)
    assert {cause: after[cause] - before[cause] for cause in after} == {
        "deleteLead": 1,
        "eraseContact": 3,
        "retention": 0,
    }


async def test_an_erased_contact_leaves_no_trace_in_the_sqlite_file(
    tmp_path: Path, make_token: Token
) -> None:
    """secure_delete: the freed space is zeroed, in the rows and in the indexes."""
    path = tmp_path / "leads.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{path}", jwt_secret=SECRET)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t"
        ) as client:
            auth = bearer(make_token())
            for i in range(200):
                await create(
                    client, auth, chatflowid=new_id(), email=f"u{i}@example.org"
                )
            await create(
                client,
                auth,
                chatflowid=new_id(),
                email="Zelda.Unique@Example.com",
                phone="+1 (415) 555-0199",
            )

            async def checkpoint() -> bytes:
                async with app.state.engine.connect() as conn:
                    await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                return path.read_bytes().lower()

            before = await checkpoint()
            assert b"zelda.unique@example.com" in before and b"14155550199" in before
            erased = await graphql(
                client,
                make_token("leads:delete"),
                ERASE,
                email="zelda.unique@example.com",
            )
            assert erased == {"data": {"eraseContact": 1}}
            after = await checkpoint()
    for trace in (b"zelda", b"555-0199", b"14155550199"):
        assert trace not in after
    assert b"u199@example.org" in after
