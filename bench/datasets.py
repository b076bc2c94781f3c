"""Benchmark datasets: deterministic leads, loaded in bulk.

A dataset of N leads over F chat flows (N / F = 100 leads a flow). Lead i belongs to
flow i % F and was created at BASE + i seconds, so the leads of one flow are spread
over the whole table, as they are when many chat flows collect leads at once (the
worst layout for a list: one table page per lead, not one page per flow).

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


def load_sqlite(path: str, n_leads: int, n_flows: int) -> float:
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
                for r in rows(n_leads, n_flows)
            ),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - start


async def load_postgres(dsn: str, n_leads: int, n_flows: int) -> float:
    """COPY the dataset into a migrated PostgreSQL database; return the seconds."""
    import asyncpg

    start = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "lead", records=rows(n_leads, n_flows), columns=list(COLUMNS)
        )
        await conn.execute("VACUUM ANALYZE lead")
    finally:
        await conn.close()
    return time.perf_counter() - start
