"""The rules of the service, shared by GraphQL and REST; no transport in sight.

Each resolver checks the token's scope, then its input, then the token's chat
flows, then touches the database; it raises only `leads_gql.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from leads_gql.auth import DELETE, READ, WRITE, Principal
from leads_gql.errors import (
    Conflict,
    FieldError,
    InvalidArgument,
    InvalidInput,
    LeadsError,
    NotFound,
)
from leads_gql.limits import WriteLimits
from leads_gql.models import (
    LeadCreate,
    StoredLead,
    parse_email,
    parse_phone,
    parse_uuid,
    phone_digits,
)
from leads_gql.paging import Cursors, Filters, Order, PageRequest, Position
from leads_gql.store import bulk, db, exports, notifications, statements
from leads_gql.store.json_lists import REST_KEYS, Keys, list_sql
from leads_gql.telemetry import LEADS_CREATED, lead_deleted

EXPORT_FORMATS = ("csv", "ndjson", "json")


def _argument(name: str, value: object) -> str:
    try:
        return parse_uuid(value)
    except ValueError as exc:
        raise InvalidArgument(
            [{"field": name, "message": str(exc)}], f"{name} must be a UUID"
        ) from None


async def _fetch(driver: db.Driver, sql: str, *values: object) -> list[Any]:
    if driver.sqlite:
        return list(await driver.connection.execute_fetchall(sql, values))
    return list(await driver.connection.fetch(sql, *values))


def _stored(driver: db.Driver, rows: list[Any]) -> list[StoredLead]:
    """Rows of `statements.COLUMNS` as leads."""
    created_date = statements.created_date_out(driver.dialect)
    return [
        StoredLead(row[0], row[1], row[2], row[3], row[4], row[5], created_date(row[6]))
        for row in rows
    ]


async def _leads(driver: db.Driver, sql: dict[str, str], arg: str) -> list[StoredLead]:
    return _stored(driver, await _fetch(driver, sql[driver.dialect.name], arg))


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


async def list_leads(
    *, engine: AsyncEngine, principal: Principal, chatflowid: object
) -> bytes | AsyncIterator[bytes]:
    """The REST list: every lead of a flow as a JSON array, oldest first; the
    whole body for a flow of up to `exports.BATCH` leads (one statement), else a
    stream, so that a huge flow never sits whole in memory. NotFound if none."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    principal.require_chatflow(flow)
    sql = exports.inline_sql(engine.dialect.name)
    async with db.driver_scope(engine) as driver:
        ((body, read),) = await _fetch(driver, sql, flow)
    if read == 0:
        raise NotFound("This chat flow has no leads")
    if read <= exports.BATCH:
        return str(body).encode()
    return await _started(exports.stream(engine, flow, "json"))


async def export_leads(
    *, engine: AsyncEngine, principal: Principal, chatflowid: object, format: object
) -> AsyncIterator[bytes]:
    """Every lead of a flow in an export format (csv, ndjson, json), oldest
    first, streamed from the database. NotFound if the flow has none."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    if format not in EXPORT_FORMATS:
        message = f"format must be one of {', '.join(EXPORT_FORMATS)}"
        raise InvalidArgument([{"field": "format", "message": message}], message)
    principal.require_chatflow(flow)
    return await _started(exports.stream(engine, flow, str(format)))


async def _started(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream, its first piece already read: NotFound when there is none
    (decided before an answer starts)."""
    first = await anext(pieces, None)
    if first is None:
        raise NotFound("This chat flow has no leads")

    async def chained() -> AsyncIterator[bytes]:
        yield first
        async for piece in pieces:
            yield piece

    return chained()


def subscribe_leads(
    *,
    principal: Principal,
    feed: notifications.Feed,
    chatflowid: object,
    on_end: Callable[[notifications.Gone], None] | None = None,
) -> notifications.Subscription:
    """The leads stored in a flow from now on, as they are stored (`leadCreated`);
    `on_end` learns why the server ended it (the feed was lost, the subscriber
    fell behind, the server is going away)."""
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    principal.require_chatflow(flow)
    return feed.subscribe(flow, on_end)


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


async def create_lead(
    *,
    engine: AsyncEngine,
    principal: Principal,
    data: Mapping[str, object],
    limits: WriteLimits | None = None,
) -> StoredLead:
    """Store a lead; the same `id` with the same content returns the stored one
    (to a caller without `leads:read`, only the contact fields it sent).

    The insert comes first and skips an existing id (ON CONFLICT DO NOTHING), so
    concurrent creates of one id store one row and never fail on the key. It is
    committed with the creates that arrive beside it (`bulk.GroupCommit`) before
    this returns; no connection is held while it waits.
    """
    principal.require(WRITE)
    if limits is not None:
        limits.check(
            subject=principal.sub, address=principal.address, public=principal.public
        )
    request = LeadCreate.parse(data)
    principal.require_chatflow(request.chatflowid)
    new = request.to_lead(now=datetime.now(UTC))
    while True:
        if await bulk.group_commit(engine).insert(engine, new):
            LEADS_CREATED.inc()
            return new
        async with db.driver_scope(engine) as driver:
            found = await _leads(driver, statements.BY_ID, new.id)
        if found:
            return _retried(request, found[0], principal)
        # Deleted between the two statements: store it anew.


def _retried(
    request: LeadCreate, stored: StoredLead, principal: Principal
) -> StoredLead:
    """The answer to a create whose id is already stored: the stored lead when
    every field sent matches it (a safe retry), else Conflict."""
    if not request.matches(stored):
        raise Conflict()
    if READ not in principal.scopes:
        # A caller that may not read (a widget's write-only token, a public
        # visitor) must not read a stored lead by retrying its id.
        return request.as_sent(stored)
    return stored


# The most leads one batch create may carry (createLeads, POST /leads/batch).
MAX_BATCH = 1000


async def create_leads(
    *,
    engine: AsyncEngine,
    principal: Principal,
    items: Sequence[object],
    limits: WriteLimits | None = None,
) -> list[StoredLead | LeadsError]:
    """Store many leads in one statement; each item, in order, is answered with
    its lead (stored now, or a retry of a stored one, as `create_lead`) or its
    own error. An item's error never fails the others; the batch as a whole is
    refused only for the caller's scope, its size or the write limits (a batch
    counts as its number of leads)."""
    principal.require(WRITE)
    if not 1 <= len(items) <= MAX_BATCH:
        message = f"give 1 to {MAX_BATCH} leads"
        raise InvalidArgument([{"field": "input", "message": message}], message)
    if limits is not None:
        limits.check(
            subject=principal.sub,
            address=principal.address,
            public=principal.public,
            count=len(items),
        )
    now = datetime.now(UTC)
    answers: list[StoredLead | LeadsError | None] = []
    wanted: dict[int, tuple[LeadCreate, StoredLead]] = {}
    for index, data in enumerate(items):
        try:
            if not isinstance(data, Mapping):
                raise InvalidInput(
                    [{"field": "input", "message": "must be a JSON object"}],
                    "The lead is invalid",
                )
            request = LeadCreate.parse(data)
            principal.require_chatflow(request.chatflowid)
        except LeadsError as error:
            answers.append(error)
            continue
        answers.append(None)
        wanted[index] = (request, request.to_lead(now=now))
    created = 0
    async with db.driver_scope(engine) as driver:
        while wanted:
            batch = list(wanted.items())
            async with db.writing(engine):
                stored = await bulk.insert_many(driver, [new for _, (_, new) in batch])
            skipped = [
                new.id
                for (_, (_, new)), was in zip(batch, stored, strict=True)
                if not was
            ]
            found = await bulk.stored_by_ids(driver, skipped)
            for (index, (request, new)), was in zip(batch, stored, strict=True):
                if was:
                    answers[index] = new
                    created += 1
                elif new.id in found:
                    try:
                        answers[index] = _retried(request, found[new.id], principal)
                    except Conflict as error:
                        answers[index] = error
                else:  # deleted between the two statements: store it anew
                    continue
                del wanted[index]
    LEADS_CREATED.inc(created)
    return [answer for answer in answers if answer is not None]  # none is left


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of a flow's leads, in the order asked for, with their cursors."""

    flow: str
    filters: Filters
    leads: list[StoredLead]
    cursors: list[str]
    has_next: bool
    has_previous: bool


def _narrowed(
    driver: db.Driver, flow: str, filters: Filters
) -> tuple[tuple[str, ...], list[object]]:
    """The conditions (and their values) of a flow within the filters."""
    instant = statements.created_date_in(driver.dialect)
    conditions: list[str] = ["flow"]
    values: list[object] = [flow]
    for name, value in (
        ("search", filters.like),
        ("since", filters.created_after),
        ("until", filters.created_before),
    ):
        if value is not None:
            conditions.append(name)
            values.append(instant(value) if isinstance(value, datetime) else value)
    return tuple(conditions), values


@contextlib.asynccontextmanager
async def _planned_per_call(driver: db.Driver, filters: Filters) -> AsyncIterator[None]:
    """A search on PostgreSQL is planned with its values: a prepared statement's
    generic plan cannot know how large the flow is or how rare the term, and
    intersects the flow's whole index with the trigram index (16 ms instead of
    4 ms on a flow of 100,000 leads). SET LOCAL keeps it to this transaction."""
    if driver.sqlite or filters.search is None:
        yield
        return
    async with driver.connection.transaction(readonly=True):
        await driver.connection.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield


async def leads_page(
    *,
    driver: db.Driver,
    principal: Principal,
    cursors: Cursors,
    chatflowid: object,
    first: object = None,
    after: object = None,
    last: object = None,
    before: object = None,
    search: object = None,
    created_after: object = None,
    created_before: object = None,
    order: Order = Order.OLDEST_FIRST,
) -> Page:
    """A page of a flow's leads, cut by position (keyset), never by offset.

    Forward: the `size` leads after `after` in `order`; backward: the `size`
    leads just before `before`, still listed in `order`. One more row than asked
    tells whether the page has a neighbour on its far side; an EXISTS tells about
    the near side (the cursor's own side).
    """
    principal.require(READ)
    flow = _argument("chatflowid", chatflowid)
    request = PageRequest.parse(
        cursors=cursors,
        flow=flow,
        first=first,
        after=after,
        last=last,
        before=before,
        search=search,
        created_after=created_after,
        created_before=created_before,
        order=order,
    )
    principal.require_chatflow(flow)
    conditions, values = _narrowed(driver, flow, request.filters)
    instant = statements.created_date_in(driver.dialect)
    newest_first = request.order is Order.NEWEST_FIRST
    cursor = request.after if request.forward else request.before
    # The page lies past the cursor (`beyond`); what `near` matches lies on the
    # cursor's side, in the table's ascending (createdDate, id) order. Paging
    # forward through newest-first, or backward through oldest-first, goes down.
    going_down = newest_first == request.forward
    beyond, near = ("<", ">=") if going_down else (">", "<=")
    page_conditions, page_values = conditions, list(values)
    if cursor is not None:
        page_conditions = (*conditions, beyond)
        page_values += [instant(cursor.created_date), cursor.id]
    # Rows are read from the cursor outwards; a backward page is then turned
    # around to be listed in the order asked for.
    sql = statements.page_rows(driver.dialect.name, page_conditions, going_down)
    near_side = False
    async with _planned_per_call(driver, request.filters):
        rows = await _fetch(driver, sql, *page_values, request.size + 1)
        if cursor is not None:
            exists = statements.page_exists(driver.dialect.name, (*conditions, near))
            near_values = [*values, instant(cursor.created_date), cursor.id]
            near_side = bool((await _fetch(driver, exists, *near_values))[0][0])
    more = len(rows) > request.size
    leads = _stored(driver, rows[: request.size])
    if not request.forward:
        leads.reverse()
    return Page(
        flow=flow,
        filters=request.filters,
        leads=leads,
        cursors=[
            cursors.make(flow, Position(lead.created_date, lead.id)) for lead in leads
        ],
        has_next=more if request.forward else near_side,
        has_previous=near_side if request.forward else more,
    )


async def count_leads(*, driver: db.Driver, page: Page) -> int:
    """`totalCount`: the leads of the page's flow within its filters."""
    conditions, values = _narrowed(driver, page.flow, page.filters)
    sql = statements.page_count(driver.dialect.name, conditions)
    async with _planned_per_call(driver, page.filters):
        return int((await _fetch(driver, sql, *values))[0][0])


# --- Deleting leads: deleteLead, eraseContact, retention ----------------------
# Each deleted lead is logged (who, its id and flow, why; never contact data) and
# counted, once its DELETE has committed: the log tells what was deleted.

RETENTION = "retention"


async def delete_lead(
    *, driver: db.Driver, principal: Principal, id: object
) -> StoredLead | None:
    """Delete one lead and return it; None when unknown or outside the token's
    chat flows (no existence oracle)."""
    principal.require(DELETE)
    lead_id = _argument("id", id)
    found = await _leads(driver, statements.BY_ID, lead_id)
    if not found or not principal.can_access(found[0].chatflowid):
        return None
    async with db.writing(driver.engine):
        rows = await _fetch(
            driver,
            statements.DELETE_LEAD[driver.dialect.name],
            lead_id,
            found[0].chatflowid,
        )
    if not rows:  # deleted by someone else in the meantime
        return None
    (deleted,) = _stored(driver, rows)
    lead_deleted(
        sub=principal.sub,
        lead_id=deleted.id,
        chatflowid=deleted.chatflowid,
        cause="deleteLead",
    )
    return deleted


def _contact(
    name: str, value: object, parse: Callable[[object], str], errors: list[FieldError]
) -> str | None:
    """An argument of eraseContact, parsed as a lead's field; None when absent."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        errors.append({"field": name, "message": "must not be blank"})
        return None
    try:
        return parse(value)
    except ValueError as exc:
        errors.append({"field": name, "message": str(exc)})
        return None


async def erase_contact(
    *,
    driver: db.Driver,
    principal: Principal,
    email: object = None,
    phone: object = None,
) -> int:
    """Delete every lead, within the token's chat flows (all of them for a token
    without the claim), whose email equals `email` in any letter case or whose
    phone has the digits of `phone`; return how many.

    One DELETE ... RETURNING: atomic on its own, and it names what it deleted.
    """
    principal.require(DELETE)
    errors: list[FieldError] = []
    wanted_email = _contact("email", email, parse_email, errors)
    wanted_phone = _contact("phone", phone, parse_phone, errors)
    if not errors and wanted_email is None and wanted_phone is None:
        errors = [
            {"field": field, "message": "give an email, a phone or both"}
            for field in ("email", "phone")
        ]
    if errors:
        raise InvalidInput(errors, "The contact to erase is invalid")
    values: list[object] = [wanted_email, phone_digits(wanted_phone)]
    sql = statements.ERASE
    if principal.chatflows is not None:
        sql = statements.ERASE_IN_FLOWS
        flows = sorted(principal.chatflows)
        values.append(json.dumps(flows) if driver.sqlite else flows)
    async with db.writing(driver.engine):
        rows = await _fetch(driver, sql[driver.dialect.name], *values)
    for lead_id, flow in rows:
        lead_deleted(
            sub=principal.sub, lead_id=lead_id, chatflowid=flow, cause="eraseContact"
        )
    return len(rows)


async def delete_expired(*, driver: db.Driver, before: datetime, limit: int) -> int:
    """Retention, one batch: delete up to `limit` of the oldest leads created
    before `before` (one short transaction); return how many. Logged with
    `retention` as the sub."""
    instant = statements.created_date_in(driver.dialect)(before)
    async with db.writing(driver.engine):
        rows = await _fetch(
            driver, statements.EXPIRED_BATCH[driver.dialect.name], instant, limit
        )
    for lead_id, flow in rows:
        lead_deleted(sub=RETENTION, lead_id=lead_id, chatflowid=flow, cause=RETENTION)
    return len(rows)


async def count_expired(*, driver: db.Driver, before: datetime) -> int:
    """How many leads were created before `before` (what retention would delete)."""
    instant = statements.created_date_in(driver.dialect)(before)
    sql = statements.COUNT_EXPIRED[driver.dialect.name]
    return int((await _fetch(driver, sql, instant))[0][0])
