"""Reading request bodies: size first, then media type, then strict JSON."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from leads_gql.config import MAX_BODY_BYTES
from leads_gql.errors import (
    BadRequest,
    InvalidJSON,
    PayloadTooLarge,
    UnsupportedMediaType,
)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidJSON("The body is not valid JSON: an object has a duplicate key")
    return obj


def _constant(name: str) -> Any:
    raise InvalidJSON(f"The body is not valid JSON: {name} is not a JSON value")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSON("The body is not valid JSON: a number is out of range")
    return value


# A `\u` escape of a UTF-16 surrogate (D800-DFFF): json.loads turns a pair into
# one character, and leaves a lone one as a string that cannot be encoded again.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]  # a stack, not recursion: the value may be deeply nested
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_json(body: bytes) -> Any:
    """RFC 8259 JSON in UTF-8: no duplicate keys, NaN, Infinity, absurd depth, or
    lone surrogates (text that no UTF-8 answer, log line or database can hold)."""
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_float=_float,
        )
    except InvalidJSON:
        raise
    except UnicodeDecodeError:
        raise InvalidJSON("The body is not valid JSON: it is not UTF-8") from None
    except RecursionError:
        raise InvalidJSON(
            "The body is not valid JSON: it is nested too deeply"
        ) from None
    except ValueError as exc:
        raise InvalidJSON(f"The body is not valid JSON: {exc}") from None
    # Only bodies that escape a surrogate are walked: the common body costs a scan.
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(value):
        raise InvalidJSON("The body is not valid JSON: a string holds a lone surrogate")
    return value


def is_json_media_type(content_type: str | None) -> bool:
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip(
            '"'
        ).lower() not in {
            "utf-8",
            "utf8",
        }:
            return False
    return True


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The parsed body: 413 past `limit` bytes (before parsing), 415, then 400."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidJSON("Content-Length is not a number")
        if int(length) > limit:
            raise PayloadTooLarge(f"The request body is over {limit // 1024} KiB")
    if not is_json_media_type(request.headers.get("content-type")):
        raise UnsupportedMediaType()
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is over {limit // 1024} KiB")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left mid-body: nothing to store, nobody to answer.
        raise BadRequest("The client disconnected before the body was sent") from None
    return parse_json(b"".join(chunks))
