"""GraphQL over HTTP at /graphql: GraphiQL for browsers, JSON for clients.

Follows the GraphQL-over-HTTP specification: a client that accepts
`application/graphql-response+json` gets 4xx for requests that cannot execute
(bad documents, bad variables), a client that accepts only `application/json`
gets 200 with `errors`, as before that specification.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import strawberry
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import (
    CannotGetOperationTypeError,
    InvalidOperationTypeError,
)
from strawberry.types.graphql import OperationType

from leads_gql import resolvers
from leads_gql.errors import (
    BadRequest,
    InvalidJSON,
    LeadsError,
    MethodNotAllowed,
    RateLimited,
    ServiceUnavailable,
)
from leads_gql.store.db import driver_scope
from leads_gql.telemetry import GRAPHQL_OPERATIONS, operation_label
from leads_gql.web.bodies import parse_json, read_json
from leads_gql.web.compiled import CreatePlan, ListPlan, PagePlan, Plans
from leads_gql.web.graphql_limits import MAX_LISTS, list_selections
from leads_gql.web.pages import GRAPHIQL_HTML
from leads_gql.web.schema import Context, coded_error

GRAPHQL_RESPONSE = "application/graphql-response+json"
MAX_BATCH = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """One operation's answer: its body, whether it was refused before executing
    (a bad document or variables), and the wait when a write limit refused it."""

    body: dict[str, Any]
    refused: bool = False
    retry_after: int | None = None


def _accepts_graphql_response(request: Request) -> bool:
    return GRAPHQL_RESPONSE in request.headers.get("accept", "")


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept


def error_response(error: LeadsError, request: Request) -> Response:
    """An HTTP-level error on /graphql, readable as GraphQL and as REST."""
    body: dict[str, Any] = {
        "statusCode": error.status,
        "message": error.message,
        "errors": [{"message": error.message, "extensions": {"code": error.code}}],
    }
    media = (
        GRAPHQL_RESPONSE if _accepts_graphql_response(request) else "application/json"
    )
    return Response(orjson.dumps(body), error.status, error.headers, media_type=media)


class GraphQLEndpoint:
    def __init__(self, schema: strawberry.Schema, *, graphiql: bool) -> None:
        self.schema = schema
        self.graphiql = graphiql
        self.plans = Plans()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An ASGI app, so that the route passes every method to `handle`."""
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except LeadsError as error:
            response = error_response(error, request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        # Only GET (queries) and POST run documents; HEAD, which the router lets
        # through with GET, would otherwise run a body's mutations unanswered.
        if request.method not in ("GET", "POST"):
            raise MethodNotAllowed()
        if (
            self.graphiql
            and request.method == "GET"
            and not request.query_params.get("query")
            and _wants_html(request)
        ):
            return HTMLResponse(GRAPHIQL_HTML)
        # The token comes before the body: no token, 401, whatever the body.
        principal = request.app.state.verifier.authenticate(
            request.headers.get("authorization"),
            request.client.host if request.client else "",
        )
        allowed = {OperationType.QUERY}
        if request.method == "GET":
            payload: Any = {
                "query": request.query_params.get("query"),
                "operationName": request.query_params.get("operationName"),
                "variables": _json_param(request.query_params.get("variables")),
            }
        else:
            payload = await read_json(request)
            allowed.add(OperationType.MUTATION)

        context = Context(
            principal=principal,
            engine=request.app.state.engine,
            limits=request.app.state.limits,
            cursors=request.app.state.cursors,
        )
        strict = _accepts_graphql_response(request)
        batch = isinstance(payload, list)
        if batch and not 1 <= len(payload) <= MAX_BATCH:
            raise BadRequest(f"A batch holds 1 to {MAX_BATCH} operations")
        operations = [_operation(item) for item in (payload if batch else [payload])]
        # What one request may cost, counted before any of it runs.
        lists = sum(list_selections(query, name) for query, _, name in operations)
        if lists > MAX_LISTS:
            raise BadRequest(
                f"This request selects {lists} lead lists; at most {MAX_LISTS} "
                "per request (operations of a batch count together)"
            )
        outcomes = [await self.run(op, context, allowed) for op in operations]
        status, headers = 200, {}
        limited = [o.retry_after for o in outcomes if o.retry_after is not None]
        if limited:
            # As REST answers a limited write: 429 with Retry-After; the body
            # still tells which operations ran.
            status, headers = 429, {"Retry-After": str(max(limited))}
        elif strict and not batch and outcomes[0].refused:
            status = 400
        body = [o.body for o in outcomes] if batch else outcomes[0].body
        media = GRAPHQL_RESPONSE if strict else "application/json"
        return Response(orjson.dumps(body), status, headers, media_type=media)

    async def run(
        self,
        operation: tuple[str, dict[str, Any] | None, str | None],
        context: Context,
        allowed: set[OperationType],
    ) -> Outcome:
        """One operation's answer."""
        query, variables, operation_name = operation
        plan = self.plans.get(query, operation_name)
        if isinstance(plan, ListPlan) and (flow := plan.chatflowid(variables)):
            try:
                async with driver_scope(context.engine) as driver:
                    leads = await resolvers.leads_json(
                        driver=driver,
                        principal=context.principal,
                        chatflowid=flow,
                        keys=plan.keys,
                    )
            except ServiceUnavailable:
                raise
            except LeadsError:
                pass  # the ordinary path answers with the GraphQL error
            else:
                _count(plan.operation_name, "ok")
                return Outcome({"data": {plan.response_key: orjson.Fragment(leads)}})
        elif (
            isinstance(plan, CreatePlan)
            and OperationType.MUTATION in allowed
            and (data := plan.input(variables)) is not None
        ):
            return await self.create(plan, data, context)
        elif isinstance(plan, PagePlan) and (
            arguments := plan.resolver_arguments(variables)
        ):
            try:
                answer = await self.page(plan, arguments, context)
            except ServiceUnavailable:
                raise
            except LeadsError:
                pass  # the ordinary path answers with the GraphQL error
            else:
                _count(plan.operation_name, "ok")
                return Outcome({"data": {plan.response_key: answer}})
        try:
            result = await self.schema.execute(
                query,
                variable_values=variables,
                context_value=context,
                operation_name=operation_name,
                allowed_operation_types=allowed,
            )
        except InvalidOperationTypeError:
            raise MethodNotAllowed("Mutations need POST") from None
        except (CannotGetOperationTypeError, MissingQueryError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            error = GraphQLError(message, extensions={"code": "BAD_REQUEST"})
            return Outcome({"errors": [error.formatted]}, refused=True)
        errors = result.errors or []
        retry_after = None
        for error in errors:
            if isinstance(error.original_error, ServiceUnavailable):
                raise error.original_error
            if isinstance(error.original_error, RateLimited):
                retry_after = max(retry_after or 0, error.original_error.retry_after)
        executed = result.data is not None or any(error.path for error in errors)
        if executed:
            self.plans.learn(query)
        body: dict[str, Any] = {}
        if errors:
            body["errors"] = [error.formatted for error in errors]
        if executed:
            body["data"] = result.data
        return Outcome(body, refused=not executed, retry_after=retry_after)

    async def page(
        self, plan: PagePlan, arguments: dict[str, Any], context: Context
    ) -> Any:
        """A compiled `leads` page: the connection Strawberry would print."""
        assert context.cursors is not None
        async with driver_scope(context.engine) as driver:
            page = await resolvers.leads_page(
                driver=driver,
                principal=context.principal,
                cursors=context.cursors,
                **arguments,
            )
            total = (
                await resolvers.count_leads(driver=driver, page=page)
                if plan.counts
                else None
            )
        return plan.render(
            page.leads,
            page.cursors,
            total=total,
            has_next=page.has_next,
            has_previous=page.has_previous,
        )

    async def create(
        self, plan: CreatePlan, data: dict[str, Any], context: Context
    ) -> Outcome:
        """A compiled `createLead`: the body Strawberry would give, errors included
        (answered here: a second run would count the write limit twice)."""
        try:
            lead = await resolvers.create_lead(
                engine=context.engine,
                principal=context.principal,
                data=data,
                limits=context.limits,
            )
        except ServiceUnavailable:
            raise
        except LeadsError as exc:
            _count(plan.operation_name, "error")
            error = GraphQLError(
                exc.message,
                nodes=[plan.field],
                path=[plan.response_key],
                original_error=exc,
            )
            body = {"errors": [coded_error(error).formatted], "data": None}
            limited = exc.retry_after if isinstance(exc, RateLimited) else None
            return Outcome(body, retry_after=limited)
        _count(plan.operation_name, "ok")
        return Outcome({"data": {plan.response_key: plan.render(lead)}})


def _count(operation_name: str | None, outcome: str) -> None:
    GRAPHQL_OPERATIONS.labels(operation_label(operation_name), outcome).inc()


def _json_param(raw: str | None) -> Any:
    """The `variables` of a GET, as strictly parsed as a POST body."""
    if raw is None:
        return None
    try:
        return parse_json(raw.encode("utf-8", "surrogatepass"))
    except InvalidJSON as exc:
        reason = exc.message.removeprefix("The body is not valid JSON")
        raise BadRequest(f"The variables parameter is not valid JSON{reason}") from None


def _operation(payload: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    """(query, variables, operationName) of a request, or 400 if it is not one."""
    if not isinstance(payload, dict):
        raise BadRequest("A GraphQL request is a JSON object with a query")
    query = payload.get("query")
    variables = payload.get("variables")
    operation_name = payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("A GraphQL request needs a query string")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest("variables must be a JSON object")
    if operation_name is not None and not isinstance(operation_name, str):
        raise BadRequest("operationName must be a string")
    return query, variables, operation_name
