"""The Postgres store's connections: the asyncpg pool, the connection held for one statement
at a time, one more attempt after a lost connection, and the schema made current at connect.

Nothing here knows what a statement does: ``Statements.query`` runs one by name and maps
asyncpg's errors to ``StorageError``.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Any, Literal

import asyncpg

from drivers._common import ErrorMap

STORE = "postgres store"
_LOCK_CLASS = 0x64757261  # first key of the schema-creation advisory lock ("dura")

# Raised when the server closed a pooled connection (restart, failover, idle kill): the pool
# replaces it on the next acquire, so an idempotent statement is worth one more attempt.
CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InternalClientError,
    asyncpg.InterfaceError,
    ConnectionError,
)
map_errors = ErrorMap(
    STORE, asyncpg.PostgresError, asyncpg.InternalClientError, OSError, *CONNECTION_LOST
)


async def _no_session_reset(connection: Any) -> None:
    """Skip asyncpg's reset on release (one more round trip per statement, which doubled a
    step's latency): pooled connections only ever run single self-contained statements, and
    LISTEN has its own connection, so there is no session state to clear."""


async def open_pool(dsn: str, min_size: int, max_size: int) -> Any:
    """An asyncpg pool on ``dsn`` whose connections are not reset on release."""
    with map_errors("connect"):
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, reset=_no_session_reset
        )


def _unusable(connection: Any) -> bool:
    """True for a held connection that closed, or that asyncpg already took back (it
    detaches a pooled connection by itself when the server closes it)."""
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        return True


async def _discard(pool: Any, connection: Any) -> None:
    """Close a suspect connection and hand it back: the pool opens a fresh one instead."""
    with contextlib.suppress(Exception):
        connection.terminate()
    with contextlib.suppress(Exception):
        await pool.release(connection)


class Statements:
    """Runs the store's statements (``sql``: text by name) on its pool."""

    def __init__(self, pool: Any, sql: dict[str, str]) -> None:
        self.pool = pool
        self.sql = sql
        self.held: Any = None  # a pooled connection kept for one statement at a time
        self._held_busy = False

    async def query(
        self,
        operation: str,
        method: Literal["execute", "fetch", "fetchrow", "fetchval"],
        *args: Any,
        statement: str | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Run one statement (by default the one named ``operation``) on a pooled connection.

        Each statement is its own transaction, so a lost connection never leaves half of it;
        re-running an idempotent one after a lost reply is safe.
        """
        sql = self.sql[statement or operation]
        with map_errors(operation):
            try:
                return await self._run(method, sql, args)
            except CONNECTION_LOST:
                # A connection was cut (a server restart, an administrator's kill): the ones
                # opened beside it are most likely cut too, and idle ones are left broken
                # without a word. Replace them all rather than fail on each in turn.
                await self.pool.expire_connections()
                if not idempotent:
                    raise
            return await self._run(method, sql, args)

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        """Run on the held connection when it is free, otherwise through the pool.

        Going through the pool costs ~40 us per statement (acquire, shielded release), a
        sixth of a whole step here; one statement at a time, the common case of a workflow's
        flushes, skips that. Concurrent statements still use the pool's other connections.
        """
        if self._held_busy or self.pool.get_max_size() < 2:
            return await getattr(self.pool, method)(sql, *args)
        self._held_busy = True
        try:
            held = self.held
            if held is None or _unusable(held):
                self.held = held = await self.pool.acquire()
            try:
                return await getattr(held, method)(sql, *args)
            except asyncpg.PostgresError:
                raise  # the server answered with an error: the connection is fine
            except BaseException:
                # Lost, or interrupted mid-statement (a cancelled call): it may be left
                # looking busy and would fail every later call, so it is retired.
                self.held = None
                await _discard(self.pool, held)
                raise
        finally:
            self._held_busy = False

    async def close(self) -> None:
        """Hand the held connection back and close the pool (waiting for calls in flight)."""
        held, self.held = self.held, None
        with map_errors("close"):
            if held is not None:
                await self.pool.release(held)
            await self.pool.close()


async def create_schema(pool: Any, schema: str, version: int, ddl: str) -> None:
    """Create or upgrade ``schema`` (quoted in ``ddl``) to ``version``, unless it is there.

    The check comes first and takes no table lock: the DDL takes strong locks on every
    table (CREATE INDEX IF NOT EXISTS locks its table even when the index exists), so a
    worker starting beside running ones would otherwise deadlock with their writes.
    Creators and upgraders serialize on an advisory lock (IF NOT EXISTS alone is not safe
    against concurrent creators). A schema of a newer version is refused.
    """
    table = f'"{schema}".schema_version'
    with map_errors("create schema"):
        async with pool.acquire() as conn:
            found = await _schema_version(conn, table)
            if found is None or found < version:
                async with conn.transaction():
                    lock_id = zlib.crc32(schema.encode()) - (1 << 31)  # signed int4
                    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_CLASS, lock_id)
                    found = await _schema_version(conn, table)
                    if found is None or found < version:
                        await conn.execute(ddl)
                        await conn.execute(f"DELETE FROM {table}")
                        await conn.execute(f"INSERT INTO {table} VALUES ($1)", version)
                        found = version
    if found > version:
        raise map_errors.failure(f"open schema {schema!r} of newer version {found}")


async def _schema_version(conn: Any, table: str) -> int | None:
    """The schema's layout version, None when the schema or its tables do not exist."""
    try:
        async with conn.transaction():  # a failed look must not abort an outer transaction
            found = await conn.fetchval(f"SELECT max(version) FROM {table}")
    except (asyncpg.InvalidSchemaNameError, asyncpg.UndefinedTableError):
        return None
    return None if found is None else int(found)
