"""The OpenAPI 3.1 document of the REST shim, served at /openapi.json."""

from __future__ import annotations

from typing import Any

UUID_PATTERN = (
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def _error(description: str, *, fields: bool = False) -> dict[str, Any]:
    ref = (
        "#/components/schemas/ValidationError"
        if fields
        else "#/components/schemas/Error"
    )
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ref}}},
    }


_UNAUTHORIZED = {
    **_error("Missing, malformed, badly signed or expired token"),
    "headers": {
        "WWW-Authenticate": {"schema": {"type": "string", "pattern": "^Bearer"}}
    },
}

_LEAD_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid", "description": "Lower-case UUID"},
    "name": {"type": ["string", "null"], "maxLength": 255},
    "email": {"type": ["string", "null"], "maxLength": 254},
    "phone": {"type": ["string", "null"]},
    "chatflowid": {"type": "string", "format": "uuid"},
    "chatId": {"type": "string", "minLength": 1, "maxLength": 255},
    "createdDate": {
        "type": "string",
        "format": "date-time",
        "description": "UTC with a Z suffix, e.g. 2024-08-24T14:15:22Z",
    },
}


_FLOW_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The chat flow id (a UUID, else 400)",
    "schema": {"type": "string"},
}


def _paths(prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}/leads/{{id}}": {
            "get": {
                "operationId": f"listLeads{prefix.replace('/', '_')}",
                "summary": "Every lead of a chat flow, oldest first",
                "parameters": [_FLOW_ID],
                "responses": {
                    "200": {
                        "description": "The leads, oldest first",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Lead"},
                                }
                            }
                        },
                    },
                    "400": _error("The id is not a UUID"),
                    "401": _UNAUTHORIZED,
                    "403": _error("The token lacks leads:read or this chat flow"),
                    "404": _error("The chat flow has no leads"),
                    "503": _error("The database is unavailable; retry"),
                },
            }
        },
        f"{prefix}/leads/{{id}}/export": {
            "get": {
                "operationId": f"exportLeads{prefix.replace('/', '_')}",
                "summary": "Download every lead of a chat flow, oldest first, "
                "streamed: CSV (RFC 4180, CRLF, formula-guarded cells), NDJSON "
                "or a JSON array",
                "parameters": [
                    _FLOW_ID,
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "description": "csv (default), ndjson or json; else 400",
                        "schema": {"type": "string", "enum": ["csv", "ndjson", "json"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The leads, as an attachment named "
                        "<id>-leads.<format>",
                        "headers": {
                            "Content-Disposition": {"schema": {"type": "string"}}
                        },
                        "content": {
                            "text/csv": {"schema": {"type": "string"}},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Lead"},
                                }
                            },
                        },
                    },
                    "400": _error("The id is not a UUID, or the format is unknown"),
                    "401": _UNAUTHORIZED,
                    "403": _error("The token lacks leads:read or this chat flow"),
                    "404": _error("The chat flow has no leads"),
                    "503": _error("The database is unavailable; retry"),
                },
            }
        },
        f"{prefix}/leads": {
            "post": {
                "operationId": f"createLead{prefix.replace('/', '_')}",
                "summary": "Create a lead (idempotent by id)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/LeadInput"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The stored lead",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Lead"}
                            }
                        },
                    },
                    "400": _error("The body is not JSON, or not a JSON object"),
                    "401": _UNAUTHORIZED,
                    "403": _error("The token lacks leads:write or this chat flow"),
                    "409": _error("The id exists with other content"),
                    "413": _error("The body is over 64 KiB"),
                    "415": _error("The body is not application/json"),
                    "422": _error("A field breaks a rule", fields=True),
                    "429": _error("Too many requests; see Retry-After"),
                    "503": _error("The database is unavailable; retry"),
                },
            }
        },
        f"{prefix}/leads/batch": {
            "post": {
                "operationId": f"createLeads{prefix.replace('/', '_')}",
                "summary": "Create 1 to 1,000 leads; each item answered in order",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 1000,
                                "items": {"$ref": "#/components/schemas/LeadInput"},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "One entry per item, in order: the lead "
                        "(stored, or already stored with the same content), or "
                        "the item's error (422, 409 or 403)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/BatchItem"},
                                }
                            }
                        },
                    },
                    "400": _error(
                        "The body is not JSON, or not an array of 1 to 1,000"
                    ),
                    "401": _UNAUTHORIZED,
                    "403": _error("The token lacks leads:write"),
                    "413": _error("The body is over 4 MiB"),
                    "415": _error("The body is not application/json"),
                    "429": _error("Too many requests; see Retry-After"),
                    "503": _error("The database is unavailable; retry"),
                },
            }
        },
    }


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leads-gql REST shim",
            "version": version,
            "description": "Flowise-compatible lead endpoints. The GraphQL API at "
            "/graphql is the primary interface.",
        },
        "paths": {**_paths(""), **_paths("/api/v1")},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Lead": {
                    "type": "object",
                    "properties": _LEAD_FIELDS,
                    "required": list(_LEAD_FIELDS),
                    "additionalProperties": False,
                },
                "LeadInput": {
                    "type": "object",
                    "description": "At least one of name, email, phone. null is "
                    "absent; other keys are ignored.",
                    "properties": {
                        "id": {"type": ["string", "null"], "format": "uuid"},
                        "name": {"type": ["string", "null"], "maxLength": 255},
                        "email": {
                            "type": ["string", "null"],
                            "format": "email",
                            "maxLength": 254,
                        },
                        "phone": {
                            "type": ["string", "null"],
                            "pattern": r"^\s*\+?[0-9 ().\-]+\s*$",
                        },
                        "chatflowid": {"type": "string", "format": "uuid"},
                        "chatId": {
                            "type": ["string", "null"],
                            "minLength": 1,
                            "maxLength": 255,
                        },
                        "createdDate": {
                            "type": ["string", "null"],
                            "format": "date-time",
                        },
                    },
                    "required": ["chatflowid"],
                },
                "BatchItem": {
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {
                                "lead": {"$ref": "#/components/schemas/Lead"}
                            },
                            "required": ["lead"],
                            "additionalProperties": False,
                        },
                        {"$ref": "#/components/schemas/Error"},
                    ]
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "statusCode": {"type": "integer"},
                        "message": {"type": "string"},
                    },
                    "required": ["statusCode", "message"],
                },
                "ValidationError": {
                    "type": "object",
                    "properties": {
                        "statusCode": {"type": "integer", "const": 422},
                        "message": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                                "required": ["field", "message"],
                            },
                        },
                    },
                    "required": ["statusCode", "message", "errors"],
                },
            },
        },
    }
