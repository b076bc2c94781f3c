"""The REST shim over HTTP: GET /leads/{id} and POST /leads under `/` and `/api/v1/`,
with and without a trailing slash; error shapes and the order of the checks.

Rule tables run as one test per route form (each case on its own chat flow) and
compare a {case: outcome} mapping, so a failure names every case that broke.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import new_id

pytestmark = pytest.mark.anyio

KEYS = ["id", "name", "email", "phone", "chatflowid", "chatId", "createdDate"]
UUID_LOWER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PRINTED_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z")
# What a body must never show: a traceback, SQL, driver or ORM names.
LEAKS = ("Traceback", 'File "', "sqlalchemy", "sqlite", "asyncpg", "SELECT ", "INSERT ")
BIG = 100 * 1024
EMAIL_254 = "a" * 64 + "@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 57 + ".com"
EMAIL_255 = "a" * 64 + "@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 58 + ".com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def outcome(response: httpx.Response) -> tuple[int, Any]:
    """(status, sorted failing fields) of an error; (status, "malformed: ...") when
    the body is not exactly {statusCode, message} (+ errors on 422)."""
    status = response.status_code
    bad = (status, f"malformed: {response.headers.get('content-type')} {response.text}")
    if not response.headers.get("content-type", "").startswith("application/json"):
        return bad
    if any(leak in response.text for leak in LEAKS):
        return bad
    body = response.json()
    if not isinstance(body, dict):
        return bad
    message = body.get("message")
    if not (isinstance(message, str) and message):
        return bad
    if status != 422:
        return (
            (status, None)
            if body == {"statusCode": status, "message": message}
            else bad
        )
    errors = body.get("errors")
    if body != {"statusCode": 422, "message": message, "errors": errors}:
        return bad
    if not isinstance(errors, list) or not errors:
        return bad
    for error in errors:
        if not (
            isinstance(error, dict)
            and set(error) == {"field", "message"}
            and isinstance(error["message"], str)
            and error["message"]
        ):
            return bad
    return status, sorted(error["field"] for error in errors)


def assert_error(
    response: httpx.Response, status: int, fields: list[str] | None = None
) -> None:
    assert outcome(response) == (
        status,
        sorted(fields) if fields is not None else None,
    ), response.text


def lead(**fields: Any) -> dict[str, Any]:
    """A REST lead object: the seven keys, null where not given."""
    assert set(fields) <= set(KEYS)
    return {key: fields.get(key) for key in KEYS}


@dataclasses.dataclass
class Api:
    client: httpx.AsyncClient
    prefix: str
    slash: str
    auth: dict[str, str]

    @property
    def create_url(self) -> str:
        return f"{self.prefix}leads{self.slash}"

    def list_url(self, flow: str) -> str:
        return f"{self.prefix}leads/{flow}{self.slash}"

    async def create(
        self, body: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.post(
            self.create_url,
            json=body,
            headers=self.auth if headers is None else headers,
        )

    async def raw(
        self, content: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json", **(headers or self.auth)}
        return await self.client.post(self.create_url, content=content, headers=headers)

    async def created(self, body: Any) -> dict[str, Any]:
        response = await self.create(body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def list(
        self, flow: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.get(
            self.list_url(flow), headers=self.auth if headers is None else headers
        )

    async def stored(self, flow: str) -> list[dict[str, Any]]:
        """The leads of a flow as GET shows them ([] for its 404)."""
        response = await self.list(flow)
        if response.status_code == 404:
            assert_error(response, 404)
            return []
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


ROUTE_FORMS = [("/", ""), ("/", "/"), ("/api/v1/", ""), ("/api/v1/", "/")]


@pytest.fixture(params=ROUTE_FORMS, ids=["root", "root-slash", "v1", "v1-slash"])
def api(
    request: pytest.FixtureRequest, client: httpx.AsyncClient, auth: dict[str, str]
) -> Api:
    """Every form of the routes: both prefixes, with and without a trailing slash."""
    prefix, slash = request.param
    return Api(client, prefix, slash, auth)


@pytest.fixture(params=[ROUTE_FORMS[0], ROUTE_FORMS[3]], ids=["root", "v1-slash"])
def api2(
    request: pytest.FixtureRequest, client: httpx.AsyncClient, auth: dict[str, str]
) -> Api:
    """Both prefixes (one with a trailing slash), for the tables of rule cases."""
    prefix, slash = request.param
    return Api(client, prefix, slash, auth)


# GET /leads/{id}


async def test_list_is_oldest_first_with_ties_broken_by_id(api: Api) -> None:
    flow, other = new_id(), new_id()
    tie = "2024-08-24T14:15:22Z"
    sent = [
        # (id, createdDate) in an order that is neither time nor id order; the
        # upper-case id sorts after "bbbb..." only once it is lower-cased.
        ("DDDDDDDD-DDDD-4DDD-8DDD-DDDDDDDDDDDD", "2024-08-24T16:15:22+02:00"),
        ("ffffffff-ffff-4fff-8fff-ffffffffffff", "2024-08-24T14:15:22.5Z"),
        ("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", tie),
        ("99999999-9999-4999-8999-999999999999", "2024-08-25T00:00:00Z"),
        ("11111111-1111-4111-8111-111111111111", "2024-08-24T14:15:21.999999Z"),
        ("cccccccc-cccc-4ccc-8ccc-cccccccccccc", "2023-12-31T23:59:59-05:00"),
    ]
    for lead_id, created in sent:
        await api.created(
            {"id": lead_id, "chatflowid": flow, "name": "A", "createdDate": created}
        )
    await api.created({"chatflowid": other, "name": "Elsewhere"})

    response = await api.list(flow)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    expected = [
        ("cccccccc-cccc-4ccc-8ccc-cccccccccccc", "2024-01-01T04:59:59Z"),
        ("11111111-1111-4111-8111-111111111111", "2024-08-24T14:15:21.999999Z"),
        ("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", tie),
        ("dddddddd-dddd-4ddd-8ddd-dddddddddddd", tie),
        ("ffffffff-ffff-4fff-8fff-ffffffffffff", "2024-08-24T14:15:22.500000Z"),
        ("99999999-9999-4999-8999-999999999999", "2024-08-25T00:00:00Z"),
    ]
    body = response.json()
    chat_ids = [item["chatId"] for item in body]
    assert body == [
        lead(id=i, name="A", chatflowid=flow, chatId=c, createdDate=d)
        for (i, d), c in zip(expected, chat_ids, strict=True)
    ]


async def test_create_and_list_give_exactly_seven_keys_null_when_absent(
    api: Api,
) -> None:
    flow, lead_id = new_id(), new_id()
    full = {
        "id": lead_id,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0958",
        "chatflowid": flow,
        "chatId": "chat-42",
        "createdDate": "2024-08-24T14:15:22Z",
    }
    first = await api.create(
        {"chatflowid": flow, "phone": "+1 555 0100", "createdDate": "2024-01-01T00:00Z"}
    )
    second = await api.create(full)

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["content-type"].startswith("application/json")
    only_phone = first.json()
    assert only_phone == lead(
        id=only_phone["id"],
        phone="+1 555 0100",
        chatflowid=flow,
        chatId=only_phone["chatId"],
        createdDate="2024-01-01T00:00:00Z",
    )
    assert second.json() == full
    response = await api.list(flow)
    assert response.status_code == 200
    assert [list(item) for item in response.json()] == [KEYS, KEYS]
    assert response.json() == [only_phone, full]


async def test_list_404_for_a_flow_without_leads_400_for_a_non_uuid(
    api: Api,
) -> None:
    await api.created({"chatflowid": new_id(), "name": "Someone else's"})
    bad_ids = [
        "not-a-uuid",
        "12345",
        "3fa85f6457174562b3fc2c963f66afa6",
        "3fa85f64-5717-4562-b3fc-2c963f66afa",
        "3fa85f64-5717-4562-b3fc-2c963f66afa60",
        "3fa85f64-5717-4562-b3fc-2c963f66afag",
        "{3fa85f64-5717-4562-b3fc-2c963f66afa6}",
        "%203fa85f64-5717-4562-b3fc-2c963f66afa6",
        "3fa85f64_5717_4562_b3fc_2c963f66afa6",
    ]
    got = {"no leads": outcome(await api.list(new_id()))}
    got |= {bad: outcome(await api.list(bad)) for bad in bad_ids}
    assert got == {"no leads": (404, None)} | dict.fromkeys(bad_ids, (400, None))


async def test_upper_case_uuids_are_accepted_and_returned_lower_case(
    api: Api,
) -> None:
    flow, lead_id = new_id(), new_id()
    created = await api.created(
        {
            "id": lead_id.upper(),
            "chatflowid": flow.upper(),
            "name": "Ada",
            "createdDate": "2024-08-24T14:15:22Z",
        }
    )
    expected = lead(
        id=lead_id,
        name="Ada",
        chatflowid=flow,
        chatId=created["chatId"],
        createdDate="2024-08-24T14:15:22Z",
    )
    assert created == expected
    for path_id in (flow.upper(), flow, flow[:18] + flow[18:].upper()):
        response = await api.list(path_id)
        assert response.status_code == 200, response.text
        assert response.json() == [expected]


# POST /leads: what is stored


async def test_create_makes_id_chat_id_and_created_date_when_absent(
    api: Api,
) -> None:
    flow = new_id()
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = await api.created({"chatflowid": flow, "name": "Ada"})
    second = await api.created(
        {"chatflowid": flow, "name": "Bob", "id": None, "chatId": None}
    )
    after = datetime.now(UTC) + timedelta(seconds=1)

    for created in (first, second):
        assert list(created) == KEYS
        assert UUID_LOWER.fullmatch(created["id"])
        assert UUID_LOWER.fullmatch(created["chatId"])
        assert PRINTED_DATE.fullmatch(created["createdDate"])
        assert before <= datetime.fromisoformat(created["createdDate"]) <= after
    assert first["id"] != second["id"]
    assert first["chatId"] != second["chatId"]
    assert first == lead(
        id=first["id"],
        name="Ada",
        chatflowid=flow,
        chatId=first["chatId"],
        createdDate=first["createdDate"],
    )
    assert await api.stored(flow) == [first, second]


async def test_created_date_round_trip_in_utc(api2: Api) -> None:
    cases = {
        "2024-08-24T14:15:22Z": "2024-08-24T14:15:22Z",
        "2024-08-24T16:15:22+02:00": "2024-08-24T14:15:22Z",
        "2024-08-24T09:45:22-04:30": "2024-08-24T14:15:22Z",
        "2024-08-25T00:15:22+10:00": "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22+00:00": "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22": "2024-08-24T14:15:22Z",
        "2024-08-24 14:15:22Z": "2024-08-24T14:15:22Z",
        "2024-08-24 14:15:22": "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22.5Z": "2024-08-24T14:15:22.500000Z",
        "2024-08-24T14:15:22.123456Z": "2024-08-24T14:15:22.123456Z",
        "2024-08-24T14:15:22.000001+01:00": "2024-08-24T13:15:22.000001Z",
        "2024-08-24T14:15:22.000Z": "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22.000000": "2024-08-24T14:15:22Z",
        "0001-01-01T00:00:00Z": "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z": "9999-12-31T23:59:59.999999Z",
    }
    got = {}
    for sent in cases:
        flow = new_id()
        created = await api2.created(
            {"chatflowid": flow, "name": "Ada", "createdDate": sent}
        )
        listed = [item["createdDate"] for item in await api2.stored(flow)]
        got[sent] = (created["createdDate"], listed)
    assert got == {sent: (printed, [printed]) for sent, printed in cases.items()}


async def test_contact_fields_are_trimmed_chat_id_taken_as_given(api2: Api) -> None:
    flow = new_id()
    created = await api2.created(
        {
            "chatflowid": flow,
            "name": "  Ada  Lovelace\t",
            "email": " Ada.Lovelace@Example.COM \n",
            "phone": "  +1 (555) 123-4567 ",
            "chatId": "  chat 1  ",
        }
    )
    assert created == lead(
        id=created["id"],
        name="Ada  Lovelace",
        email="Ada.Lovelace@Example.COM",
        phone="+1 (555) 123-4567",
        chatflowid=flow,
        chatId="  chat 1  ",
        createdDate=created["createdDate"],
    )
    assert await api2.stored(flow) == [created]


async def test_blank_contact_fields_are_null(api2: Api) -> None:
    cases = [
        {"email": "", "phone": None},
        {"email": "   ", "phone": "\t\n"},
        {"email": None},
        {},
    ]
    for blanks in cases:
        flow = new_id()
        created = await api2.created({"chatflowid": flow, "name": "Ada", **blanks})
        assert (created["name"], created["email"], created["phone"]) == (
            "Ada",
            None,
            None,
        ), blanks
        assert await api2.stored(flow) == [created]


async def test_keys_that_are_not_lead_fields_are_ignored(api2: Api) -> None:
    flow = new_id()
    created = await api2.created(
        {
            "chatflowid": flow,
            "name": "Ada",
            "chatflowId": "not even a uuid",
            "created_date": "not a date",
            "status": 3,
            "nested": {"a": [1, 2, None]},
            "": "empty key",
        }
    )
    assert created == lead(
        id=created["id"],
        name="Ada",
        chatflowid=flow,
        chatId=created["chatId"],
        createdDate=created["createdDate"],
    )


async def test_values_at_the_limits_are_accepted(api2: Api) -> None:
    cases: list[dict[str, str]] = [
        {"name": "a" * 255},
        {"name": "é" * 255},
        {"name": "😀" * 255},
        {"email": EMAIL_254},
        {"email": "x@example.com"},
        {"phone": "12345"},
        {"phone": "1" * 20},
        {"phone": "+1 (555) 123-4567"},
        {"phone": "555.123.4567"},
        {"phone": "1-2-3-4-5"},
        {"name": "Ada", "chatId": "c"},
        {"name": "Ada", "chatId": "c" * 255},
        {"name": "Ada", "chatId": "😀" * 255},
    ]
    for fields in cases:
        flow = new_id()
        response = await api2.create({"chatflowid": flow, **fields})
        assert response.status_code == 200, (fields, response.text)
        assert {key: response.json()[key] for key in fields} == fields
        assert await api2.stored(flow) == [response.json()]


async def test_limits_apply_after_trimming(api2: Api) -> None:
    got = {}
    for field, value in (("name", "a" * 255), ("email", EMAIL_254)):
        response = await api2.create({"chatflowid": new_id(), field: f"  {value} "})
        got[field] = (response.status_code, response.json().get(field))
    assert got == {"name": (200, "a" * 255), "email": (200, EMAIL_254)}


# POST /leads: what is refused (422), and that nothing is stored then

BROKEN_RULES: list[tuple[dict[str, Any], str]] = [
    ({"name": "a" * 256}, "name"),
    ({"name": "Ada", "email": "not-an-email"}, "email"),
    ({"email": "ada@"}, "email"),
    ({"email": "@example.com"}, "email"),
    ({"email": "ada lovelace@example.com"}, "email"),
    ({"email": "ada@example@com"}, "email"),
    ({"email": "Ada <ada@example.com>"}, "email"),
    ({"email": EMAIL_255}, "email"),
    ({"phone": "1234"}, "phone"),
    ({"phone": "1" * 21}, "phone"),
    ({"phone": "+1 (555) 123-4567 ext 8"}, "phone"),
    ({"phone": "call me"}, "phone"),
    ({"phone": "12345x"}, "phone"),
    ({"name": "Ada", "chatId": ""}, "chatId"),
    ({"name": "Ada", "chatId": "c" * 256}, "chatId"),
    ({"name": "Ada", "id": "not-a-uuid"}, "id"),
    ({"name": "Ada", "id": ""}, "id"),
    ({"name": "Ada", "createdDate": "2024-08-24"}, "createdDate"),
    ({"name": "Ada", "createdDate": ""}, "createdDate"),
    ({"name": "Ada", "createdDate": "yesterday"}, "createdDate"),
    ({"name": "Ada", "createdDate": "2024-13-01T00:00:00Z"}, "createdDate"),
    ({"name": "Ada", "createdDate": "2024-02-30T00:00:00Z"}, "createdDate"),
    ({"name": "Ada", "createdDate": "2024-08-24T25:00:00Z"}, "createdDate"),
    ({"name": "Ada", "createdDate": "2024-08-24T14:15:22+25:00"}, "createdDate"),
    ({"name": "Ada", "createdDate": "9999-12-31T23:59:59-01:00"}, "createdDate"),
    # Non-string values.
    ({"name": 123}, "name"),
    ({"name": True}, "name"),
    ({"name": ["Ada"]}, "name"),
    ({"name": {"first": "Ada"}}, "name"),
    ({"email": 5}, "email"),
    ({"phone": 5551234567}, "phone"),
    ({"phone": 5551234567.0}, "phone"),
    ({"name": "Ada", "chatId": 7}, "chatId"),
    ({"name": "Ada", "chatId": ["c"]}, "chatId"),
    ({"name": "Ada", "createdDate": 1724508922}, "createdDate"),
    ({"name": "Ada", "createdDate": {"$date": "2024-08-24"}}, "createdDate"),
    ({"name": "Ada", "id": 5}, "id"),
    ({"name": "Ada", "id": False}, "id"),
    # NUL characters (PostgreSQL cannot store them; never a 500).
    ({"name": "Ada\u0000Lovelace"}, "name"),
    ({"email": "ada\u0000@example.com"}, "email"),
    ({"phone": "12345\u00006"}, "phone"),
    ({"name": "Ada", "chatId": "chat\u00001"}, "chatId"),
]


async def test_a_broken_rule_is_422_naming_the_field_and_stores_nothing(
    api2: Api,
) -> None:
    got, expected = {}, {}
    for number, (fields, failing) in enumerate(BROKEN_RULES):
        flow = new_id()
        case = f"{number}: {fields!r:.60}"
        got[case] = (
            outcome(await api2.create({"chatflowid": flow, **fields})),
            await api2.stored(flow),
        )
        expected[case] = ((422, [failing]), [])
    assert got == expected


async def test_a_bad_or_missing_chatflowid_is_422(api2: Api) -> None:
    bodies: list[dict[str, Any]] = [
        {"name": "Ada", "chatflowid": chatflowid}
        for chatflowid in (123, True, ["x"], {}, "not-a-uuid", "", None)
    ] + [{"name": "Ada"}]
    got = [outcome(await api2.create(body)) for body in bodies]
    assert got == [(422, ["chatflowid"])] * len(bodies)


async def test_no_contact_field_is_an_entry_for_each_of_them(api2: Api) -> None:
    got = []
    for contacts in (
        {},
        {"name": None, "email": None, "phone": None},
        {"name": "", "email": "  ", "phone": "\t"},
    ):
        flow = new_id()
        response = await api2.create({"chatflowid": flow, "chatId": "c", **contacts})
        got.append((outcome(response), await api2.stored(flow)))
    assert got == [((422, ["email", "name", "phone"]), [])] * 3


async def test_every_failing_field_is_listed(api2: Api) -> None:
    response = await api2.create(
        {
            "id": "nope",
            "chatflowid": "nope",
            "name": "n" * 256,
            "email": "nope",
            "phone": "nope",
            "chatId": "",
            "createdDate": "2024-08-24",
        }
    )
    assert_error(response, 422, KEYS)


async def test_lone_surrogates_are_400_never_500(api2: Api) -> None:
    """Not text (no UTF-8 form): the body is refused as invalid JSON, wherever
    the surrogate stands (an echoed message could not carry it)."""
    fields = ["name", "email", "phone", "chatId", "id", "chatflowid", "createdDate"]
    got, expected = {}, {}
    for field in fields:
        for escape in ("\\ud800", "\\udfff", "x\\udc00y"):
            flow = new_id()
            body = {"chatflowid": f'"{flow}"', "email": '"ada@example.com"'}
            body[field] = f'"{escape}"'
            raw = "{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}"
            got[raw] = (outcome(await api2.raw(raw.encode())), await api2.stored(flow))
            expected[raw] = ((400, None), [])
    assert got == expected


async def test_escaped_surrogate_pairs_are_text(api2: Api) -> None:
    flow = new_id()
    raw = f'{{"chatflowid": "{flow}", "name": "Ada \\ud83d\\ude00"}}'
    response = await api2.raw(raw.encode())
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Ada 😀"


# POST /leads: retries and conflicts

FIRST = {
    "name": "Ada",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0958",
    "chatId": "chat-1",
    "createdDate": "2024-08-24T16:15:22+02:00",
}


async def test_the_same_request_again_is_a_safe_retry(api: Api) -> None:
    flow, lead_id = new_id(), new_id()
    body = {"id": lead_id, "chatflowid": flow, **FIRST}
    first = await api.create(body)
    again = await api.create(body)
    upper = await api.create(
        {**body, "id": lead_id.upper(), "chatflowid": flow.upper()}
    )
    assert [r.status_code for r in (first, again, upper)] == [200, 200, 200]
    expected = {**body, "createdDate": "2024-08-24T14:15:22Z"}
    assert first.json() == again.json() == upper.json() == expected
    # A lead whose id, chatId and createdDate the server made: the retry returns it.
    minimal = {"id": new_id(), "chatflowid": flow, "name": "Bob"}
    made = await api.created(minimal)
    assert await api.created(minimal) == made
    assert await api.stored(flow) == [expected, made]


async def test_a_retry_compares_only_given_fields_and_instants(api2: Api) -> None:
    retries: list[dict[str, Any]] = [
        {"name": "Ada"},
        {"email": "ada@example.com"},
        {"name": "Ada", "email": None, "phone": None, "chatId": None},
        {"name": "Ada", "email": "", "phone": "   ", "createdDate": None},
        {"name": "  Ada ", "email": " ada@example.com"},
        {"phone": "+44 20 7946 0958", "chatId": "chat-1"},
        {"name": "Ada", "createdDate": "2024-08-24T14:15:22Z"},
        {"name": "Ada", "createdDate": "2024-08-24T14:15:22.000000Z"},
        {"name": "Ada", "createdDate": "2024-08-24 14:15:22"},
        {"name": "Ada", "createdDate": "2024-08-24T10:15:22-04:00"},
        {"name": "Ada", "createdDate": "2024-08-25T00:15:22+10:00"},
        {"name": "Ada", "extra": "ignored"},
    ]
    got, expected = {}, {}
    for number, retry in enumerate(retries):
        flow, lead_id = new_id(), new_id()
        first = await api2.created({"id": lead_id, "chatflowid": flow, **FIRST})
        response = await api2.create({"id": lead_id, "chatflowid": flow, **retry})
        case = f"{number}: {retry}"
        got[case] = (response.status_code, response.json(), await api2.stored(flow))
        expected[case] = (200, first, [first])
    assert got == expected


async def test_the_same_id_with_other_content_is_409(api2: Api) -> None:
    changes: list[dict[str, Any]] = [
        {"name": "Bob"},
        {"name": "ada"},
        {"email": "ADA@example.com"},
        {"phone": "+44 20 7946 0959"},
        {"chatId": "chat-2"},
        {"chatId": " chat-1"},
        {"createdDate": "2024-08-24T14:15:22.000001Z"},
        {"createdDate": "2024-08-24T16:15:22Z"},
    ]
    got, expected = {}, {}
    for number, change in enumerate(changes):
        flow, lead_id = new_id(), new_id()
        first = await api2.created({"id": lead_id, "chatflowid": flow, **FIRST})
        response = await api2.create(
            {"id": lead_id, "chatflowid": flow, **FIRST, **change}
        )
        case = f"{number}: {change}"
        got[case] = (outcome(response), await api2.stored(flow))
        expected[case] = ((409, None), [first])

    # A value given now that the stored lead lacks is other content too.
    flow, lead_id = new_id(), new_id()
    first = await api2.created({"id": lead_id, "chatflowid": flow, "name": "Ada"})
    response = await api2.create(
        {"id": lead_id, "chatflowid": flow, "name": "Ada", "phone": "12345"}
    )
    got["phone added"] = (outcome(response), await api2.stored(flow))
    expected["phone added"] = ((409, None), [first])

    # So is the same id in another chat flow.
    other = new_id()
    response = await api2.create({"id": lead_id, "chatflowid": other, "name": "Ada"})
    got["other flow"] = (outcome(response), await api2.stored(other))
    expected["other flow"] = ((409, None), [])
    assert got == expected


# Error shapes


async def test_unknown_paths_are_404_json_not_redirects(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    requests = [
        ("GET", "/nope"),
        ("GET", "/api/v1/nope"),
        ("GET", "/api/v2/leads"),
        ("POST", "/api/v2/leads"),
        ("GET", "/api"),
        ("GET", "/api/v1"),
        ("GET", "/api/v1/"),
        ("POST", "/api/v1/"),
        ("GET", "/lead/3fa85f64-5717-4562-b3fc-2c963f66afa6"),
        ("GET", "/leads/3fa85f64-5717-4562-b3fc-2c963f66afa6/extra"),
        ("GET", "/api/v1/leads/3fa85f64-5717-4562-b3fc-2c963f66afa6/extra/"),
        ("POST", "/api/v1/leads/new/more"),
    ]
    got = {}
    for method, path in requests:
        response = await client.request(method, path, headers=auth, json={})
        assert response.headers["x-content-type-options"] == "nosniff"
        got[f"{method} {path}"] = outcome(response)
    assert got == {f"{method} {path}": (404, None) for method, path in requests}


async def test_wrong_methods_are_405_json(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    requests = [
        (method, f"{prefix}{path}{slash}")
        for prefix in ("/", "/api/v1/")
        for slash in ("", "/")
        for method, path in [
            ("GET", "leads"),
            ("PUT", "leads"),
            ("PATCH", "leads"),
            ("DELETE", "leads"),
            ("POST", f"leads/{flow}"),
            ("PUT", f"leads/{flow}"),
            ("DELETE", f"leads/{flow}"),
        ]
    ]
    got = {}
    for method, path in requests:
        got[f"{method} {path}"] = outcome(
            await client.request(method, path, headers=auth)
        )
    assert got == {f"{method} {path}": (405, None) for method, path in requests}


# The order of the checks: token (401), scope (403), body (413, 400, 422), chatflows


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"pad": "'
    for _ in range(size // 4096):
        yield b"x" * 4096
    yield b'"}'


BODIES: dict[str, Callable[[str], dict[str, Any]]] = {
    "valid": lambda flow: {"json": {"chatflowid": flow, "name": "Ada"}},
    "invalid-lead": lambda flow: {"json": {"chatflowid": flow, "email": "nope"}},
    "not-json": lambda flow: {
        "content": b"{not json",
        "headers": {"Content-Type": "application/json"},
    },
    "not-an-object": lambda flow: {"json": [{"chatflowid": flow, "name": "Ada"}]},
    "huge": lambda flow: {"json": {"chatflowid": flow, "name": "A", "p": "x" * BIG}},
    "huge-streamed": lambda flow: {
        "content": _chunks(BIG),
        "headers": {"Content-Type": "application/json"},
    },
    "text-plain": lambda flow: {
        "content": f'{{"chatflowid": "{flow}", "name": "Ada"}}'.encode(),
        "headers": {"Content-Type": "text/plain"},
    },
}


async def _post(api: Api, body: str, flow: str, auth: dict[str, str]) -> Any:
    """(outcome, leads stored in `flow` afterwards) of posting BODIES[body]."""
    kwargs = BODIES[body](flow)
    kwargs["headers"] = {**kwargs.get("headers", {}), **auth}
    response = await api.client.post(api.create_url, **kwargs)
    challenge = response.headers.get("www-authenticate", "")
    if response.status_code == 401 and not challenge.lower().startswith("bearer"):
        return "401 without WWW-Authenticate: Bearer"
    return outcome(response), await api.stored(flow)


async def test_401_comes_before_everything(
    api2: Api, make_token: Callable[..., str]
) -> None:
    authorizations = {
        "none": None,
        "no token": "Bearer",
        "not a jwt": "Bearer not.a.jwt",
        "basic": "Basic YWRhOmFkYQ==",
        "expired": f"Bearer {make_token(ttl=-60)}",
        "huge": f"Bearer {make_token(pad='x' * 20000)}",
        "other secret": "Bearer " + make_token()[:-4] + "AAAA",
    }
    got, expected = {}, {}
    for auth_name, authorization in authorizations.items():
        headers = {} if authorization is None else {"Authorization": authorization}
        for body in BODIES:
            case = f"{auth_name} / {body}"
            got[case] = await _post(api2, body, new_id(), headers)
            expected[case] = ((401, None), [])
        for path_id in ("not-a-uuid", new_id()):
            response = await api2.list(path_id, headers=headers)
            got[f"{auth_name} / GET {path_id}"] = outcome(response)
            expected[f"{auth_name} / GET {path_id}"] = (401, None)
    assert got == expected


async def test_403_for_scope_comes_before_the_body(
    api2: Api, make_token: Callable[..., str]
) -> None:
    flow = new_id()
    tokens = {
        "read-only": make_token(scope="leads:read"),
        "no scope": make_token(scope=None),
        "empty scope": make_token(scope=""),
        "other scopes": make_token(scope="leads:admin leads:writer LEADS:WRITE"),
        "empty chatflows": make_token(chatflows=[]),
        "read-only, this flow": make_token(scope="leads:read", chatflows=[flow]),
    }
    got, expected = {}, {}
    for token_name, token in tokens.items():
        for body in BODIES:
            got[f"{token_name} / {body}"] = await _post(api2, body, flow, bearer(token))
            expected[f"{token_name} / {body}"] = ((403, None), [])
    assert got == expected


async def test_the_body_comes_before_the_chatflows_claim(
    api2: Api, make_token: Callable[..., str]
) -> None:
    elsewhere = bearer(make_token(chatflows=[new_id()]))
    cases = {
        "invalid-lead": (422, ["email"]),
        "not-json": (400, None),
        "not-an-object": (400, None),
        "huge": (413, None),
        "huge-streamed": (413, None),
        "valid": (403, None),
    }
    got = {body: await _post(api2, body, new_id(), elsewhere) for body in cases}
    assert got == {body: (status, []) for body, status in cases.items()}


async def test_a_token_for_one_flow_writes_that_flow_in_any_case(
    api2: Api, make_token: Callable[..., str]
) -> None:
    flow = new_id()
    upper = bearer(make_token(scope="leads:write", chatflows=[flow.upper()]))
    lower = bearer(make_token(scope="leads:write", chatflows=[flow]))
    first = await api2.create({"chatflowid": flow, "name": "Ada"}, headers=upper)
    second = await api2.create(
        {"chatflowid": flow.upper(), "name": "Bob"}, headers=lower
    )
    assert (first.status_code, second.status_code) == (200, 200), second.text
    assert [first.json()["chatflowid"], second.json()["chatflowid"]] == [flow, flow]
    # Write-only: it cannot read back, even its own flow.
    assert_error(await api2.list(flow, headers=upper), 403)
    assert await api2.stored(flow) == [first.json(), second.json()]


async def test_get_checks_token_scope_id_then_chatflows(
    api: Api, make_token: Callable[..., str]
) -> None:
    flow = new_id()
    await api.created({"chatflowid": flow, "name": "Ada Secret"})
    write_only = bearer(make_token(scope="leads:write"))
    elsewhere = bearer(make_token(scope="leads:read", chatflows=[new_id()]))
    here = bearer(make_token(scope="leads:read", chatflows=[flow.upper()]))

    refused = await api.list(flow, headers=elsewhere)
    assert "Ada" not in refused.text
    assert {
        "write-only, bad id": outcome(await api.list("nope", headers=write_only)),
        "write-only": outcome(await api.list(flow, headers=write_only)),
        "elsewhere, bad id": outcome(await api.list("nope", headers=elsewhere)),
        "elsewhere": outcome(refused),
        "elsewhere, no leads": outcome(await api.list(new_id(), headers=elsewhere)),
    } == {
        "write-only, bad id": (403, None),
        "write-only": (403, None),
        "elsewhere, bad id": (400, None),
        "elsewhere": (403, None),
        "elsewhere, no leads": (403, None),
    }
    allowed = await api.list(flow, headers=here)
    assert allowed.status_code == 200
    assert [item["name"] for item in allowed.json()] == ["Ada Secret"]


# Headers


async def test_nosniff_on_every_rest_response(api: Api) -> None:
    flow = new_id()
    responses = [
        await api.create({"chatflowid": flow, "name": "Ada"}),
        await api.list(flow),
        await api.list(new_id()),
        await api.list("nope"),
        await api.create({"chatflowid": flow}),
        await api.create({"chatflowid": flow, "name": "x" * BIG}),
        await api.create({"name": "Ada"}, headers={}),
        await api.client.delete(api.create_url, headers=api.auth),
        await api.raw(b"{}", headers={**api.auth, "Content-Type": "text/plain"}),
        await api.raw(b"[]"),
    ]
    assert [r.status_code for r in responses] == [
        200,
        200,
        404,
        400,
        422,
        413,
        401,
        405,
        415,
        400,
    ]
    assert [r.headers.get("x-content-type-options") for r in responses] == [
        "nosniff"
    ] * len(responses)


async def test_a_retry_without_the_read_scope_reads_nothing_it_did_not_send(
    api2: Api, make_token: Callable[..., str]
) -> None:
    """A write-only token (a widget's) that learns a lead's id must not read the
    lead by retrying it with one matching field: the answer holds only what it
    sent, on REST and GraphQL alike (one resolver)."""
    flow, lead_id = new_id(), new_id()
    first = await api2.created({"id": lead_id, "chatflowid": flow, **FIRST})
    writer = bearer(make_token("leads:write", chatflows=[flow]))
    retry = await api2.create(
        {"id": lead_id, "chatflowid": flow, "name": "Ada"}, headers=writer
    )
    assert retry.status_code == 200, retry.text
    as_sent = {**first, "email": None, "phone": None}
    assert retry.json() == as_sent
    graphql = await api2.client.post(
        "/graphql",
        json={
            "query": "mutation($i: LeadInput!) "
            "{ createLead(input: $i) { id name email phone chatId createdDate } }",
            "variables": {
                "i": {"id": lead_id, "chatflowid": flow, "phone": FIRST["phone"]}
            },
        },
        headers=writer,
    )
    assert graphql.json() == {
        "data": {
            "createLead": {
                "id": lead_id,
                "name": None,
                "email": None,
                "phone": FIRST["phone"],
                "chatId": first["chatId"],
                "createdDate": first["createdDate"],
            }
        }
    }
    # The whole stored lead is still there, for a token that may read it.
    assert await api2.stored(flow) == [first]
    full = await api2.create({"id": lead_id, "chatflowid": flow, "name": "Ada"})
    assert full.json() == first
