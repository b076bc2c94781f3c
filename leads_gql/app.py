"""The ASGI application: routes, error translation, headers, lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leads_gql import __version__, db, rest
from leads_gql.auth import TokenVerifier
from leads_gql.config import Settings
from leads_gql.cors import CORS
from leads_gql.errors import InvalidInput, LeadsError
from leads_gql.graphql_http import GraphQLEndpoint
from leads_gql.limits import WriteLimits
from leads_gql.openapi import document
from leads_gql.pages import DOCS_CSP, GRAPHIQL_CSP, render_docs
from leads_gql.rest import JSONResponse
from leads_gql.schema import make_schema
from leads_gql.telemetry import Telemetry, metrics

logger = logging.getLogger("leads_gql")


class TrailingSlash:
    """`/leads/` is `/leads`: answered directly, never redirected."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                # In place: the telemetry outside reads the matched route from scope.
                scope["path"] = path.rstrip("/") or "/"
        await self.app(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                names = dict(headers)
                content_type = names.get(b"content-type", b"")
                if (
                    content_type.startswith(b"text/html")
                    and b"content-security-policy" not in names
                ):
                    headers.append((b"content-security-policy", GRAPHIQL_CSP.encode()))
                    headers.append((b"x-frame-options", b"DENY"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"statusCode": status, "message": message, **extra}


async def leads_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LeadsError)
    # REST's error objects are {statusCode, message}; only a 422 lists fields.
    extra = {"errors": exc.errors} if type(exc) is InvalidInput else {}
    return JSONResponse(
        error_body(exc.status, exc.message, **extra), exc.status, exc.headers
    )


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        error_body(exc.status_code, exc.detail), exc.status_code, exc.headers
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await db.check_schema(request.app.state.engine)
    except db.SchemaBehind as exc:
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, 503)
    except Exception:
        return JSONResponse(
            {"status": "unavailable", "reason": "the database is unreachable"},
            503,
            {"Retry-After": "2"},
        )
    return JSONResponse({"status": "ready"})


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    verifier = TokenVerifier(settings)
    graphql = GraphQLEndpoint(
        make_schema(introspection=settings.introspection), graphiql=settings.graphiql
    )
    openapi = document(__version__)

    docs_page = render_docs(openapi)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page, headers={"Content-Security-Policy": DOCS_CSP})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = db.make_engine(settings)
        try:
            if settings.migrate_on_start:
                await db.migrate(engine)
            app.state.engine = engine
            yield
        finally:
            await engine.dispose()

    # Outermost first: headers on every response, 500s included (Telemetry answers
    # them itself), then telemetry, then path normalisation and CORS.
    public_origins = frozenset(
        origin for origins in settings.public_flows.values() for origin in origins
    )
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(Telemetry),
        Middleware(TrailingSlash),
    ]
    if settings.cors_origins or public_origins:
        middleware.append(
            Middleware(
                CORS, origins=settings.cors_origins, public_origins=public_origins
            )
        )
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/graphql", graphql.__call__, methods=["GET", "POST"]),
            *rest.routes,
            # Routes, not a Mount: a Mount's `.*` misses paths holding a newline,
            # which would then skip the token check and get the router's 404.
            *(
                Route(f"/api/v1{route.path}", route.endpoint, methods=route.methods)
                for route in rest.routes
            ),
        ],
        middleware=middleware,
        exception_handlers={
            LeadsError: leads_error,
            HTTPException: http_error,
        },
        lifespan=lifespan,
    )
    # TrailingSlash already made `/x/` into `/x`; a redirect would loop.
    app.router.redirect_slashes = False
    app.state.verifier = verifier
    app.state.graphql = graphql
    app.state.limits = WriteLimits(
        per_subject=settings.rate_limit_writes,
        per_address=settings.rate_limit_writes_per_address,
        public=settings.public_rate_limit,
    )
    app.state.settings = settings
    return app
