"""The GraphQL schema (Strawberry): types, fields over the shared resolvers, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError, GraphQLSyntaxError, ValueNode, value_from_ast_untyped
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.extensions import (
    DisableIntrospection,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionContext, ExecutionResult, Info

from leads_gql import resolvers
from leads_gql.auth import Principal
from leads_gql.errors import InvalidInput, LeadsError, RateLimited
from leads_gql.limits import WriteLimits
from leads_gql.models import LeadRow, StoredLead, format_datetime
from leads_gql.paging import Cursors, Order
from leads_gql.store.db import driver_scope
from leads_gql.store.notifications import Feed, Gone
from leads_gql.telemetry import GRAPHQL_OPERATIONS, operation_label
from leads_gql.web.graphql_limits import document_limits

logger = logging.getLogger("leads_gql.graphql")


@dataclasses.dataclass(slots=True)
class Context:
    principal: Principal
    engine: AsyncEngine
    limits: WriteLimits | None = None
    cursors: Cursors | None = None
    # Over WebSocket: the connection_init payload, this process's feed of new
    # leads, and how to close the socket (code, reason).
    connection_params: dict[str, Any] | None = None
    feed: Feed | None = None
    close: Callable[[int, str], None] | None = None


def _parse_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> Any:
    return value_from_ast_untyped(node, variables)


# Inputs pass through untouched so that the shared resolver validates them and
# answers BAD_USER_INPUT naming `createdDate`, exactly as REST answers 422.
DateTime = strawberry.scalar(
    name="DateTime",
    description="An instant: ISO 8601 in, UTC with a `Z` out "
    "(e.g. 2024-08-24T14:15:22Z).",
    serialize=format_datetime,
    parse_value=lambda value: value,
    parse_literal=_parse_literal,
)


@strawberry.type(description="A visitor's contact details, captured by a chat flow.")
class Lead:
    id: strawberry.ID
    name: str | None
    email: str | None
    phone: str | None
    chatflowid: strawberry.ID
    chat_id: str
    created_date: datetime

    @classmethod
    def from_row(cls, row: LeadRow) -> Lead:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            email=row.email,
            phone=row.phone,
            chatflowid=strawberry.ID(row.chatflowid),
            chat_id=row.chat_id,
            created_date=row.created_date,
        )


@strawberry.input(description="A lead to create; `null` is the same as absent.")
class LeadInput:
    id: strawberry.ID | None = strawberry.UNSET
    name: str | None = strawberry.UNSET
    email: str | None = strawberry.UNSET
    phone: str | None = strawberry.UNSET
    chatflowid: strawberry.ID
    chat_id: str | None = strawberry.UNSET
    created_date: datetime | None = strawberry.UNSET

    def to_data(self) -> dict[str, Any]:
        """The input as REST's JSON object would carry it."""
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "chatflowid": self.chatflowid,
            "chatId": self.chat_id,
            "createdDate": self.created_date,
        }


@strawberry.type(description="A field of an input that breaks a rule, and why.")
class FieldError:
    field: str
    message: str


@strawberry.type(
    description="One item of createLeads: its lead (stored, or already stored "
    "with the same content), or why it was refused: `code` BAD_USER_INPUT (with "
    "`errors`), CONFLICT or FORBIDDEN."
)
class CreateLeadResult:
    lead: Lead | None = None
    errors: list[FieldError] | None = None
    code: str | None = None
    message: str | None = None

    @classmethod
    def of(cls, answer: StoredLead | LeadsError) -> CreateLeadResult:
        if isinstance(answer, LeadsError):
            errors = getattr(answer, "errors", None)
            return cls(
                code=answer.code,
                message=answer.message,
                errors=None if errors is None else [FieldError(**e) for e in errors],
            )
        return cls(lead=Lead.from_row(answer))


LeadOrder = strawberry.enum(
    Order,
    name="LeadOrder",
    description="OLDEST_FIRST: (createdDate, id) ascending; NEWEST_FIRST: descending.",
)


@strawberry.type
class LeadEdge:
    cursor: str
    node: Lead


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="A page of a chat flow's leads (Relay connection).")
class LeadConnection:
    edges: list[LeadEdge]
    page_info: PageInfo
    page: strawberry.Private[resolvers.Page]

    @strawberry.field(
        description="The flow's leads within the filters, whatever the page; "
        "counted only when asked for."
    )
    async def total_count(self, info: Info[Context, None]) -> int:
        async with driver_scope(info.context.engine) as driver:
            return await resolvers.count_leads(driver=driver, page=self.page)

    @classmethod
    def from_page(cls, page: resolvers.Page) -> LeadConnection:
        edges = [
            LeadEdge(cursor=cursor, node=Lead.from_row(lead))
            for lead, cursor in zip(page.leads, page.cursors, strict=True)
        ]
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next,
                has_previous_page=page.has_previous,
                start_cursor=page.cursors[0] if page.cursors else None,
                end_cursor=page.cursors[-1] if page.cursors else None,
            ),
            page=page,
        )


def _given(**arguments: object) -> dict[str, object]:
    """The arguments a client gave (absent is the same as null)."""
    return {k: None if v is strawberry.UNSET else v for k, v in arguments.items()}


@strawberry.type
class Query:
    @strawberry.field(description="Every lead of a chat flow, oldest first.")
    async def leads_by_chatflow(
        self, info: Info[Context, None], chatflowid: strawberry.ID
    ) -> list[Lead]:
        async with driver_scope(info.context.engine) as driver:
            rows = await resolvers.leads_by_chatflow(
                driver=driver,
                principal=info.context.principal,
                chatflowid=chatflowid,
            )
        return [Lead.from_row(row) for row in rows]

    @strawberry.field(
        description="A page of a chat flow's leads, cut by position (keyset): "
        "`first`/`after` forward, `last`/`before` backward (50 by default, at most "
        "500). `search` is a case-insensitive substring of name, email or phone; "
        "`createdAfter` is inclusive, `createdBefore` exclusive."
    )
    async def leads(
        self,
        info: Info[Context, None],
        chatflowid: strawberry.ID,
        # UNSET defaults keep the SDL as SPEC writes it (`first: Int`, no `= null`).
        first: int | None = strawberry.UNSET,
        after: str | None = strawberry.UNSET,
        last: int | None = strawberry.UNSET,
        before: str | None = strawberry.UNSET,
        search: str | None = strawberry.UNSET,
        created_after: datetime | None = strawberry.UNSET,
        created_before: datetime | None = strawberry.UNSET,
        order_by: Order | None = Order.OLDEST_FIRST,
    ) -> LeadConnection:
        cursors = info.context.cursors
        assert cursors is not None, "the context carries the app's cursors"
        given = _given(
            first=first,
            after=after,
            last=last,
            before=before,
            search=search,
            created_after=created_after,
            created_before=created_before,
        )
        async with driver_scope(info.context.engine) as driver:
            page = await resolvers.leads_page(
                driver=driver,
                principal=info.context.principal,
                cursors=cursors,
                chatflowid=chatflowid,
                order=order_by or Order.OLDEST_FIRST,
                **given,
            )
        return LeadConnection.from_page(page)

    @strawberry.field(description="One lead by id; null when unknown or not yours.")
    async def lead(self, info: Info[Context, None], id: strawberry.ID) -> Lead | None:
        async with driver_scope(info.context.engine) as driver:
            row = await resolvers.lead(
                driver=driver, principal=info.context.principal, id=id
            )
        return None if row is None else Lead.from_row(row)


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Store a lead. The same id with the same content returns the "
        "stored lead (a safe retry); with other content it is a CONFLICT."
    )
    async def create_lead(self, info: Info[Context, None], input: LeadInput) -> Lead:
        data = {k: v for k, v in input.to_data().items() if v is not strawberry.UNSET}
        row = await resolvers.create_lead(
            engine=info.context.engine,
            principal=info.context.principal,
            data=data,
            limits=info.context.limits,
        )
        return Lead.from_row(row)

    @strawberry.mutation(
        description="Store up to 1,000 leads; each item is answered in order, and "
        "an item's error never fails the others. Larger batches: POST /leads/batch "
        "(this endpoint keeps its 64 KiB body limit)."
    )
    async def create_leads(
        self, info: Info[Context, None], input: list[LeadInput]
    ) -> list[CreateLeadResult]:
        answers = await resolvers.create_leads(
            engine=info.context.engine,
            principal=info.context.principal,
            items=[
                {k: v for k, v in item.to_data().items() if v is not strawberry.UNSET}
                for item in input
            ],
            limits=info.context.limits,
        )
        return [CreateLeadResult.of(answer) for answer in answers]

    @strawberry.mutation(
        description="Delete a lead and return it; null when unknown or not yours. "
        "Needs leads:delete."
    )
    async def delete_lead(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> Lead | None:
        async with driver_scope(info.context.engine) as driver:
            row = await resolvers.delete_lead(
                driver=driver, principal=info.context.principal, id=id
            )
        return None if row is None else Lead.from_row(row)

    @strawberry.mutation(
        description="Delete every lead, within the token's chat flows, whose email "
        "equals `email` (in any letter case) or whose phone has the digits of "
        "`phone`; returns how many. Needs leads:delete."
    )
    async def erase_contact(
        self,
        info: Info[Context, None],
        # UNSET defaults keep the SDL as SPEC writes it (`email: String`).
        email: str | None = strawberry.UNSET,
        phone: str | None = strawberry.UNSET,
    ) -> int:
        async with driver_scope(info.context.engine) as driver:
            return await resolvers.erase_contact(
                driver=driver,
                principal=info.context.principal,
                **_given(email=email, phone=phone),
            )


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every lead stored in the chat flow from now on, once, as it "
        "is stored (by any instance). Needs leads:read and the flow."
    )
    async def lead_created(
        self, info: Info[Context, None], chatflowid: strawberry.ID
    ) -> AsyncIterator[Lead]:
        context = info.context
        assert context.feed is not None, "subscriptions run over the WebSocket"

        def ended(why: Gone) -> None:
            if context.close is not None:
                context.close(why.code, why.reason)

        # Checked here, before the stream starts: a refusal is the protocol's
        # `error` message, and the socket stays open.
        subscription = resolvers.subscribe_leads(
            principal=context.principal,
            feed=context.feed,
            chatflowid=chatflowid,
            on_end=ended,
        )
        return _created(subscription)


async def _created(subscription: AsyncIterable[StoredLead]) -> AsyncIterator[Lead]:
    try:
        async for lead in subscription:
            yield Lead.from_row(lead)
    except Gone:
        # Ended by the server, which is closing the socket with the reason's
        # code: no `complete` first, which would read as a normal end.
        await asyncio.Future()


INTERNAL = "Internal server error"
_NAMED_FIELD = re.compile(r"Field '(\w+)'|Variable '\$(\w+)'")


def coded_error(error: GraphQLError) -> GraphQLError:
    """The error as the client sees it, with `extensions.code`.

    Service errors keep their message and code (with the field list for
    BAD_USER_INPUT); GraphQL's own parse and validation errors keep their message;
    variables that fail coercion are BAD_USER_INPUT; anything else is masked.
    """
    original = error.original_error
    extensions: dict[str, Any]
    message = error.message
    if isinstance(original, LeadsError):
        message, extensions = original.message, {"code": original.code}
        if isinstance(original, InvalidInput):
            extensions["errors"] = original.errors
        elif isinstance(original, RateLimited):
            extensions["retryAfter"] = original.retry_after
    elif isinstance(original, InvalidOperationTypeError):
        message = "Only subscriptions run over the WebSocket; queries and "
        message += "mutations go over HTTP"
        extensions = {"code": "BAD_REQUEST"}
    elif error.extensions and "code" in error.extensions:
        return error
    elif isinstance(error, GraphQLSyntaxError) or isinstance(
        original, GraphQLSyntaxError
    ):
        extensions = {"code": "GRAPHQL_PARSE_FAILED"}
    elif error.path is None and isinstance(original, GraphQLError):
        # graphql-core (3.3) wraps a variable's coercion error in another.
        match = _NAMED_FIELD.search(message)
        field = (match.group(1) or match.group(2)) if match else "variables"
        extensions = {
            "code": "BAD_USER_INPUT",
            "errors": [{"field": field, "message": message}],
        }
    elif error.path is None and original is None:
        extensions = {"code": "GRAPHQL_VALIDATION_FAILED"}
    else:
        message, extensions = INTERNAL, {"code": "INTERNAL_SERVER_ERROR"}
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=original,
        extensions=extensions,
    )


def _unexpected(error: GraphQLError) -> BaseException | None:
    original = error.original_error
    if original is None or isinstance(
        original, LeadsError | GraphQLError | InvalidOperationTypeError
    ):
        return None
    return original


class OperationMetrics(SchemaExtension):
    """Counts operations by name (the document's) and outcome."""

    def on_operation(self) -> Iterator[None]:
        outcome = "refused"
        try:
            yield
            result = self.execution_context.result
            if result is not None and not result.errors:
                outcome = "ok"
            elif result is not None and (
                result.data is not None or any(e.path for e in result.errors or ())
            ):
                outcome = "error"
        finally:
            try:
                name = self.execution_context.operation_name
            except Exception:  # no document, no name
                name = None
            label = operation_label(name, ran=outcome != "refused")
            GRAPHQL_OPERATIONS.labels(label, outcome).inc()


class LeadsSchema(strawberry.Schema):
    async def execute(
        self, query: str | None, *args: Any, **kwargs: Any
    ) -> ExecutionResult:
        result = await super().execute(query, *args, **kwargs)
        if result.errors:
            result.errors = [coded_error(error) for error in result.errors]
        return result

    def process_errors(
        self,
        errors: list[GraphQLError],
        execution_context: ExecutionContext | None = None,
    ) -> None:
        # Expected errors are answers, not incidents; log only the unexpected,
        # by type and path (never the variables: they hold contact data).
        for error in errors:
            if (original := _unexpected(error)) is not None:
                logger.error(
                    "GraphQL resolver failed at %s",
                    error.path,
                    exc_info=(type(original), original, original.__traceback__),
                )


def make_schema(*, introspection: bool = True) -> strawberry.Schema:
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        OperationMetrics,
        *document_limits(),
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    return LeadsSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(scalar_map={datetime: DateTime}),
    )


schema = make_schema()
