"""The ASGI application: routes, error translation, headers, lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute

from leads_gql import __version__
from leads_gql.auth import TokenVerifier
from leads_gql.config import Settings
from leads_gql.errors import LeadsError, error_body
from leads_gql.limits import WriteLimits
from leads_gql.paging import Cursors
from leads_gql.retention import Retention
from leads_gql.store import db
from leads_gql.store.notifications import Feed, Listener
from leads_gql.telemetry import metrics
from leads_gql.web import rest
from leads_gql.web.cors import CORS
from leads_gql.web.edge import Edge
from leads_gql.web.graphql_http import GraphQLEndpoint
from leads_gql.web.openapi import document
from leads_gql.web.pages import DOCS_CSP, leads_page, render_docs, static_file
from leads_gql.web.rest import JSONResponse
from leads_gql.web.schema import make_schema
from leads_gql.web.subscriptions import Limits as LiveLimits, LiveEndpoint

logger = logging.getLogger("leads_gql")


async def leads_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LeadsError)
    return JSONResponse(exc.rest_body(), exc.status, exc.headers)


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

    live = LiveEndpoint(
        graphql.schema,
        LiveLimits(
            subscriptions=settings.ws_max_subscriptions,
            per_subject=settings.ws_max_per_subject,
            per_address=settings.ws_max_per_address,
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = db.make_engine(settings)
        try:
            if settings.migrate_on_start:
                await db.migrate(engine)
            app.state.engine = engine
            # What start-up built (schema, models, pools) lives as long as the
            # process: keep it out of the collector's full passes, whose pauses
            # scale with it.
            gc.collect()
            gc.freeze()
            retention = None
            if settings.retention_days is not None:
                retention = Retention(
                    engine,
                    settings.retention_days,
                    interval=settings.retention_interval,
                )
                retention.start()
            app.state.retention = retention
            # New leads for this process's subscribers (LISTEN on PostgreSQL).
            app.state.feed = Feed(limit=settings.ws_max_behind)
            listener = Listener(engine, app.state.feed)
            await listener.start()
            try:
                yield
            finally:
                await listener.stop()
                if retention is not None:
                    await retention.stop()
        finally:
            await engine.dispose()

    # Outermost first: headers, metrics and logs on every response, 500s included
    # (Edge answers them itself), then CORS.
    public_origins = frozenset(
        origin for origins in settings.public_flows.values() for origin in origins
    )
    middleware = [Middleware(Edge)]
    if settings.cors_origins or public_origins:
        middleware.append(
            Middleware(
                CORS, origins=settings.cors_origins, public_origins=public_origins
            )
        )
    app = Starlette(
        routes=[
            # The hot paths first: the router tries routes in order.
            *rest.routes,
            # Routes, not a Mount: a Mount's `.*` misses paths holding a newline,
            # which would then skip the token check and get the router's 404.
            *(
                Route(f"/api/v1{route.path}", route.endpoint, methods=route.methods)
                for route in rest.routes
            ),
            # Every method reaches the endpoint, which runs GET and POST and
            # answers 405 to the rest (HEAD included: it must not run a body).
            Route("/graphql", graphql),
            WebSocketRoute("/graphql", live),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            # The pages for people: the leads page and the files pages load.
            Route("/", leads_page, methods=["GET"]),
            Route("/static/{path:path}", static_file, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={
            LeadsError: leads_error,
            HTTPException: http_error,
        },
        lifespan=lifespan,
    )
    # Edge already made `/x/` into `/x`; a redirect would loop.
    app.router.redirect_slashes = False
    app.state.verifier = verifier
    app.state.graphql = graphql
    app.state.limits = WriteLimits(
        per_subject=settings.rate_limit_writes,
        per_address=settings.rate_limit_writes_per_address,
        public=settings.public_rate_limit,
    )
    # Cursors are signed with a key derived from the token key, which every
    # instance of a deployment shares.
    token_key = settings.jwt_secret or settings.jwt_public_key or ""
    app.state.cursors = Cursors(token_key.encode())
    app.state.settings = settings
    return app
