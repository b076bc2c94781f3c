"""The rules of the service, shared by GraphQL and REST; no transport in sight.

Each resolver checks the token's scope, then its input, then the token's chat
flows, then touches the database; it raises only `leads_gql.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from leads_gql import db, statements
from leads_gql.auth import READ, WRITE, Principal
from leads_gql.errors import Conflict, InvalidArgument
from leads_gql.json_lists import REST_KEYS, Keys, list_sql
from leads_gql.limits import WriteLimits
from leads_gql.models import LeadCreate, StoredLead, parse_uuid
from leads_gql.telemetry import LEADS_CREATED


def _argument(name: str, value: object) -> str:
    try:
        return parse_uuid(value)
    except ValueError as exc:
        raise InvalidArgument(
            [{"field": name, "message": str(exc)}], f"{name} must be a UUID"
        ) from None


async def _leads(driver: db.Driver, sql: dict[str, str], arg: str) -> list[StoredLead]:
    if driver.sqlite:
        rows = await driver.connection.execute_fetchall(sql["sqlite"], (arg,))
    else:
        rows = await driver.connection.fetch(sql["postgresql"], arg)
    created_date = statements.created_date_out(driver.dialect)
    return [
        StoredLead(row[0], row[1], row[2], row[3], row[4], row[5], created_date(row[6]))
        for row in rows
    ]


async def leads_by_chatflow(
    *, driver: db.Driver, principal: Principal, chatflowid: object
) -> list[StoredLead]:
    """Every lead of a chat flow, oldest first (`createdDate`, then `id`)."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    principal.require_chatflow(flow)
    return await _leads(driver, statements.BY_CHATFLOW, flow)


async def leads_json(
    *,
    driver: db.Driver,
    principal: Principal,
    chatflowid: object,
    keys: Keys = REST_KEYS,
) -> str:
    """`leads_by_chatflow` as a JSON array built by the database (`[]` if none):
    the hot read, one statement and one value."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    principal.require_chatflow(flow)
    sql = list_sql(driver.dialect.name, keys)
    if driver.sqlite:
        rows = await driver.connection.execute_fetchall(sql, (flow,))
        return str(rows[0][0])
    return str(await driver.connection.fetchval(sql, flow))


async def lead(
    *, driver: db.Driver, principal: Principal, id: object
) -> StoredLead | None:
    """One lead, or None when unknown or outside the token's chat flows."""
    principal.require(READ)
    lead_id = _argument("id", id)
    rows = await _leads(driver, statements.BY_ID, lead_id)
    if not rows or not principal.can_access(rows[0].chatflowid):
        return None
    return rows[0]


async def _insert(driver: db.Driver, new: StoredLead) -> bool:
    """Insert at the driver; False when the id is already stored."""
    created_date = statements.created_date_in(driver.dialect)(new.created_date)
    values = (
        new.id, new.name, new.email, new.phone, new.chatflowid, new.chat_id,
        created_date,
    )  # fmt: skip
    if driver.sqlite:
        sql = statements.INSERT["sqlite"]
        return bool(await driver.connection.execute_fetchall(sql, values))
    status = await driver.connection.execute(statements.INSERT["postgresql"], *values)
    return str(status) == "INSERT 0 1"


async def create_lead(
    *,
    driver: db.Driver,
    principal: Principal,
    data: Mapping[str, object],
    limits: WriteLimits | None = None,
) -> StoredLead:
    """Store a lead; the same `id` with the same content returns the stored one
    (to a caller without `leads:read`, only the contact fields it sent).

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
    async with db.writing(driver.engine):
        inserted = await _insert(driver, new)
    if inserted:
        LEADS_CREATED.inc()
        return new
    (stored,) = await _leads(driver, statements.BY_ID, new.id)
    if not request.matches(stored):
        raise Conflict()
    if READ not in principal.scopes:
        # A caller that may not read (a widget's write-only token, a public
        # visitor) must not read a stored lead by retrying its id.
        return request.as_sent(stored)
    return stored
