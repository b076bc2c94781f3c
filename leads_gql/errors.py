"""The errors of the leads service, with the HTTP status and GraphQL code of each.

LeadsError
 ├── BadRequest            400  BAD_REQUEST
 │    └── InvalidJSON      400  BAD_REQUEST
 ├── Unauthenticated       401  UNAUTHENTICATED
 ├── Forbidden             403  FORBIDDEN
 ├── NotFound              404  NOT_FOUND
 ├── MethodNotAllowed      405  METHOD_NOT_ALLOWED
 ├── Conflict              409  CONFLICT
 ├── PayloadTooLarge       413  PAYLOAD_TOO_LARGE
 ├── UnsupportedMediaType  415  UNSUPPORTED_MEDIA_TYPE
 ├── InvalidInput          422  BAD_USER_INPUT   (carries [{field, message}])
 │    └── InvalidArgument  400  BAD_USER_INPUT   (a malformed id in a path/argument)
 ├── RateLimited           429  RATE_LIMITED     (carries retry_after)
 └── ServiceUnavailable    503  SERVICE_UNAVAILABLE (carries retry_after)

No framework is imported here: resolvers raise these, and the REST and GraphQL
transports translate them.
"""

from __future__ import annotations

from typing import TypedDict


class FieldError(TypedDict):
    field: str
    message: str


class LeadsError(Exception):
    status = 500
    code = "INTERNAL_SERVER_ERROR"
    default_message = "Internal server error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error on either transport."""
        return {}

    def rest_body(self) -> dict[str, object]:
        """REST's error object (`error_body`); a 422 lists its fields."""
        body = error_body(self.status, self.message)
        if self.status == 422 and isinstance(self, InvalidInput):
            body["errors"] = self.errors
        return body


def error_body(status: int, message: str) -> dict[str, object]:
    """REST's error object, for every error status: {statusCode, message}."""
    return {"statusCode": status, "message": message}


class BadRequest(LeadsError):
    status = 400
    code = "BAD_REQUEST"
    default_message = "Bad request"


class InvalidJSON(BadRequest):
    default_message = "The body is not valid JSON"


class Unauthenticated(LeadsError):
    status = 401
    code = "UNAUTHENTICATED"
    default_message = "A valid bearer token is required"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="leads-gql"'}


class Forbidden(LeadsError):
    status = 403
    code = "FORBIDDEN"
    default_message = "The token does not allow this"


class NotFound(LeadsError):
    status = 404
    code = "NOT_FOUND"
    default_message = "Not found"


class MethodNotAllowed(LeadsError):
    status = 405
    code = "METHOD_NOT_ALLOWED"
    default_message = "Method not allowed"

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": "GET, POST"}


class Conflict(LeadsError):
    status = 409
    code = "CONFLICT"
    default_message = "A lead with this id exists with other content"


class PayloadTooLarge(LeadsError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "The request body is too large"


class UnsupportedMediaType(LeadsError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    default_message = "The request body must be JSON (Content-Type: application/json)"


class InvalidInput(LeadsError):
    status = 422
    code = "BAD_USER_INPUT"
    default_message = "Invalid input"

    def __init__(self, errors: list[FieldError], message: str | None = None) -> None:
        super().__init__(message)
        self.errors = errors


class InvalidArgument(InvalidInput):
    status = 400


class RateLimited(LeadsError):
    status = 429
    code = "RATE_LIMITED"
    default_message = "Too many requests"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(LeadsError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "The database is unavailable; try again shortly"

    def __init__(self, retry_after: int = 2, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
