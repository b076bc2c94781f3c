"""The Flowise-compatible REST shim: parse, authenticate, call the shared resolver.

Served under `/` and `/api/v1/`; a trailing slash is the same path (see app.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from leads_gql import resolvers
from leads_gql.auth import WRITE, Principal
from leads_gql.bodies import read_json
from leads_gql.db import session_scope
from leads_gql.errors import BadRequest, NotFound
from leads_gql.models import lead_to_dict


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def principal(request: Request) -> Principal:
    return request.app.state.verifier.authenticate(  # type: ignore[no-any-return]
        request.headers.get("authorization")
    )


async def get_leads(request: Request) -> Response:
    """GET /leads/{id}: every lead of chat flow `id`, oldest first; 404 if none."""
    caller = principal(request)
    async with session_scope(request.app.state.engine) as session:
        rows = await resolvers.leads_by_chatflow(
            session=session, principal=caller, chatflowid=request.path_params["id"]
        )
    if not rows:
        raise NotFound("This chat flow has no leads")
    return JSONResponse([lead_to_dict(row) for row in rows])


async def create_lead(request: Request) -> Response:
    """POST /leads: store a lead (a retry with the same id and content is safe)."""
    caller = principal(request)
    # SPEC orders the checks: token, scope, then the body; the resolver checks the
    # scope again, as it must for GraphQL.
    caller.require(WRITE)
    data = await read_json(request)
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object")
    async with session_scope(request.app.state.engine) as session:
        lead = await resolvers.create_lead(session=session, principal=caller, data=data)
    return JSONResponse(lead_to_dict(lead))


routes = [
    Route("/leads/{id}", get_leads, methods=["GET"]),
    Route("/leads", create_lead, methods=["POST"]),
]
