"""GraphQL over HTTP at /graphql: GraphiQL for browsers, JSON for clients.

Follows the GraphQL-over-HTTP specification: a client that accepts
`application/graphql-response+json` gets 4xx for requests that cannot execute
(bad documents, bad variables), a client that accepts only `application/json`
gets 200 with `errors`, as before that specification.
"""

from __future__ import annotations

from typing import Any

import orjson
import strawberry
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import (
    CannotGetOperationTypeError,
    InvalidOperationTypeError,
)
from strawberry.types.graphql import OperationType

from leads_gql import resolvers
from leads_gql.bodies import read_json
from leads_gql.compiled import CreatePlan, ListPlan, Plans
from leads_gql.db import driver_scope
from leads_gql.errors import (
    BadRequest,
    LeadsError,
    MethodNotAllowed,
    ServiceUnavailable,
)
from leads_gql.pages import GRAPHIQL_HTML
from leads_gql.schema import Context, coded_error
from leads_gql.telemetry import GRAPHQL_OPERATIONS, operation_label

GRAPHQL_RESPONSE = "application/graphql-response+json"
MAX_BATCH = 10


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

    async def __call__(self, request: Request) -> Response:
        try:
            return await self.handle(request)
        except LeadsError as error:
            return error_response(error, request)

    async def handle(self, request: Request) -> Response:
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
        )
        strict = _accepts_graphql_response(request)
        if isinstance(payload, list):
            if not 1 <= len(payload) <= MAX_BATCH:
                raise BadRequest(f"A batch holds 1 to {MAX_BATCH} operations")
            operations = [_operation(item) for item in payload]
            body: Any = [(await self.run(op, context, allowed))[0] for op in operations]
            status = 200
        else:
            body, request_error = await self.run(_operation(payload), context, allowed)
            status = 400 if strict and request_error else 200
        media = GRAPHQL_RESPONSE if strict else "application/json"
        return Response(orjson.dumps(body), status, media_type=media)

    async def run(
        self,
        operation: tuple[str, dict[str, Any] | None, str | None],
        context: Context,
        allowed: set[OperationType],
    ) -> tuple[dict[str, Any], bool]:
        """One operation's response body; and whether it failed before executing."""
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
                return {"data": {plan.response_key: orjson.Fragment(leads)}}, False
        elif (
            isinstance(plan, CreatePlan)
            and OperationType.MUTATION in allowed
            and (data := plan.input(variables)) is not None
        ):
            return await self.create(plan, data, context), False
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
            return {"errors": [error.formatted]}, True
        errors = result.errors or []
        for error in errors:
            if isinstance(error.original_error, ServiceUnavailable):
                raise error.original_error
        executed = result.data is not None or any(error.path for error in errors)
        if executed:
            self.plans.learn(query)
        body: dict[str, Any] = {}
        if errors:
            body["errors"] = [error.formatted for error in errors]
        if executed:
            body["data"] = result.data
        return body, not executed

    async def create(
        self, plan: CreatePlan, data: dict[str, Any], context: Context
    ) -> dict[str, Any]:
        """A compiled `createLead`: the body Strawberry would give, errors included
        (answered here: a second run would count the write limit twice)."""
        try:
            async with driver_scope(context.engine) as driver:
                lead = await resolvers.create_lead(
                    driver=driver,
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
            return {"errors": [coded_error(error).formatted], "data": None}
        _count(plan.operation_name, "ok")
        return {"data": {plan.response_key: plan.render(lead)}}


def _count(operation_name: str | None, outcome: str) -> None:
    GRAPHQL_OPERATIONS.labels(operation_label(operation_name), outcome).inc()


def _json_param(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("The variables parameter is not valid JSON") from None


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
