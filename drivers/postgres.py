"""PostgreSQL driver and store (asyncpg): durable, shared by workers on many machines.

Every workflow's namespace is the rows of one ``kv`` table with that ``workflow_id``; keys and
values are ``bytea``, which compares bytewise, so ``ORDER BY key`` is the byte order drivers
must give whatever the database's collation. Tables live in one schema (``durable`` by
default), created idempotently at connect:

================  ===============================================================
table             rows
================  ===============================================================
schema_version    one row: the layout version (SCHEMA_VERSION), for upgrades
kv                (workflow_id, key) -> value
alarms            workflow_id -> wake_at (indexed by wake_at)
leases            workflow_id -> owner, token, expires_at (token only ever grows)
workflows         workflow_id -> registered name, state (indexed by state)
================  ===============================================================

Each write is one statement, so one round trip and one implicit transaction, and so are the
worker protocol's compound acts: ``create_workflow`` (the index row, and only if it is new the
namespace, the alarm and an eager start's lease), a claim (which reads the claimed namespaces
too) and ``finish_run`` (a run's last writes, its index state, the settled alarm and the
released lease). Fenced writes (``PostgresStore.fenced_driver``, ``finish_run``) lock the
lease row ``FOR SHARE`` in a CTE of that same statement and gate every modification on it,
so a stale worker writes nothing. Wake-ups use LISTEN/NOTIFY on one dedicated connection per
store (``_postgres_listen``): ``<schema>.messages`` (payload: the workflow id) for live runs
and ``<schema>.alarms`` for idle workers. Lease expiry is judged on client clocks
(``time.time()``), like the other stores.
"""

from __future__ import annotations

import contextlib
import re
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Self

import asyncpg

from drivers import _postgres_sql as queries
from drivers._common import (
    ErrorMap,
    Lifecycle,
    Writes,
    check_writes,
    latest_writes,
    prefix_end,
    store_url,
)
from drivers._postgres_listen import Listener, payload
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.store import Lease, Registration, creation_rows

STORE = "postgres store"
SCHEMA_VERSION = 2
"""The layout version. Bump it with every change to ``_postgres_sql.DDL``: a store at an
older version runs the (idempotent) DDL again when it connects, one at this version does
not. 2: the claim is the ``claim_due`` function."""
MAX_VALUE_BYTES = 64 * 1024 * 1024
"""Largest value accepted. bytea allows 1 GB, but a value this big already means a step
output that belongs in blob storage, and asyncpg holds every value of a batch in memory."""
MAX_KEY_BYTES = 2048
"""Keys sit in a B-tree primary key whose entries must stay under ~2.7 kB with the id."""
DEFAULT_SCHEMA = "durable"
# Channel names derive from the schema and must fit NAMEDATALEN (63 bytes), hence 48.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
_LOCK_CLASS = 0x64757261  # first key of the schema-creation advisory lock ("dura")


# Raised when the server closed a pooled connection (restart, failover, idle kill): the pool
# replaces it on the next acquire, so an idempotent statement is worth one more attempt.
_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InternalClientError,
    asyncpg.InterfaceError,
    ConnectionError,
)
_map_errors = ErrorMap(
    STORE, asyncpg.PostgresError, asyncpg.InternalClientError, OSError, *_CONNECTION_LOST
)


def _split(writes: Writes) -> tuple[dict[bytes, bytes], list[bytes]]:
    """A batch as its upserts and its deletes, each key once (its last write wins)."""
    check_writes(STORE, writes, MAX_KEY_BYTES, MAX_VALUE_BYTES)
    latest = latest_writes(writes)
    upserts = {key: value for key, value in latest.items() if value is not None}
    return upserts, [key for key, value in latest.items() if value is None]


class PostgresDriver:
    """One workflow's namespace; with a ``lease``, every write is fenced by its token."""

    def __init__(self, store: PostgresStore, workflow_id: str, lease: Lease | None = None) -> None:
        self.worker_poll_interval = store.worker_poll_interval
        self._store = store
        self._workflow_id = workflow_id
        self._lease = lease

    async def _write(self, operation: str, statement: str, *args: Any) -> None:
        token, now = (self._lease.token, time.time()) if self._lease else (None, None)
        statement += "" if self._lease is None else " fenced"
        allowed = await self._store._query(
            operation, "fetchval", self._workflow_id, token, now, *args, statement=statement
        )
        if not allowed:
            raise _map_errors.lease_lost(operation, self._workflow_id)

    async def get(self, key: bytes) -> bytes | None:
        value: bytes | None = await self._store._query("get", "fetchval", self._workflow_id, key)
        return value

    async def set(self, key: bytes, value: bytes) -> None:
        await self.batch([(key, value)])

    async def delete(self, key: bytes) -> None:
        await self.batch([(key, None)])

    async def delete_prefix(self, prefix: bytes) -> None:
        end = prefix_end(prefix)  # None: no key is past an all-0xFF (or empty) prefix's range
        statement = "delete_range" if end is not None else "delete_range to end"
        await self._write("delete_prefix", statement, prefix, end)

    async def delete_range(self, start: bytes, end: bytes) -> None:
        await self._write("delete_range", "delete_range", start, end)

    async def list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        end = prefix_end(prefix)
        statement = "list" if end is not None else "list to end"
        rows = await self._store._query(
            "list", "fetch", self._workflow_id, prefix, end, statement=statement
        )
        return [(row[0], row[1]) for row in rows]

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        upserts, deletes = _split(writes)
        if not upserts and not deletes:
            return
        if not deletes and self._lease is None:
            await self._store._query(
                "batch",
                "execute",
                self._workflow_id,
                list(upserts),
                list(upserts.values()),
                statement="upsert unfenced",
            )
        elif not deletes:
            await self._write("batch", "upsert", list(upserts), list(upserts.values()))
        elif not upserts:
            await self._write("batch", "delete_keys", deletes)
        else:
            await self._write("batch", "batch", list(upserts), list(upserts.values()), deletes)

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        channel = self._store._alarm_channel
        await self._store._query("set_alarm", "execute", workflow_id, wake_at, channel)

    async def clear_alarm(self, workflow_id: str) -> None:
        await self._store._query("clear_alarm", "execute", workflow_id)

    # Live-mode hooks (engine.driver.WakeSource and Notifier).

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[None]]:
        return self._store.subscribe(self._workflow_id)

    async def notify(self, workflow_id: str) -> None:
        await self._store.notify(self._workflow_id or workflow_id)


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


async def _no_session_reset(connection: Any) -> None:
    """Skip asyncpg's reset on release (one more round trip per statement, which doubled a
    step's latency): pooled connections only ever run single self-contained statements, and
    LISTEN has its own connection, so there is no session state to clear."""


class PostgresStore(Lifecycle):
    """Owns the connection pool, the schema and the LISTEN connection; hands out drivers.

    Create it with ``await PostgresStore.connect(dsn)`` (or ``from_url``). ``schema``
    separates deployments (or tests) sharing one database; ``min_size``/``max_size`` size
    the asyncpg pool.
    """

    def __init__(self, pool: Any, dsn: str, schema: str, worker_poll_interval: float) -> None:
        self._pool = pool
        self._held: Any = None  # a pooled connection kept for one statement at a time
        self._held_busy = False
        self.schema = schema
        self.worker_poll_interval = worker_poll_interval
        s = f'"{schema}"'
        self._alarm_channel = f"{schema}.alarms"
        self._message_channel = f"{schema}.messages"
        self._sql = {name: sql.format(s=s) for name, sql in queries.STATEMENTS.items()}
        for name, sql in queries.KV_WRITES.items():
            for suffix, guard in queries.GUARDS.items():
                self._sql[name + suffix] = sql.format(s=s, guard=guard.format(s=s))
        self._s = s
        self._listener = Listener(dsn, self._alarm_channel, self._message_channel, _map_errors)

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
    ) -> Self:
        """Open a pool on ``dsn`` and create the schema's tables if they are missing."""
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
        with _map_errors("connect"):
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, reset=_no_session_reset
            )
        store = cls(pool, dsn, schema, worker_poll_interval)
        try:
            await store._create_schema()
        except BaseException:
            await pool.close()
            raise
        return store

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        namespace: str | None = None,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
        **options: Any,
    ) -> Self:
        """``postgresql://`` or ``postgres://``: ``connect`` to that database; ``namespace``
        is the schema (``DEFAULT_SCHEMA`` when None or empty), ``options`` go to ``connect``
        (``min_size``, ``max_size``)."""
        store_url(url, STORE, ("postgresql", "postgres"))
        return await cls.connect(
            url,
            schema=namespace or DEFAULT_SCHEMA,
            worker_poll_interval=worker_poll_interval,
            **options,
        )

    async def _create_schema(self) -> None:
        """Create or upgrade the schema, unless it is already at this version.

        The check comes first and takes no table lock: the DDL takes strong locks on every
        table (CREATE INDEX IF NOT EXISTS locks its table even when the index exists), so a
        worker starting beside running ones would otherwise deadlock with their writes.
        Creators and upgraders serialize on an advisory lock (IF NOT EXISTS alone is not
        safe against concurrent creators).
        """
        with _map_errors("create schema"):
            async with self._pool.acquire() as conn:
                version = await self._schema_version(conn)
                if version is None or version < SCHEMA_VERSION:
                    async with conn.transaction():
                        lock_id = zlib.crc32(self.schema.encode()) - (1 << 31)  # signed int4
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock($1, $2)", _LOCK_CLASS, lock_id
                        )
                        version = await self._schema_version(conn)
                        if version is None or version < SCHEMA_VERSION:
                            await conn.execute(queries.DDL.format(s=self._s))
                            table = f"{self._s}.schema_version"
                            await conn.execute(f"DELETE FROM {table}")
                            await conn.execute(f"INSERT INTO {table} VALUES ($1)", SCHEMA_VERSION)
                            version = SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise _map_errors.failure(f"open schema {self.schema!r} of newer version {version}")

    async def _schema_version(self, conn: Any) -> int | None:
        """The schema's layout version, None when the schema or its tables do not exist."""
        try:
            async with conn.transaction():  # a failed look must not abort an outer transaction
                version = await conn.fetchval(f"SELECT max(version) FROM {self._s}.schema_version")
        except (asyncpg.InvalidSchemaNameError, asyncpg.UndefinedTableError):
            return None
        return None if version is None else int(version)

    async def _query(
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
        sql = self._sql[statement or operation]
        with _map_errors(operation):
            try:
                return await self._run(method, sql, args)
            except _CONNECTION_LOST:
                # A connection was cut (a server restart, an administrator's kill): the ones
                # opened beside it are most likely cut too, and idle ones are left broken
                # without a word. Replace them all rather than fail on each in turn.
                await self._pool.expire_connections()
                if not idempotent:
                    raise
            return await self._run(method, sql, args)

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        """Run on the held connection when it is free, otherwise through the pool.

        Going through the pool costs ~40 us per statement (acquire, shielded release), a
        sixth of a whole step here; one statement at a time, the common case of a workflow's
        flushes, skips that. Concurrent statements still use the pool's other connections.
        """
        if self._held_busy or self._pool.get_max_size() < 2:
            return await getattr(self._pool, method)(sql, *args)
        self._held_busy = True
        try:
            held = self._held
            if held is None or _unusable(held):
                self._held = held = await self._pool.acquire()
            try:
                return await getattr(held, method)(sql, *args)
            except asyncpg.PostgresError:
                raise  # the server answered with an error: the connection is fine
            except BaseException:
                # Lost, or interrupted mid-statement (a cancelled call): it may be left
                # looking busy and would fail every later call, so it is retired.
                self._held = None
                await _discard(self._pool, held)
                raise
        finally:
            self._held_busy = False

    def driver(self, workflow_id: str) -> PostgresDriver:
        return PostgresDriver(self, workflow_id)

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        now = time.time() if now is None else now
        rows = await self._query("due_alarms", "fetch", now, limit)
        return [(row[0], row[1]) for row in rows]

    # Worker support (engine.store.WorkerStore).

    async def create_workflow(
        self,
        workflow_id: str,
        name: str,
        writes: Sequence[tuple[bytes, bytes]],
        wake_at: float,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> Registration:
        check_writes(STORE, writes, MAX_KEY_BYTES, MAX_VALUE_BYTES)
        rows = dict(creation_rows(writes))
        expires_at = time.time() + lease
        args: list[Any] = [workflow_id, name, list(rows), list(rows.values()), wake_at]
        args += [self._alarm_channel] if owner is None else [owner, expires_at]
        # Not retried: a second attempt after a lost reply would answer "already there".
        created, registered, token, *_ = await self._query(
            "create_workflow",
            "fetchrow",
            *args,
            statement="create_workflow" if owner is None else "create_workflow claimed",
            idempotent=False,
        )
        if registered is None:  # a creator this statement's snapshot could not see won
            info = await self.workflow_info(workflow_id)
            if info is None:
                raise _map_errors.failure(f"create_workflow of {workflow_id!r}: lost its row")
            registered = info[0]
        if not created or owner is None:
            return Registration(bool(created), registered)
        claim = Lease(workflow_id, owner, token, expires_at, wake_at, list(rows.items()))
        return Registration(True, registered, claim)

    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None:
        row = await self._query("workflow_info", "fetchrow", workflow_id)
        return None if row is None else (row[0], row[1])

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        rows = await self._query("list_workflows", "fetch", state, limit)
        return [row[0] for row in rows]

    async def claim_due(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[Lease]:
        now = time.time() if now is None else now
        # Not retried: a claim whose reply was lost would be taken twice (the first one idles
        # until its lease expires).
        rows = await self._query(
            "claim_due", "fetch", now, limit, owner, now + lease, idempotent=False
        )
        claims = []
        for wid, token, wake_at, keys, values in rows:  # no kv rows: both arrays are NULL
            namespace = list(zip(keys or (), values or (), strict=True))
            claims.append(Lease(wid, owner, token, now + lease, wake_at, namespace))
        return claims

    async def renew(self, lease: Lease, duration: float) -> Lease | None:
        now = time.time()
        renewed = await self._query(
            "renew", "fetchval", lease.workflow_id, lease.token, now, now + duration
        )
        if not renewed:
            return None
        return Lease(lease.workflow_id, lease.owner, lease.token, now + duration, lease.wake_at)

    async def release(self, lease: Lease) -> None:
        await self._query("release", "execute", lease.workflow_id, lease.token)

    def fenced_driver(self, lease: Lease) -> PostgresDriver:
        return PostgresDriver(self, lease.workflow_id, lease)

    async def finish_run(
        self,
        lease: Lease,
        writes: Sequence[tuple[bytes, bytes | None]],
        state: str,
        wake_at: float | None,
    ) -> None:
        upserts, deletes = _split(writes)
        wid = lease.workflow_id
        # Not retried: after a first attempt that landed, the released lease fails the fence.
        shape = (
            "finish_run" + (" del" if deletes else "") + (" wake" if wake_at is not None else "")
        )
        allowed = await self._query(
            "finish_run",
            "fetchval",
            wid,
            lease.token,
            time.time(),
            list(upserts),
            list(upserts.values()),
            deletes,
            state,
            lease.wake_at,
            wake_at,
            self._alarm_channel,
            statement=shape,
            idempotent=False,
        )
        if not allowed:
            raise _map_errors.lease_lost("finish_run", wid)

    async def wait_for_due(self, timeout: float) -> None:
        await self._listener.wait_for_due(timeout)

    # LISTEN/NOTIFY (``_postgres_listen``): one connection per store, fanned out in-process.

    async def notify(self, workflow_id: str) -> None:
        """Wake every live run of ``workflow_id`` subscribed on any process."""
        await self._query("notify", "execute", self._message_channel, payload(workflow_id))

    def subscribe(self, workflow_id: str) -> AbstractAsyncContextManager[AsyncIterator[None]]:
        """Yield an iterator producing ``None`` per notification for ``workflow_id``."""
        return self._listener.subscribe(workflow_id)

    async def close(self) -> None:
        """Close the LISTEN connection and the pool (waiting for calls in flight)."""
        held, self._held = self._held, None
        with _map_errors("close"):
            await self._listener.close()
            if held is not None:
                await self._pool.release(held)
            await self._pool.close()
