"""The rules of the service, shared by GraphQL and REST; no transport in sight.

Each resolver checks the token's scope, then its input, then the token's chat
flows, then touches the database; it raises only `leads_gql.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from leads_gql import db
from leads_gql.auth import READ, WRITE, Principal
from leads_gql.errors import Conflict, InvalidArgument
from leads_gql.json_lists import REST_KEYS, Keys, list_sql
from leads_gql.limits import WriteLimits
from leads_gql.models import Lead, LeadCreate, LeadRow, parse_uuid
from leads_gql.telemetry import LEADS_CREATED

# Reads go through Core rows (no ORM identity map): the same attributes, less work.
LEAD: Table = Lead.metadata.tables["lead"]


# Built once: a create only binds its values.
_INSERT = {
    "sqlite": sqlite.insert(LEAD).on_conflict_do_nothing(index_elements=["id"]),
    "postgresql": postgresql.insert(LEAD).on_conflict_do_nothing(index_elements=["id"]),
}


def _argument(name: str, value: object) -> str:
    try:
        return parse_uuid(value)
    except ValueError as exc:
        raise InvalidArgument(
            [{"field": name, "message": str(exc)}], f"{name} must be a UUID"
        ) from None


async def leads_by_chatflow(
    *, session: AsyncSession, principal: Principal, chatflowid: object
) -> Sequence[Row[Any]]:
    """Every lead of a chat flow, oldest first (`createdDate`, then `id`)."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    principal.require_chatflow(flow)
    result = await session.execute(
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
    *, session: AsyncSession, principal: Principal, id: object
) -> Row[Any] | None:
    """One lead, or None when unknown or outside the token's chat flows."""
    principal.require(READ)
    lead_id = _argument("id", id)
    row = (await session.execute(select(LEAD).where(LEAD.c.id == lead_id))).first()
    if row is None or not principal.can_access(row.chatflowid):
        return None
    return row


async def create_lead(
    *,
    session: AsyncSession,
    principal: Principal,
    data: Mapping[str, Any],
    limits: WriteLimits | None = None,
) -> LeadRow:
    """Store a lead; the same `id` with the same content returns the stored one.

    The insert comes first and skips an existing id (ON CONFLICT DO NOTHING), so
    concurrent creates of one id store one row and never fail on the key.
    """
    principal.require(WRITE)
    if limits is not None:
        limits.check(
            subject=principal.sub, address=principal.address, public=principal.public
        )
    request = LeadCreate.parse(data)
    principal.require_chatflow(request.chatflowid)
    new = request.to_lead(now=datetime.now(UTC))
    statement = _INSERT[session.get_bind().dialect.name]
    async with db.writing(session):
        result = await session.execute(statement, new.model_dump())
        inserted = result.rowcount == 1  # type: ignore[attr-defined]
        stored = None
        if not inserted:
            stored = (
                await session.execute(select(LEAD).where(LEAD.c.id == new.id))
            ).one()
        await session.commit()
    if stored is None:
        LEADS_CREATED.inc()
        return new
    if not request.matches(stored):
        raise Conflict()
    return stored
