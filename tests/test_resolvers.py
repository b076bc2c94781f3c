"""The rules, on the shared resolvers and on the schema: called directly with a
driver connection from the app's pool, and through `schema.execute` with a Context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette

from leads_gql import resolvers
from leads_gql.auth import Principal
from leads_gql.errors import Conflict, Forbidden, InvalidArgument, InvalidInput
from leads_gql.models import lead_to_dict
from leads_gql.store import db
from leads_gql.web.schema import Context, schema
from tests.conftest import new_id

pytestmark = pytest.mark.anyio

FIELDS = "id name email phone chatflowid chatId createdDate"
CREATE = (
    "mutation Create($input: LeadInput!) "
    f"{{ createLead(input: $input) {{ {FIELDS} }} }}"
)
LIST = f"query List($flow: ID!) {{ leadsByChatflow(chatflowid: $flow) {{ {FIELDS} }} }}"
ONE = f"query One($id: ID!) {{ lead(id: $id) {{ {FIELDS} }} }}"
PrincipalFactory = Callable[..., Principal]


@pytest.fixture
def engine(app: Starlette) -> AsyncEngine:
    engine: AsyncEngine = app.state.engine
    return engine


@pytest.fixture
async def driver(engine: AsyncEngine) -> AsyncIterator[db.Driver]:
    async with db.driver_scope(engine) as driver:
        yield driver


@pytest.fixture
def principal(app: Starlette, make_token: Callable[..., str]) -> PrincipalFactory:
    """principal(scope=..., chatflows=[...]): a Principal from a real token."""

    def make(*args: Any, **kwargs: Any) -> Principal:
        token = make_token(*args, **kwargs)
        result: Principal = app.state.verifier.authenticate(f"Bearer {token}")
        return result

    return make


async def create(engine: AsyncEngine, who: Principal, **data: Any) -> dict[str, Any]:
    row = await resolvers.create_lead(engine=engine, principal=who, data=data)
    return lead_to_dict(row)


async def listed(
    engine: AsyncEngine, who: Principal, flow: str
) -> list[dict[str, Any]]:
    async with db.driver_scope(engine) as driver:
        rows = await resolvers.leads_by_chatflow(
            driver=driver, principal=who, chatflowid=flow
        )
        return [lead_to_dict(row) for row in rows]


# --- Resolvers, called directly -------------------------------------------------


async def test_create_normalises_and_stores_the_lead(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    who = principal()
    flow, lead_id = new_id(), new_id()
    created = await create(
        engine,
        who,
        id=lead_id.upper(),
        chatflowid=flow.upper(),
        name="  Ada ",
        email=" ",
        phone="  +1 (555) 123-4567 ",
        chatId=" kept as given ",
        createdDate="2024-08-24T16:15:22.5+02:00",
        unknown="ignored",
    )
    assert created == {
        "id": lead_id,
        "name": "Ada",
        "email": None,
        "phone": "+1 (555) 123-4567",
        "chatflowid": flow,
        "chatId": " kept as given ",
        "createdDate": "2024-08-24T14:15:22.500000Z",
    }
    # Committed: another connection from the pool sees it.
    assert await listed(engine, who, flow) == [created]
    async with db.driver_scope(engine) as driver:
        row = await resolvers.lead(driver=driver, principal=who, id=lead_id)
    assert row is not None and lead_to_dict(row) == created


async def test_leads_are_listed_oldest_first_then_by_id(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    who, flow = principal(), new_id()
    dates = [
        "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:21.999999Z",
        "2024-08-24T15:15:22+02:00",
        "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22.000001Z",
    ]
    created = [
        await create(engine, who, chatflowid=flow, name="x", createdDate=when)
        for when in dates
    ]
    await create(engine, who, chatflowid=new_id(), name="elsewhere")
    got = await listed(engine, who, flow)
    order = [
        "2024-08-24T13:15:22Z",
        "2024-08-24T14:15:21.999999Z",
        "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22Z",
        "2024-08-24T14:15:22.000001Z",
    ]
    assert [lead["createdDate"] for lead in got] == order
    ties = [lead["id"] for lead in got if lead["createdDate"] == "2024-08-24T14:15:22Z"]
    assert ties == sorted(ties)
    assert sorted(got, key=lambda lead: lead["id"]) == sorted(
        created, key=lambda lead: lead["id"]
    )


async def test_an_unknown_flow_has_no_leads_and_an_unknown_lead_is_none(
    driver: db.Driver, principal: PrincipalFactory
) -> None:
    who = principal("leads:read")
    rows = await resolvers.leads_by_chatflow(
        driver=driver, principal=who, chatflowid=new_id()
    )
    assert list(rows) == []
    assert await resolvers.lead(driver=driver, principal=who, id=new_id()) is None


@pytest.mark.parametrize("bad", ["", "42", new_id()[:-1], new_id() + "0", 42, None])
async def test_a_non_uuid_argument_names_the_argument(
    driver: db.Driver, principal: PrincipalFactory, bad: object
) -> None:
    who = principal("leads:read")
    with pytest.raises(InvalidArgument) as listing:
        await resolvers.leads_by_chatflow(driver=driver, principal=who, chatflowid=bad)
    assert [e["field"] for e in listing.value.errors] == ["chatflowid"]
    with pytest.raises(InvalidArgument) as one:
        await resolvers.lead(driver=driver, principal=who, id=bad)
    assert [e["field"] for e in one.value.errors] == ["id"]


async def test_a_lead_outside_the_tokens_chatflows_is_none(
    engine: AsyncEngine, driver: db.Driver, principal: PrincipalFactory
) -> None:
    flow = new_id()
    created = await create(engine, principal(), chatflowid=flow, name="Ada")
    other = principal("leads:read", chatflows=[new_id()])
    assert (
        await resolvers.lead(driver=driver, principal=other, id=created["id"]) is None
    )
    mine = principal("leads:read", chatflows=[flow.upper()])
    row = await resolvers.lead(driver=driver, principal=mine, id=created["id"])
    assert row is not None and lead_to_dict(row) == created
    assert await listed(engine, mine, flow.upper()) == [created]
    with pytest.raises(Forbidden):
        await listed(engine, other, flow)


@pytest.mark.parametrize(
    ("scope", "chatflows"),
    [
        (None, None),
        ("", None),
        ("leads:write", None),
        ("leads:readx other", None),
        ("leads:read leads:write", []),
    ],
)
async def test_reading_needs_the_read_scope(
    engine: AsyncEngine,
    driver: db.Driver,
    principal: PrincipalFactory,
    scope: str | None,
    chatflows: list[str] | None,
) -> None:
    flow = new_id()
    created = await create(engine, principal(), chatflowid=flow, name="Ada")
    who = principal(scope, chatflows=chatflows)
    with pytest.raises(Forbidden) as listing:
        await resolvers.leads_by_chatflow(driver=driver, principal=who, chatflowid=flow)
    with pytest.raises(Forbidden) as one:
        await resolvers.lead(driver=driver, principal=who, id=created["id"])
    for info in (listing, one):
        assert "Ada" not in str(info.value)


@pytest.mark.parametrize(
    ("scope", "chatflows"),
    [(None, None), ("", None), ("leads:read", None), ("leads:read leads:write", [])],
)
async def test_creating_needs_the_write_scope_before_anything_else(
    engine: AsyncEngine,
    principal: PrincipalFactory,
    scope: str | None,
    chatflows: list[str] | None,
) -> None:
    flow = new_id()
    who = principal(scope, chatflows=chatflows)
    with pytest.raises(Forbidden):
        await create(engine, who, chatflowid=flow, name="Ada")
    # Scope before input: an invalid lead is still Forbidden.
    with pytest.raises(Forbidden):
        await create(engine, who, chatflowid="nope")
    assert await listed(engine, principal(), flow) == []


async def test_the_input_is_checked_before_the_tokens_chatflows(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    flow = new_id()
    widget = principal("leads:write", chatflows=[new_id()])
    with pytest.raises(InvalidInput) as info:
        await create(engine, widget, chatflowid=flow, email="nope")
    assert [e["field"] for e in info.value.errors] == ["email"]
    with pytest.raises(Forbidden):
        await create(engine, widget, chatflowid=flow, name="Ada")
    assert await listed(engine, principal(), flow) == []
    mine = principal("leads:write", chatflows=[flow.upper()])
    assert (await create(engine, mine, chatflowid=flow, name="Ada"))["name"] == "Ada"


async def test_invalid_input_lists_every_failing_field(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    with pytest.raises(InvalidInput) as info:
        await create(
            engine,
            principal(),
            id="nope",
            chatflowid=new_id(),
            name=" ",
            chatId="",
            createdDate="2024-08-24",
        )
    assert [e["field"] for e in info.value.errors] == [
        "id",
        "chatId",
        "createdDate",
        "name",
        "email",
        "phone",
    ]
    assert all(e["message"] for e in info.value.errors)


async def test_the_same_id_retried_or_changed(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    who, flow, lead_id = principal(), new_id(), new_id()
    first = {
        "id": lead_id,
        "chatflowid": flow,
        "name": "Ada",
        "createdDate": "2024-08-24T14:15:22Z",
    }
    stored = await create(engine, who, **first)
    assert await create(engine, who, **first) == stored
    assert (
        await create(engine, who, id=lead_id.upper(), chatflowid=flow, name=" Ada ")
        == stored
    )
    assert (
        await create(
            engine, who, **{**first, "createdDate": "2024-08-24T10:15:22-04:00"}
        )
        == stored
    )
    for change in (
        {"name": "Grace"},
        {"email": "ada@example.com"},
        {"chatflowid": new_id()},
        {"chatId": "other"},
        {"createdDate": "2024-08-24T14:15:22.000001Z"},
    ):
        with pytest.raises(Conflict):
            await create(engine, who, **{**first, **change})
    assert await listed(engine, who, flow) == [stored]


# --- Through the schema, with a Context -----------------------------------------


async def test_schema_create_with_variables_and_inline_literals_agree(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    context = Context(principal=principal(), engine=engine)
    flow = new_id()
    lead = {
        "id": new_id(),
        "chatflowid": flow,
        "name": "Ada",
        "email": "ada@example.com",
        "phone": "12345",
        "chatId": "chat",
        "createdDate": "2024-08-24T14:15:22Z",
    }
    by_variables = await schema.execute(
        CREATE, variable_values={"input": lead}, context_value=context
    )
    assert by_variables.errors is None
    assert by_variables.data == {"createLead": lead}
    other = {**lead, "id": new_id()}
    literal = ", ".join(f'{key}: "{value}"' for key, value in other.items())
    inline = await schema.execute(
        f"mutation {{ createLead(input: {{{literal}}}) {{ {FIELDS} }} }}",
        context_value=context,
    )
    assert inline.errors is None
    assert inline.data == {"createLead": other}
    rows = await listed(engine, context.principal, flow)
    listed_by_schema = await schema.execute(
        LIST, variable_values={"flow": flow}, context_value=context
    )
    assert listed_by_schema.data == {"leadsByChatflow": rows}
    assert sorted(rows, key=lambda row: row["id"]) == sorted(
        [lead, other], key=lambda row: row["id"]
    )


@pytest.mark.parametrize(
    "data",
    [
        {"email": "not-an-email"},
        {"name": "x" * 256, "phone": "12"},
        {"name": " ", "email": "", "phone": None},
        {"id": "nope", "name": "Ada", "chatId": "", "createdDate": "2024-08-24"},
        {"name": "Ada", "createdDate": "2024-02-30T00:00:00Z"},
    ],
)
async def test_schema_bad_user_input_carries_the_resolvers_field_list(
    engine: AsyncEngine, principal: PrincipalFactory, data: dict[str, Any]
) -> None:
    who, flow = principal(), new_id()
    lead = {"chatflowid": flow, **data}
    with pytest.raises(InvalidInput) as info:
        await create(engine, who, **lead)
    result = await schema.execute(
        CREATE,
        variable_values={"input": lead},
        context_value=Context(principal=who, engine=engine),
    )
    assert result.data is None
    assert result.errors is not None and len(result.errors) == 1
    extensions = result.errors[0].formatted["extensions"]
    assert extensions == {"code": "BAD_USER_INPUT", "errors": info.value.errors}
    assert await listed(engine, who, flow) == []


@pytest.mark.parametrize(
    ("scope", "chatflows"),
    [(None, None), ("", None), ("leads:read leads:write", [])],
)
async def test_schema_a_token_that_grants_nothing_is_forbidden_everywhere(
    engine: AsyncEngine,
    principal: PrincipalFactory,
    scope: str | None,
    chatflows: list[str] | None,
) -> None:
    flow = new_id()
    created = await create(engine, principal(), chatflowid=flow, name="Ada Secret")
    context = Context(principal=principal(scope, chatflows=chatflows), engine=engine)
    for query, variables in [
        (LIST, {"flow": flow}),
        (ONE, {"id": created["id"]}),
        (CREATE, {"input": {"chatflowid": flow, "name": "Eve"}}),
    ]:
        result = await schema.execute(
            query, variable_values=variables, context_value=context
        )
        assert result.errors is not None and len(result.errors) == 1
        formatted = result.errors[0].formatted
        assert formatted["extensions"] == {"code": "FORBIDDEN"}
        assert "Ada Secret" not in str(formatted) and "Ada Secret" not in str(
            result.data
        )
    assert await listed(engine, principal(), flow) == [created]


async def test_schema_lead_outside_chatflows_is_null_not_forbidden(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    created = await create(engine, principal(), chatflowid=new_id(), name="Ada")
    context = Context(
        principal=principal("leads:read", chatflows=[new_id()]), engine=engine
    )
    result = await schema.execute(
        ONE, variable_values={"id": created["id"]}, context_value=context
    )
    assert result.errors is None
    assert result.data == {"lead": None}


async def test_schema_conflict_and_retry(
    engine: AsyncEngine, principal: PrincipalFactory
) -> None:
    context = Context(principal=principal(), engine=engine)
    lead = {"id": new_id(), "chatflowid": new_id(), "name": "Ada"}
    first = await schema.execute(
        CREATE, variable_values={"input": lead}, context_value=context
    )
    retry = await schema.execute(
        CREATE, variable_values={"input": lead}, context_value=context
    )
    assert first.errors is None and retry.errors is None
    assert retry.data == first.data
    changed = await schema.execute(
        CREATE,
        variable_values={"input": {**lead, "name": "Eve"}},
        context_value=context,
    )
    assert changed.data is None
    assert changed.errors is not None
    assert changed.errors[0].formatted["extensions"] == {"code": "CONFLICT"}


async def test_schema_masks_an_internal_error(principal: PrincipalFactory) -> None:
    # No engine at all: SQLAlchemy fails in a way no rule anticipates.
    context = Context(principal=principal(), engine=None)  # type: ignore[arg-type]
    result = await schema.execute(
        LIST, variable_values={"flow": new_id()}, context_value=context
    )
    assert result.data is None
    assert result.errors is not None
    assert [error.formatted for error in result.errors] == [
        {
            "message": "Internal server error",
            "locations": [{"line": 1, "column": 26}],
            "path": ["leadsByChatflow"],
            "extensions": {"code": "INTERNAL_SERVER_ERROR"},
        }
    ]


async def test_schema_a_broken_database_tells_nothing_of_the_internals(
    principal: PrincipalFactory, tmp_path: Any
) -> None:
    # A database without the lead table: the driver's error names SQL and tables.
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    try:
        context = Context(principal=principal(), engine=engine)
        for query, variables in [
            (LIST, {"flow": new_id()}),
            (ONE, {"id": new_id()}),
            (CREATE, {"input": {"chatflowid": new_id(), "name": "Ada"}}),
        ]:
            result = await schema.execute(
                query, variable_values=variables, context_value=context
            )
            assert result.errors is not None and len(result.errors) == 1
            formatted = result.errors[0].formatted
            assert set(formatted["extensions"]) == {"code"}
            assert formatted["extensions"]["code"] in {
                "INTERNAL_SERVER_ERROR",
                "SERVICE_UNAVAILABLE",
            }
            text = str(formatted).lower()
            for leak in ("select", "insert", "no such table", "sqlite", "ada", "trace"):
                assert leak not in text, formatted
    finally:
        await engine.dispose()
