"""The rules of the service, shared by GraphQL and REST; no transport in sight.

Each resolver checks the token's scope, then its input, then the token's chat
flows, then touches the database; it raises only `leads_gql.errors`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Dialect, Row, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from leads_gql import db
from leads_gql.auth import READ, WRITE, Principal
from leads_gql.errors import Conflict, InvalidArgument
from leads_gql.json_lists import REST_KEYS, Keys, list_sql
from leads_gql.limits import WriteLimits
from leads_gql.models import Lead, LeadCreate, LeadRow, NewLead, parse_uuid
from leads_gql.telemetry import LEADS_CREATED

# Reads go through Core rows (no ORM identity map): the same attributes, less work.
LEAD: Table = Lead.metadata.tables["lead"]

# The hot write, in each driver's own dialect: one constant statement, prepared
# once per connection (asyncpg) and bound with plain values. RETURNING tells an
# insert from a skipped duplicate in the same round trip on SQLite (3.35+).
_COLUMNS = ("id", "name", "email", "phone", "chatflowid", "chat_id", "created_date")
assert set(_COLUMNS) == set(LEAD.c.keys()), "the INSERT must name every column"
_INSERT = "INSERT INTO lead ({}) VALUES ({{}}) ON CONFLICT (id) DO NOTHING".format(
    ", ".join(_COLUMNS)
)
_INSERT_SQLITE = _INSERT.format(", ".join("?" * len(_COLUMNS))) + " RETURNING 1"
_INSERT_POSTGRES = _INSERT.format(
    ", ".join(f"${n}" for n in range(1, len(_COLUMNS) + 1))
)


def _argument(name: str, value: object) -> str:
    try:
        return parse_uuid(value)
    except ValueError as exc:
        raise InvalidArgument(
            [{"field": name, "message": str(exc)}], f"{name} must be a UUID"
        ) from None


async def leads_by_chatflow(
    *, connection: AsyncConnection, principal: Principal, chatflowid: object
) -> Sequence[Row[Any]]:
    """Every lead of a chat flow, oldest first (`createdDate`, then `id`)."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    principal.require_chatflow(flow)
    result = await connection.execute(
        select(LEAD)
        .where(LEAD.c.chatflowid == flow)
        .order_by(LEAD.c.created_date, LEAD.c.id)
    )
    return result.all()


async def leads_json(
    *,
    connection: AsyncConnection,
    principal: Principal,
    chatflowid: object,
    keys: Keys = REST_KEYS,
) -> str:
    """`leads_by_chatflow` as a JSON array built by the database (`[]` if none).

    The hot read: a bare connection, straight to the driver, one round trip."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    principal.require_chatflow(flow)
    driver: Any = (await connection.get_raw_connection()).driver_connection
    sql = list_sql(connection.dialect.name, keys)
    if connection.dialect.name == "sqlite":
        rows = await driver.execute_fetchall(sql, (flow,))
        return str(rows[0][0])
    return str(await driver.fetchval(sql, flow))


async def lead(
    *, connection: AsyncConnection, principal: Principal, id: object
) -> Row[Any] | None:
    """One lead, or None when unknown or outside the token's chat flows."""
    principal.require(READ)
    lead_id = _argument("id", id)
    row = (await connection.execute(select(LEAD).where(LEAD.c.id == lead_id))).first()
    if row is None or not principal.can_access(row.chatflowid):
        return None
    return row


async def _insert(connection: AsyncConnection, new: NewLead) -> bool:
    """Insert at the driver; False when the id is already stored."""
    dialect = connection.dialect
    created = _created_date_bind(dialect)(new.created_date)
    values = (new.id, new.name, new.email, new.phone, new.chatflowid, new.chat_id)
    driver: Any = (await connection.get_raw_connection()).driver_connection
    if dialect.name == "sqlite":
        return bool(await driver.execute_fetchall(_INSERT_SQLITE, (*values, created)))
    return str(await driver.execute(_INSERT_POSTGRES, *values, created)) == "INSERT 0 1"


@functools.lru_cache(maxsize=16)
def _created_date_bind(dialect: Dialect) -> Callable[[Any], Any]:
    """What the column type would send to this driver (naive UTC text on SQLite)."""
    processor = LEAD.c.created_date.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


async def create_lead(
    *,
    connection: AsyncConnection,
    principal: Principal,
    data: Mapping[str, Any],
    limits: WriteLimits | None = None,
) -> LeadRow:
    """Store a lead; the same `id` with the same content returns the stored one.

    The insert comes first and skips an existing id (ON CONFLICT DO NOTHING), so
    concurrent creates of one id store one row and never fail on the key. The
    connection is in autocommit: the INSERT is its own transaction.
    """
    principal.require(WRITE)
    if limits is not None:
        limits.check(
            subject=principal.sub, address=principal.address, public=principal.public
        )
    request = LeadCreate.parse(data)
    principal.require_chatflow(request.chatflowid)
    new = request.to_lead(now=datetime.now(UTC))
    async with db.writing(connection):
        inserted = await _insert(connection, new)
    if inserted:
        LEADS_CREATED.inc()
        return new
    stored = (await connection.execute(select(LEAD).where(LEAD.c.id == new.id))).one()
    if not request.matches(stored):
        raise Conflict()
    return stored
