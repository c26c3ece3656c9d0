"""Opens a PostgresStore in a fresh schema per test and drops that schema afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from drivers.postgres import PostgresStore
from tests.support.services import DATABASE_URL, unique_name, unreachable

BACKENDS = ("asyncio",)  # asyncpg runs on asyncio only


async def admin_connection() -> asyncpg.Connection:
    """A plain connection for setup and teardown; skips (or fails in CI) when unreachable."""
    try:
        return await asyncpg.connect(DATABASE_URL)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        unreachable("PostgreSQL", DATABASE_URL, exc)


@asynccontextmanager
async def open_store(
    *, worker_poll_interval: float = 0.05, schema: str | None = None, **options: int
) -> AsyncIterator[PostgresStore]:
    schema = schema or unique_name("pg")
    admin = await admin_connection()
    try:
        async with await PostgresStore.connect(
            DATABASE_URL, schema=schema, worker_poll_interval=worker_poll_interval, **options
        ) as store:
            yield store
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
