"""Benchmark datasets: deterministic leads, loaded in bulk.

A dataset of N leads over F chat flows (N / F = 100 leads a flow). Lead i belongs to
flow i % F and was created at BASE + i seconds, so the leads of one flow are spread
over the whole table, as they are when many chat flows collect leads at once (the
worst layout for a list: one table page per lead, not one page per flow).

One large flow may be added (`big`, bench/pages.py): `big` more leads of one flow,
each created between two leads of the rest (every `N / big`-th), so that they too
are spread over the whole table, or (layout "oldest") all created before the rest;
1 % of them are named "Ada Lovelace" (the search term `SEARCH_TERM`, found nowhere
else).

The schema comes from `leads-gql migrate` (the service's own Alembic migration); the
rows go in with one bulk statement: SQLite `executemany` in one transaction,
PostgreSQL `COPY` through asyncpg.
"""

from __future__ import annotations

import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

BASE = datetime(2024, 1, 1, tzinfo=UTC)
COLUMNS = ("id", "name", "email", "phone", "chatflowid", "chat_id", "created_date")


def flow_id(k: int) -> str:
    """The k-th listed chat flow (the Lua scripts compute the same ids)."""
    return f"00000000-0000-4000-8000-{k:012x}"


def create_flow_id(k: int) -> str:
    """Flows that the create scenarios write to (never listed)."""
    return f"00000000-0000-4000-9000-{k:012x}"


def big_flow_id() -> str:
    """The one large flow (bench/pages.py)."""
    return "00000000-0000-4000-a000-000000000000"


SEARCH_TERM = "lovelace"  # 1 % of the large flow's leads, no other lead


def rows(n_leads: int, n_flows: int, seed: int = 5) -> Iterator[tuple[Any, ...]]:
    """(id, name, email, phone, chatflowid, chat_id, created_date) per lead."""
    rng = random.Random(seed)
    flows = [flow_id(k) for k in range(n_flows)]
    for i in range(n_leads):
        yield (
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            f"Lead {i}",
            f"lead{i}@example.com",
            f"+1 555 {i:07d}",
            flows[i % n_flows],
            f"chat-{i:08d}",
            BASE + timedelta(seconds=i),
        )


def _big_lead(rng: random.Random, j: int, created: datetime) -> tuple[Any, ...]:
    famous = j % 100 == 42
    return (
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        f"Ada Lovelace {j}" if famous else f"Visitor {j}",
        f"ada.lovelace{j}@example.org" if famous else f"visitor{j}@example.org",
        f"+44 7700 {j:06d}",
        big_flow_id(),
        f"big-{j:08d}",
        created,
    )


LAYOUTS = ("interleaved", "oldest")


def rows_with_big_flow(
    n_leads: int, n_flows: int, big: int, seed: int = 5, layout: str = "interleaved"
) -> Iterator[tuple[Any, ...]]:
    """`rows(n_leads, n_flows)` with `big` leads of `big_flow_id()`, in time order.

    interleaved: lead j of the large flow half a second after lead
    j * N / big + N / big // 2 of the rest, so they are spread over the table;
    oldest: the large flow's leads, one a second, all before every other lead (a
    flow that collected before the others started: together on disk, and at the
    far end of a `created_date` index from the newest leads).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    rng = random.Random(seed + 1)
    if big > 0 and layout == "oldest":
        for j in range(big):
            yield _big_lead(rng, j, BASE - timedelta(seconds=big - j))
        big = 0
    if big <= 0:
        yield from rows(n_leads, n_flows, seed)
        return
    step = max(1, n_leads // big)
    j = 0
    for i, row in enumerate(rows(n_leads, n_flows, seed)):
        yield row
        if i % step == step // 2 and j < big:
            yield _big_lead(rng, j, BASE + timedelta(seconds=i, microseconds=500_000))
            j += 1


def sample_flow_json(n: int) -> list[dict[str, Any]]:
    """n leads as the service prints them (for the precomputed-JSON ceiling)."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        out.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "name": f"Lead {i * 100}",
                "email": f"lead{i * 100}@example.com",
                "phone": f"+1 555 {i * 100:07d}",
                "chatflowid": flow_id(0),
                "chatId": f"chat-{i * 100:08d}",
                "createdDate": (BASE + timedelta(seconds=i * 100)).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            }
        )
    return out


def load_sqlite(
    path: str, n_leads: int, n_flows: int, big: int = 0, layout: str = "interleaved"
) -> float:
    """Insert the dataset into a migrated SQLite file; return the seconds taken."""
    start = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # This connection only: nobody else is using the file yet.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-200000")
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO lead ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                # SQLAlchemy's SQLite DateTime storage format (naive UTC).
                (*r[:6], r[6].strftime("%Y-%m-%d %H:%M:%S.%f"))
                for r in rows_with_big_flow(n_leads, n_flows, big, layout=layout)
            ),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - start


async def load_postgres(
    dsn: str, n_leads: int, n_flows: int, big: int = 0, layout: str = "interleaved"
) -> float:
    """COPY the dataset into a migrated PostgreSQL database; return the seconds."""
    import asyncpg

    start = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "lead",
            records=rows_with_big_flow(n_leads, n_flows, big, layout=layout),
            columns=list(COLUMNS),
        )
        await conn.execute("VACUUM ANALYZE lead")
    finally:
        await conn.close()
    return time.perf_counter() - start
