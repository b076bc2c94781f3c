"""Pages of a flow's leads: the arguments of a `leads` request, and its cursors.

A page is cut by position in (`createdDate`, `id`) order (keyset), never by
offset. A cursor names a position in one chat flow: the instant and the id of a
lead, signed together with the flow, so that a cursor of another flow, or one
the server did not make, is refused rather than followed somewhere else.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import struct
import uuid
from datetime import UTC, datetime, timedelta
from enum import Enum

from leads_gql.errors import FieldError, InvalidArgument
from leads_gql.models import parse_datetime, parse_text

DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_SEARCH = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# version, microseconds since the epoch, the lead's id; then the signature.
_POSITION = struct.Struct(">Bq16s")
_VERSION = 1
_MAC_BYTES = 16


class Order(Enum):
    OLDEST_FIRST = "OLDEST_FIRST"
    NEWEST_FIRST = "NEWEST_FIRST"


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where a lead stands in a flow: its `createdDate`, then its id."""

    created_date: datetime
    id: str


class Cursors:
    """Signs and reads cursors with a key of the deployment's own.

    Every instance derives the same key from the configured token key, so a
    cursor made by one instance is read by any other.
    """

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"leads-gql cursors v1", hashlib.sha256).digest()

    def _mac(self, flow: str, payload: bytes) -> bytes:
        digest = hmac.new(self._key, flow.encode() + payload, hashlib.sha256)
        return digest.digest()[:_MAC_BYTES]

    def make(self, flow: str, position: Position) -> str:
        micros = (position.created_date - _EPOCH) // timedelta(microseconds=1)
        payload = _POSITION.pack(_VERSION, micros, uuid.UUID(position.id).bytes)
        token = payload + self._mac(flow, payload)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def read(self, flow: str, cursor: object, argument: str) -> Position:
        """The position a cursor names in `flow`, or BAD_USER_INPUT."""
        refused = InvalidArgument(
            [{"field": argument, "message": "is not a cursor of this chat flow"}],
            f"{argument} is not a cursor of this chat flow",
        )
        if not isinstance(cursor, str) or len(cursor) > 64:
            raise refused
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise refused from None
        payload, mac = raw[: _POSITION.size], raw[_POSITION.size :]
        if len(payload) != _POSITION.size or not hmac.compare_digest(
            mac, self._mac(flow, payload)
        ):
            raise refused
        version, micros, lead_id = _POSITION.unpack(payload)
        if version != _VERSION:
            raise refused
        try:
            created = _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            raise refused from None
        return Position(created, str(uuid.UUID(bytes=lead_id)))


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """What narrows a flow's leads; every part optional, all combined with AND."""

    search: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive

    @property
    def like(self) -> str | None:
        """The search as a LIKE pattern, `%`, `_` and `\\` taken literally."""
        if self.search is None:
            return None
        escaped = (
            self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        )
        return f"%{escaped}%"


@dataclasses.dataclass(frozen=True, slots=True)
class PageRequest:
    """Validated paging arguments: `size` leads after `after` (forward), or just
    before `before` (backward), in `order`."""

    size: int
    forward: bool
    order: Order
    after: Position | None
    before: Position | None
    filters: Filters

    @classmethod
    def parse(
        cls,
        *,
        cursors: Cursors,
        flow: str,
        first: object = None,
        after: object = None,
        last: object = None,
        before: object = None,
        search: object = None,
        created_after: object = None,
        created_before: object = None,
        order: Order = Order.OLDEST_FIRST,
    ) -> PageRequest:
        errors: list[FieldError] = []

        def bad(field: str, message: str) -> None:
            errors.append({"field": field, "message": message})

        for name, value in (("first", first), ("last", last)):
            if value is not None and not (
                isinstance(value, int) and 0 <= value <= MAX_PAGE
            ):
                bad(name, f"must be a whole number from 0 to {MAX_PAGE}")
        if first is not None and last is not None:
            bad("last", "cannot be given with first")
        if last is not None and after is not None:
            bad("after", "cannot be given with last (use before)")
        if first is not None and before is not None:
            bad("before", "cannot be given with first (use after)")
        positions: dict[str, Position | None] = {"after": None, "before": None}
        for name, value in (("after", after), ("before", before)):
            if value is not None:
                try:
                    positions[name] = cursors.read(flow, value, name)
                except InvalidArgument as exc:
                    errors.extend(exc.errors)
        text = None
        if search is not None:
            try:
                text = parse_text(search, MAX_SEARCH) or None  # "" searches nothing
            except ValueError as exc:
                bad("search", str(exc))
        instants: dict[str, datetime | None] = {}
        for name, value in (
            ("createdAfter", created_after),
            ("createdBefore", created_before),
        ):
            instants[name] = None
            if value is not None:
                try:
                    instants[name] = parse_datetime(value)
                except ValueError as exc:
                    bad(name, str(exc))
        if errors:
            message = "; ".join(f"{e['field']} {e['message']}" for e in errors)
            raise InvalidArgument(errors, message)
        forward = last is None and before is None
        size = first if forward else last
        return cls(
            size=size if isinstance(size, int) else DEFAULT_PAGE,
            forward=forward,
            order=order,
            after=positions["after"],
            before=positions["before"],
            filters=Filters(text, instants["createdAfter"], instants["createdBefore"]),
        )
