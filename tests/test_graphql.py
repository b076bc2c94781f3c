"""GraphQL over HTTP at /graphql: the SDL's fields, status codes and media types of
the GraphQL-over-HTTP specification, document limits, masked errors, GraphiQL."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from graphql import get_introspection_query
from starlette.applications import Starlette

from tests.conftest import new_id

pytestmark = pytest.mark.anyio

GRAPHQL_RESPONSE = "application/graphql-response+json"
FIELDS = "id name email phone chatflowid chatId createdDate"
KEYS = ["id", "name", "email", "phone", "chatflowid", "chatId", "createdDate"]
CREATE = (
    "mutation Create($input: LeadInput!) "
    f"{{ createLead(input: $input) {{ {FIELDS} }} }}"
)
LIST = f"query List($flow: ID!) {{ leadsByChatflow(chatflowid: $flow) {{ {FIELDS} }} }}"
ONE = f"query One($id: ID!) {{ lead(id: $id) {{ {FIELDS} }} }}"
# Nested `fields` past what GraphiQL ever asks for.
DEEP_INTROSPECTION = (
    "{ __schema { types { fields { type { fields { type { fields { type { fields "
    "{ type { fields { type { name } } } } } } } } } } } } }"
)
# Nested `ofType`, which graphql-core's own introspection rule does not count.
DEEP_OF_TYPE = (
    "{ __schema { types { " + "ofType { " * 40 + "name" + " }" * 40 + " } } }"
)


def parse_instant(printed: str) -> datetime:
    assert printed.endswith("Z"), printed
    return datetime.fromisoformat(printed)


def instant(lead: dict[str, Any]) -> datetime:
    return parse_instant(lead["createdDate"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def gql(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    accept: str = GRAPHQL_RESPONSE,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"query": query, **extra}
    if variables is not None:
        body["variables"] = variables
    return await client.post(
        "/graphql", json=body, headers={**headers, "Accept": accept}
    )


async def ok(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    query: str,
    variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `data` of a response that must have succeeded outright."""
    response = await gql(client, headers, query, variables)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def listed(
    client: httpx.AsyncClient, headers: dict[str, str], flow: str
) -> list[dict[str, Any]]:
    data = await ok(client, headers, LIST, {"flow": flow})
    leads: list[dict[str, Any]] = data["leadsByChatflow"]
    return leads


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    assert len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    return error


def assert_refused(response: httpx.Response) -> dict[str, Any]:
    """A document refused before execution: 400, no `data`, coded errors."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    body: dict[str, Any] = response.json()
    assert "data" not in body, body
    assert body["errors"], body
    for error in body["errors"]:
        code = error.get("extensions", {}).get("code")
        assert isinstance(code, str) and code != "INTERNAL_SERVER_ERROR", error
    return body


async def assert_refused_both_ways(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    query: str,
    variables: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Refused: 400 to a GraphQL-over-HTTP client, 200 with errors to a legacy one."""
    assert_refused(await gql(client, headers, query, variables, **extra))
    legacy = await gql(
        client, headers, query, variables, accept="application/json", **extra
    )
    assert legacy.status_code == 200, legacy.text
    body = legacy.json()
    assert "data" not in body and body["errors"], body


# --- The fields of the SDL ------------------------------------------------------


async def test_create_with_inline_literals_returns_all_seven_fields(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow, lead_id = new_id(), new_id()
    query = f"""mutation {{
      createLead(input: {{
        id: "{lead_id.upper()}", name: "  Ada Lovelace ", email: "ada@example.com",
        phone: " +44 (20) 7946-0958 ", chatflowid: "{flow.upper()}",
        chatId: " chat 1 ", createdDate: "2024-08-24T14:15:22Z"
      }}) {{ {FIELDS} }}
    }}"""
    expected = {
        "id": lead_id,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+44 (20) 7946-0958",
        "chatflowid": flow,
        "chatId": " chat 1 ",
        "createdDate": "2024-08-24T14:15:22Z",
    }
    created = (await ok(client, auth, query))["createLead"]
    assert created == expected
    assert list(created) == KEYS
    assert (await ok(client, auth, ONE, {"id": lead_id}))["lead"] == expected
    assert await listed(client, auth, flow) == [expected]


async def test_create_with_variables_fills_in_what_is_absent(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    data = await ok(
        client,
        auth,
        CREATE,
        {"input": {"chatflowid": flow, "email": " ada@example.com ", "name": "  "}},
    )
    created = data["createLead"]
    assert list(created) == KEYS
    assert created["name"] is None
    assert created["email"] == "ada@example.com"
    assert created["phone"] is None
    assert created["chatflowid"] == flow
    assert created["id"] == created["id"].lower() and len(created["id"]) == 36
    assert len(created["chatId"]) == 36
    age = datetime.now(UTC) - instant(created)
    assert timedelta(0) <= age < timedelta(minutes=1)
    assert await listed(client, auth, flow) == [created]


async def test_lists_are_oldest_first_then_by_id(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    tie = "2024-08-24T14:15:22Z"
    # (createdDate as sent, as returned): offsets and fractions order as instants.
    moments = [
        ("2024-08-24T16:00:00+02:00", "2024-08-24T14:00:00Z"),
        ("2024-08-24T14:15:22.000001Z", "2024-08-24T14:15:22.000001Z"),
        ("2023-12-31T23:59:59Z", "2023-12-31T23:59:59Z"),
        ("2024-08-24 14:15:21.5", "2024-08-24T14:15:21.500000Z"),
        (tie, tie),
        (tie, tie),
        (tie, tie),
        ("2025-01-01T00:00:00-05:00", "2025-01-01T05:00:00Z"),
    ]
    random.Random(7).shuffle(moments)
    expected = []
    for sent, printed in moments:
        lead_id = new_id()
        data = await ok(
            client,
            auth,
            CREATE,
            {
                "input": {
                    "id": lead_id,
                    "chatflowid": flow,
                    "name": "x",
                    "createdDate": sent,
                }
            },
        )
        assert data["createLead"]["createdDate"] == printed
        expected.append((printed, lead_id))
    await ok(client, auth, CREATE, {"input": {"chatflowid": new_id(), "name": "y"}})
    leads = await listed(client, auth, flow)
    got = [(lead["createdDate"], lead["id"]) for lead in leads]
    assert got == sorted(expected, key=lambda item: (parse_instant(item[0]), item[1]))


async def test_a_flow_without_leads_is_an_empty_list(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await gql(client, auth, LIST, {"flow": new_id()})
    assert response.status_code == 200
    assert response.json() == {"data": {"leadsByChatflow": []}}


async def test_an_unknown_lead_is_null(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await gql(client, auth, ONE, {"id": new_id()})
    assert response.status_code == 200
    assert response.json() == {"data": {"lead": None}}


async def test_a_lead_outside_the_tokens_chatflows_is_null(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow, lead_id = new_id(), new_id()
    await ok(
        client,
        auth,
        CREATE,
        {"input": {"id": lead_id, "chatflowid": flow, "name": "A"}},
    )
    limited = bearer(make_token("leads:read", chatflows=[new_id()]))
    hidden = await gql(client, limited, ONE, {"id": lead_id})
    unknown = await gql(client, limited, ONE, {"id": new_id()})
    assert hidden.status_code == unknown.status_code == 200
    assert hidden.json() == unknown.json() == {"data": {"lead": None}}
    upper = bearer(make_token("leads:read", chatflows=[flow.upper()]))
    assert (await ok(client, upper, ONE, {"id": lead_id}))["lead"]["id"] == lead_id


@pytest.mark.parametrize(
    ("query", "variables", "argument", "data"),
    [
        ('{ lead(id: "42") { id } }', None, "id", {"lead": None}),
        ("{ lead(id: 42) { id } }", None, "id", {"lead": None}),
        (ONE, {"id": new_id() + "0"}, "id", {"lead": None}),
        ('{ leadsByChatflow(chatflowid: "nope") { id } }', None, "chatflowid", None),
        (LIST, {"flow": "{" + new_id() + "}"}, "chatflowid", None),
    ],
)
async def test_a_non_uuid_argument_is_bad_user_input(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    query: str,
    variables: dict[str, Any] | None,
    argument: str,
    data: Any,
) -> None:
    response = await gql(client, auth, query, variables)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] == data
    error = only_error(body)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["errors"]
    assert [e["field"] for e in error["extensions"]["errors"]] == [argument]


async def test_the_same_id_with_other_content_is_a_conflict(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow, lead_id = new_id(), new_id()
    first = {"id": lead_id, "chatflowid": flow, "name": "Ada"}
    stored = (await ok(client, auth, CREATE, {"input": first}))["createLead"]
    response = await gql(client, auth, CREATE, {"input": {**first, "name": "Grace"}})
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    error = only_error(body)
    assert error["extensions"]["code"] == "CONFLICT"
    assert error["path"] == ["createLead"]
    assert "Grace" not in response.text
    assert await listed(client, auth, flow) == [stored]


async def test_a_retry_with_the_same_content_returns_the_stored_lead(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow, lead_id = new_id(), new_id()
    first = {
        "id": lead_id,
        "chatflowid": flow,
        "name": "Ada",
        "email": "ada@example.com",
        "createdDate": "2024-08-24T14:15:22Z",
    }
    stored = (await ok(client, auth, CREATE, {"input": first}))["createLead"]
    retries = [
        first,
        {**first, "id": lead_id.upper(), "chatflowid": flow.upper()},
        {**first, "name": " Ada ", "phone": None, "chatId": None},
        {**first, "createdDate": "2024-08-24T16:15:22+02:00"},
        {"id": lead_id, "chatflowid": flow, "email": "ada@example.com"},
    ]
    for retry in retries:
        again = await ok(client, auth, CREATE, {"input": retry})
        assert again["createLead"] == stored
    assert await listed(client, auth, flow) == [stored]


@pytest.mark.parametrize(
    ("sent", "printed"),
    [
        ("2024-08-24T14:15:22Z", "2024-08-24T14:15:22Z"),
        ("2024-08-24T16:15:22+02:00", "2024-08-24T14:15:22Z"),
        ("2024-08-24 14:15:22", "2024-08-24T14:15:22Z"),
        ("2024-08-24T14:15:22.25Z", "2024-08-24T14:15:22.250000Z"),
    ],
)
@pytest.mark.parametrize("inline", [True, False])
async def test_created_date_round_trips_in_utc(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    sent: str,
    printed: str,
    inline: bool,
) -> None:
    flow, lead_id = new_id(), new_id()
    if inline:
        created = await ok(
            client,
            auth,
            f'mutation {{ createLead(input: {{id: "{lead_id}", chatflowid: "{flow}", '
            f'name: "A", createdDate: "{sent}"}}) {{ createdDate }} }}',
        )
    else:
        created = await ok(
            client,
            auth,
            CREATE,
            {
                "input": {
                    "id": lead_id,
                    "chatflowid": flow,
                    "name": "A",
                    "createdDate": sent,
                }
            },
        )
    assert created["createLead"]["createdDate"] == printed
    assert (await ok(client, auth, ONE, {"id": lead_id}))["lead"][
        "createdDate"
    ] == printed


@pytest.mark.parametrize("literal", ['"2024-08-24"', "1724508922", "true", "{a: 1}"])
async def test_a_created_date_that_is_not_a_date_time_names_the_field(
    client: httpx.AsyncClient, auth: dict[str, str], literal: str
) -> None:
    flow = new_id()
    response = await gql(
        client,
        auth,
        f'mutation {{ createLead(input: {{chatflowid: "{flow}", name: "A", '
        f"createdDate: {literal}}}) {{ id }} }}",
    )
    assert response.status_code == 200, response.text
    error = only_error(response.json())
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [e["field"] for e in error["extensions"]["errors"]] == ["createdDate"]
    assert await listed(client, auth, flow) == []


# --- GraphQL over HTTP ----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("{ lead(", "GRAPHQL_PARSE_FAILED"),
        ("query { leadsByChatflow(chatflowid: ) { id } }", "GRAPHQL_PARSE_FAILED"),
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ leadsByChatflow { id } }", "GRAPHQL_VALIDATION_FAILED"),
        ('{ lead(id: "x") }', "GRAPHQL_VALIDATION_FAILED"),
        ("query($x: Nope) { __typename }", "GRAPHQL_VALIDATION_FAILED"),
    ],
)
async def test_a_document_that_fails_to_parse_or_validate(
    client: httpx.AsyncClient, auth: dict[str, str], query: str, code: str
) -> None:
    strict = await gql(client, auth, query)
    assert strict.status_code == 400, strict.text
    assert strict.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    legacy = await gql(client, auth, query, accept="application/json")
    assert legacy.status_code == 200, legacy.text
    assert legacy.headers["content-type"].startswith("application/json")
    for response in (strict, legacy):
        body = response.json()
        assert "data" not in body
        assert body["errors"]
        assert {e.get("extensions", {}).get("code") for e in body["errors"]} == {code}


@pytest.mark.parametrize(
    "variables",
    [
        None,
        {"input": None},
        {"input": {"name": "Ada"}},
        {"input": {"chatflowid": None, "name": "Ada"}},
        {"input": {"chatflowid": new_id(), "name": "Ada", "nickname": "A"}},
        {"input": {"chatflowid": new_id(), "name": ["Ada"]}},
        {"input": "not an object"},
    ],
)
async def test_bad_variables_are_refused_before_execution(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    variables: dict[str, Any] | None,
) -> None:
    strict = await gql(client, auth, CREATE, variables)
    assert strict.status_code == 400, strict.text
    assert strict.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    legacy = await gql(client, auth, CREATE, variables, accept="application/json")
    assert legacy.status_code == 200, legacy.text
    assert legacy.headers["content-type"].startswith("application/json")
    for response in (strict, legacy):
        body = response.json()
        assert "data" not in body, body
        assert body["errors"]
        for error in body["errors"]:
            # Apollo Server's code for variables that fail coercion.
            assert error.get("extensions", {}).get("code") == "BAD_USER_INPUT", error
            assert error["message"] != "Internal server error"


async def test_execution_errors_come_with_http_200(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow, lead_id = new_id(), new_id()
    await ok(
        client,
        auth,
        CREATE,
        {"input": {"id": lead_id, "chatflowid": flow, "name": "A"}},
    )
    cases = [
        (auth, {"chatflowid": flow, "email": "not-an-email"}, "BAD_USER_INPUT"),
        (
            bearer(make_token("leads:read")),
            {"chatflowid": flow, "name": "A"},
            "FORBIDDEN",
        ),
        (auth, {"id": lead_id, "chatflowid": flow, "name": "B"}, "CONFLICT"),
    ]
    for headers, lead, code in cases:
        for accept in (GRAPHQL_RESPONSE, "application/json"):
            response = await gql(
                client, headers, CREATE, {"input": lead}, accept=accept
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(accept)
            body = response.json()
            assert body["data"] is None
            assert only_error(body)["extensions"]["code"] == code


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b'{"query": "{ __typename }",}',
        b'{"variables": {}}',
        b'{"query": null}',
        b'{"query": 5}',
        b'{"query": ["{ __typename }"]}',
        b'{"query": ""}',
        b'"{ __typename }"',
        b"null",
        b'{"query": "{ __typename }", "variables": "{}"}',
        b'{"query": "{ __typename }", "operationName": 5}',
        b'{"query": "{ __typename }", "query": "{ __typename }"}',
    ],
)
@pytest.mark.parametrize("accept", [GRAPHQL_RESPONSE, "application/json"])
async def test_a_request_that_is_not_graphql_is_400(
    client: httpx.AsyncClient, auth: dict[str, str], content: bytes, accept: str
) -> None:
    response = await client.post(
        "/graphql",
        content=content,
        headers={**auth, "Accept": accept, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("query", "operation_name"),
    [
        ("query A { __typename } query B { __typename }", None),
        ("query A { __typename }", "B"),
    ],
)
async def test_an_operation_that_cannot_be_chosen_is_a_request_error(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    query: str,
    operation_name: str | None,
) -> None:
    strict = await gql(client, auth, query, operationName=operation_name)
    assert strict.status_code == 400, strict.text
    body = strict.json()
    assert "data" not in body, body
    assert body["errors"] and all(
        e.get("extensions", {}).get("code") for e in body["errors"]
    )
    legacy = await gql(
        client, auth, query, accept="application/json", operationName=operation_name
    )
    assert legacy.status_code == 200
    assert "data" not in legacy.json()


async def test_the_operation_name_picks_the_operation(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    query = (
        f'query Empty {{ leadsByChatflow(chatflowid: "{flow}") {{ id }} }} '
        f'mutation Add {{ createLead(input: {{chatflowid: "{flow}", name: "A"}}) '
        "{ name } }"
    )
    response = await gql(client, auth, query, operationName="Add")
    assert response.json() == {"data": {"createLead": {"name": "A"}}}
    response = await gql(client, auth, query, operationName="Empty")
    assert len(response.json()["data"]["leadsByChatflow"]) == 1


async def test_a_mutation_over_get_is_405_and_not_executed(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    mutation = (
        f'mutation {{ createLead(input: {{chatflowid: "{flow}", name: "A"}}) '
        "{ id } }"
    )
    for accept in (GRAPHQL_RESPONSE, "application/json"):
        response = await client.get(
            "/graphql", params={"query": mutation}, headers={**auth, "Accept": accept}
        )
        assert response.status_code == 405, response.text
        assert "POST" in response.headers.get("allow", "")
        assert response.json()["statusCode"] == 405
    assert await listed(client, auth, flow) == []


async def test_only_get_and_post_run_documents(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """HEAD once ran a body's mutation (the router lets HEAD through with GET)."""
    flow = new_id()
    body = {"query": CREATE, "variables": {"input": {"chatflowid": flow, "name": "A"}}}
    for method in ("HEAD", "PUT", "DELETE", "PATCH"):
        response = await client.request(method, "/graphql", json=body, headers=auth)
        assert response.status_code == 405, method
        assert response.headers["allow"] == "GET, POST", method
    assert await listed(client, auth, flow) == []


async def test_get_variables_are_parsed_as_strictly_as_a_body(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    for variables in (
        f'{{"flow": "{new_id()}", "flow": "{flow}"}}',
        '{"flow": NaN}',
        '{"flow": "\\ud800"}',
    ):
        response = await client.get(
            "/graphql",
            params={"query": LIST, "variables": variables},
            headers={**auth, "Accept": "application/json"},
        )
        assert response.status_code == 400, variables
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_a_query_over_get_works_with_a_token(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    created = (
        await ok(client, auth, CREATE, {"input": {"chatflowid": flow, "name": "A"}})
    )["createLead"]
    response = await client.get(
        "/graphql",
        params={"query": LIST, "variables": f'{{"flow": "{flow}"}}'},
        headers={**auth, "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"data": {"leadsByChatflow": [created]}}
    response = await client.get(
        "/graphql",
        params={"query": "{ __typename }"},
        headers={**auth, "Accept": GRAPHQL_RESPONSE},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_a_query_over_get_without_a_token_is_401(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/graphql", params={"query": "{ __typename }"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].lower().startswith("bearer")


# --- Document limits ------------------------------------------------------------


async def test_a_thousand_aliases_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    query = "{ " + " ".join(f"a{i}: __typename" for i in range(1000)) + " }"
    await assert_refused_both_ways(client, auth, query)


async def test_a_refused_document_stores_nothing(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    lead = {"chatflowid": flow, "name": "A"}
    aliases = " ".join(f"a{i}: createLead(input: $input) {{ id }}" for i in range(1000))
    query = f"mutation Many($input: LeadInput!) {{ {aliases} }}"
    await assert_refused_both_ways(client, auth, query, {"input": lead})
    # A valid mutation beside an over-deep query: the document is refused whole.
    query = (
        f"mutation Add($input: LeadInput!) {{ createLead(input: $input) {{ id }} }} "
        f"query Deep {DEEP_INTROSPECTION}"
    )
    await assert_refused_both_ways(
        client, auth, query, {"input": lead}, operationName="Add"
    )
    assert await listed(client, auth, flow) == []


@pytest.mark.parametrize("query", [DEEP_INTROSPECTION, DEEP_OF_TYPE])
async def test_deep_introspection_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], query: str
) -> None:
    await assert_refused_both_ways(client, auth, query)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"descriptions": True, "input_value_deprecation": True},
        {
            "descriptions": True,
            "specified_by_url": True,
            "directive_is_repeatable": True,
            "schema_description": True,
            "input_value_deprecation": True,
        },
    ],
)
async def test_graphiqls_schema_query_still_works(
    client: httpx.AsyncClient, auth: dict[str, str], options: dict[str, bool]
) -> None:
    data = await ok(client, auth, get_introspection_query(**options))
    types = {t["name"]: t for t in data["__schema"]["types"]}
    assert {"Lead", "LeadInput", "Query", "Mutation", "DateTime"} <= set(types)
    assert [f["name"] for f in types["Lead"]["fields"]] == KEYS


@pytest.mark.parametrize(
    "query",
    [
        "{" + " a" * 15_000 + " }",
        "{ a(" + " b: 1" * 5_000 + ") }",
        "{ " + "...F " * 7_500 + "} fragment F on Query { __typename }",
    ],
)
async def test_a_fifteen_thousand_token_document_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], query: str
) -> None:
    assert len(query.encode()) < 64 * 1024
    await assert_refused_both_ways(client, auth, query)


@pytest.mark.parametrize("depth", [300, 5_000])
async def test_absurdly_nested_documents_are_refused_not_crashed(
    client: httpx.AsyncClient, auth: dict[str, str], depth: int
) -> None:
    query = "{ a" * depth + " }" * depth
    await assert_refused_both_ways(client, auth, query)


async def test_a_batch_of_up_to_ten_is_answered_with_an_array(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    batch: list[dict[str, Any]] = [
        {"query": CREATE, "variables": {"input": {"chatflowid": flow, "name": f"{i}"}}}
        for i in range(9)
    ]
    batch.append({"query": LIST, "variables": {"flow": flow}})
    response = await client.post(
        "/graphql", json=batch, headers={**auth, "Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 200, response.text
    results = response.json()
    assert isinstance(results, list) and len(results) == 10
    created = [result["data"]["createLead"] for result in results[:9]]
    assert [lead["name"] for lead in created] == [f"{i}" for i in range(9)]
    oldest_first = sorted(created, key=lambda lead: (instant(lead), lead["id"]))
    assert results[9] == {"data": {"leadsByChatflow": oldest_first}}
    single = await client.post(
        "/graphql", json=[{"query": "{ __typename }"}], headers=auth
    )
    assert single.json() == [{"data": {"__typename": "Query"}}]


@pytest.mark.parametrize("size", [0, 11, 50])
async def test_a_batch_of_more_than_ten_or_none_is_400(
    client: httpx.AsyncClient, auth: dict[str, str], size: int
) -> None:
    flow = new_id()
    batch = [
        {"query": CREATE, "variables": {"input": {"chatflowid": flow, "name": "A"}}}
    ] * size
    response = await client.post(
        "/graphql", json=batch, headers={**auth, "Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert await listed(client, auth, flow) == []


LISTS = "query Lists($flow: ID!) {{ {} }}"


def lists(count: int) -> str:
    return LISTS.format(
        " ".join(
            f"l{n}: leadsByChatflow(chatflowid: $flow) {{ id }}" for n in range(count)
        )
    )


async def test_a_request_selects_at_most_five_lists(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """One request once built 329 MB: 10 operations x 50 aliased lists."""
    flow = new_id()
    await ok(client, auth, CREATE, {"input": {"chatflowid": flow, "name": "A"}})
    five = await gql(client, auth, lists(5), {"flow": flow})
    assert five.status_code == 200
    assert len(five.json()["data"]) == 5
    fragment = (
        "query Lists($flow: ID!) { ...F ...F ...F } "
        "fragment F on Query { a: leadsByChatflow(chatflowid: $flow) { id } "
        "b: leadsByChatflow(chatflowid: $flow) { id } }"
    )
    refused = {
        "six aliases": [{"query": lists(6), "variables": {"flow": flow}}],
        "fragments": [{"query": fragment, "variables": {"flow": flow}}],
        "a batch of 3 x 2": [{"query": lists(2), "variables": {"flow": flow}}] * 3,
        "the review's 10 x 50": [{"query": lists(50), "variables": {"flow": flow}}]
        * 10,
    }
    for case, batch in refused.items():
        for body in (batch[0], batch) if len(batch) == 1 else (batch,):
            response = await client.post(
                "/graphql",
                json=body,
                headers={**auth, "Accept": "application/json"},
            )
            assert response.status_code == 400, case
            error = response.json()["errors"][0]
            assert error["extensions"]["code"] == "BAD_REQUEST", case
            assert "at most 5" in error["message"], case


# --- Masked errors --------------------------------------------------------------


async def test_every_error_has_a_code_and_no_internals(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow = new_id()
    requests = [
        (auth, "{ lead(", None),
        (auth, "{ nope }", None),
        (auth, CREATE, {"input": {"name": "A"}}),
        (auth, CREATE, {"input": {"chatflowid": flow}}),
        (auth, ONE, {"id": "x"}),
        (bearer(make_token("")), ONE, {"id": new_id()}),
        (auth, DEEP_INTROSPECTION, None),
        (auth, "{" + " a" * 15_000 + " }", None),
    ]
    for headers, query, variables in requests:
        for accept in (GRAPHQL_RESPONSE, "application/json"):
            response = await gql(client, headers, query, variables, accept=accept)
            assert response.status_code in (200, 400), response.text
            assert "Traceback" not in response.text
            assert 'File "' not in response.text
            errors = response.json()["errors"]
            assert errors
            for error in errors:
                assert isinstance(error.get("extensions", {}).get("code"), str), error


async def test_an_internal_error_is_masked(
    client: httpx.AsyncClient,
    app: Starlette,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app.state, "engine", None)
    response = await gql(client, auth, LIST, {"flow": new_id()})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "data": None,
        "errors": [
            {
                "message": "Internal server error",
                "locations": [{"line": 1, "column": 26}],
                "path": ["leadsByChatflow"],
                "extensions": {"code": "INTERNAL_SERVER_ERROR"},
            }
        ],
    }


# --- GraphiQL -------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ],
)
async def test_graphiql_is_served_to_browsers_without_a_token(
    client: httpx.AsyncClient, accept: str
) -> None:
    response = await client.get("/graphql", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "default-src" in policy or "script-src" in policy
    assert "'unsafe-eval'" not in policy


async def test_graphql_responses_carry_nosniff(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for response in (
        await gql(client, auth, "{ __typename }"),
        await gql(client, auth, "{ lead("),
        await client.post("/graphql", content=b"{", headers=auth),
        await client.post("/graphql", json={"query": "{ __typename }"}),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
