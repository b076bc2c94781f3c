"""CORS: the operator's allowed origins for the whole API, and, for public chat
flows, their pages' origins for `POST /leads` alone (Flowise's chat embed)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PUBLIC_PATHS = frozenset({"/leads", "/api/v1/leads"})
EXPOSED = "X-Request-ID, Retry-After"


class CORS:
    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: tuple[str, ...],
        public_origins: frozenset[str],
    ) -> None:
        self.app = app
        self.origins = frozenset(o.lower() for o in origins)
        self.public_origins = public_origins

    def _methods(self, origin: str, path: str) -> tuple[str, ...] | None:
        """The methods `origin` may use on `path`, or None if it may not."""
        if origin in self.origins:
            return ("GET", "POST")
        if origin in self.public_origins and path.rstrip("/") in PUBLIC_PATHS:
            return ("POST",)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        methods = self._methods(origin.lower(), scope["path"])
        preflight = (
            scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        )
        if preflight:
            await self._preflight(origin, methods, headers)(scope, receive, send)
            return
        # Every answer to a request with an Origin varies by it, refusals too: a
        # shared cache must not hand one origin's answer to another.
        extra = [(b"vary", b"Origin")]
        if methods is not None:
            extra += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSED.encode()),
            ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight(
        self, origin: str, methods: tuple[str, ...] | None, headers: Headers
    ) -> Response:
        requested = headers["access-control-request-method"].strip().upper()
        if methods is None or requested not in methods:
            return Response(
                b'{"statusCode":403,"message":"This origin may not call this path"}',
                403,
                {"Vary": "Origin"},
                media_type="application/json",
            )
        allowed_headers = (
            "Content-Type" if methods == ("POST",) else "Authorization, Content-Type"
        )
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ", ".join(methods),
                "Access-Control-Allow-Headers": allowed_headers,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
