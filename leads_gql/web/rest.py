"""The Flowise-compatible REST shim: parse, authenticate, call the shared resolver.

Served under `/` and `/api/v1/`; a trailing slash is the same path (see app.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from leads_gql import resolvers
from leads_gql.auth import WRITE, Principal, public_principal
from leads_gql.errors import BadRequest, LeadsError
from leads_gql.models import StoredLead, lead_to_dict
from leads_gql.web.bodies import read_json


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def principal(request: Request) -> Principal:
    return request.app.state.verifier.authenticate(  # type: ignore[no-any-return]
        request.headers.get("authorization"), client_address(request)
    )


async def get_leads(request: Request) -> Response:
    """GET /leads/{id}: every lead of chat flow `id`, oldest first; 404 if none.
    A large flow is streamed rather than held whole."""
    body = await resolvers.list_leads(
        engine=request.app.state.engine,
        principal=principal(request),
        chatflowid=request.path_params["id"],
    )
    if isinstance(body, bytes):
        return Response(body, media_type="application/json")
    return StreamingResponse(body, media_type="application/json")


EXPORT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "json": "application/json",
}


async def export_leads(request: Request) -> Response:
    """GET /leads/{id}/export?format=csv|ndjson|json: a download of the flow."""
    flow = request.path_params["id"]
    fmt = request.query_params.get("format", "csv")
    pieces = await resolvers.export_leads(
        engine=request.app.state.engine,
        principal=principal(request),
        chatflowid=flow,
        format=fmt,
    )
    filename = f"{flow.lower()}-leads.{fmt}"
    return StreamingResponse(
        pieces,
        media_type=EXPORT_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def writer(request: Request) -> Principal:
    """Who creates: the token's bearer or, without a token, a visitor of a
    public chat flow's page (its Origin allowed by LEADS_PUBLIC_FLOWS).

    SPEC orders the checks: token, scope, then the body; the resolver checks the
    scope again, as it must for GraphQL."""
    caller = None
    if "authorization" not in request.headers:
        caller = public_principal(
            request.app.state.settings.public_flows,
            request.headers.get("origin"),
            client_address(request),
        )
    caller = caller or principal(request)
    caller.require(WRITE)
    return caller


async def create_lead(request: Request) -> Response:
    """POST /leads: store a lead (a retry with the same id and content is safe).

    Without a token, a visitor of a public chat flow's page (its Origin allowed
    by LEADS_PUBLIC_FLOWS) may create leads in that flow, and nothing else.
    """
    caller = writer(request)
    data = await read_json(request)
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object")
    lead = await resolvers.create_lead(
        engine=request.app.state.engine,
        principal=caller,
        data=data,
        limits=request.app.state.limits,
    )
    return JSONResponse(lead_to_dict(lead))


# A batch of 1,000 leads at their largest still fits (SPEC: 4 MiB).
BATCH_BODY_BYTES = 4 * 1024 * 1024


def item_answer(answer: StoredLead | LeadsError) -> dict[str, Any]:
    """One entry of a batch's answer: the lead, or the error a single create of
    the item would have had (its fields listed for a 422)."""
    if isinstance(answer, LeadsError):
        return answer.rest_body()
    return {"lead": lead_to_dict(answer)}


async def create_leads(request: Request) -> Response:
    """POST /leads/batch: store up to 1,000 leads; each item answered in order."""
    caller = writer(request)
    data = await read_json(request, BATCH_BODY_BYTES)
    if not isinstance(data, list) or not 1 <= len(data) <= resolvers.MAX_BATCH:
        raise BadRequest(
            f"The body must be a JSON array of 1 to {resolvers.MAX_BATCH} leads"
        )
    answers = await resolvers.create_leads(
        engine=request.app.state.engine,
        principal=caller,
        items=data,
        limits=request.app.state.limits,
    )
    return JSONResponse([item_answer(answer) for answer in answers])


routes = [
    Route("/leads/{id}", get_leads, methods=["GET"]),
    Route("/leads/{id}/export", export_leads, methods=["GET"]),
    Route("/leads/batch", create_leads, methods=["POST"]),
    Route("/leads", create_lead, methods=["POST"]),
]
