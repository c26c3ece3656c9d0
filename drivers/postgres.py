"""PostgreSQL driver and store (asyncpg): durable, shared by workers on many machines.

Every workflow's namespace is the rows of one ``kv`` table with that ``workflow_id``; keys and
values are ``bytea``, which compares bytewise, so ``ORDER BY key`` is the byte order drivers
must give whatever the database's collation. Tables live in one schema (``durable`` by
default), created idempotently at connect (``_postgres_pool.create_schema``):

================  ===============================================================
table             rows
================  ===============================================================
schema_version    one row: the layout version (SCHEMA_VERSION), for upgrades
kv                (workflow_id, key) -> value
alarms            workflow_id -> wake_at (indexed by wake_at)
leases            workflow_id -> owner, token, expires_at (token only ever grows)
workflows         workflow_id -> registered name, state, updated_at (indexed by state,
                  and by updated_at, latest first)
================  ===============================================================

Each write is one statement, so one round trip and one implicit transaction, and so are the
worker protocol's compound acts: ``create_workflow`` (the index row, and only if it is new the
namespace, the alarm and an eager start's lease), a claim (which reads the claimed namespaces
too), ``post_message`` (the message, its alarm, the wake-ups), ``cancel`` (the state, the
index, the alarm, the revoked lease) and ``finish_run`` (a run's last writes, its index
state, the settled alarm and the released lease). Fenced writes (``fenced_driver``,
``finish_run``) lock the lease row ``FOR SHARE`` in a CTE of that same statement and gate
every modification on it, so a stale worker writes nothing. Wake-ups use LISTEN/NOTIFY on
one dedicated connection per store (``_postgres_listen``): ``<schema>.messages`` (payload:
the workflow id) for live runs and waiting clients, ``<schema>.alarms`` for idle workers.
Lease expiry is judged on client clocks (``time.time()``), like the other stores.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Self

try:
    import asyncpg  # noqa: F401 - imported here so a missing extra is named at once
except ImportError as exc:  # the client is an extra: say which
    raise ImportError(
        "drivers.postgres needs asyncpg: pip install 'durable-engine[postgres]'"
    ) from exc

from drivers import _postgres_sql as queries
from drivers._common import (
    Lifecycle,
    Writes,
    check_workflow_id,
    check_writes,
    latest_writes,
    prefix_end,
    store_url,
)
from drivers._postgres_listen import Listener, payload
from drivers._postgres_pool import STORE, Statements, create_schema, map_errors, open_pool
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.store import Lease, Registration, WorkflowRow, creation_rows

SCHEMA_VERSION = 3
"""The layout version. Bump it with every change to ``_postgres_sql.DDL``: a store at an
older version runs the (idempotent) DDL again when it connects, one at this version does
not. 2: the claim is the ``claim_due`` function. 3: ``workflows.updated_at`` and its index,
the ``claim`` function."""
MAX_VALUE_BYTES = 64 * 1024 * 1024
"""Largest value accepted. bytea allows 1 GB, but a value this big already means a step
output that belongs in blob storage, and asyncpg holds every value of a batch in memory."""
MAX_WORKFLOW_ID_BYTES = 512
"""Longest workflow id, in UTF-8. Every table's primary key holds it (kv's beside the key)."""
MAX_KEY_BYTES = 2048
"""Longest key. A B-tree entry must fit a third of an 8 kB page, 2704 bytes (BTMaxItemSize),
and kv's primary key entry is at most 8 (tuple header) + 4 + 512 (the id) + 3 (alignment)
+ 4 + 2048 (the key) = 2579 bytes: room to spare, even for incompressible bytes."""
DEFAULT_SCHEMA = "durable"
"""The schema the tables live in when none is given (``connect``'s ``schema``, the
``--namespace`` of the command line)."""
# Channel names derive from the schema and must fit NAMEDATALEN (63 bytes), hence 48.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
_REFUSED_IN_IDS = "\x00"  # text cannot hold NUL


def _split(writes: Writes) -> tuple[dict[bytes, bytes], list[bytes]]:
    """A batch as its upserts and its deletes, each key once (its last write wins)."""
    check_writes(STORE, writes, MAX_KEY_BYTES, MAX_VALUE_BYTES)
    latest = latest_writes(writes)
    upserts = {key: value for key, value in latest.items() if value is not None}
    return upserts, [key for key, value in latest.items() if value is None]


class PostgresDriver:
    """One workflow's namespace; with a ``lease``, every write is fenced by its token.

    ``store`` is the store that handed it out (``engine.store.bound_store``): runs, messages
    and cancels of its workflow go through that store's leases.
    """

    def __init__(self, store: PostgresStore, workflow_id: str, lease: Lease | None = None) -> None:
        self.worker_poll_interval = store.worker_poll_interval
        self.max_value_bytes = store.max_value_bytes
        self.store = store
        self._workflow_id = workflow_id
        self._lease = lease

    async def _write(self, operation: str, statement: str, *args: Any) -> None:
        token, now = (self._lease.token, time.time()) if self._lease else (None, None)
        statement += "" if self._lease is None else " fenced"
        allowed = await self.store._query(
            operation, "fetchval", self._workflow_id, token, now, *args, statement=statement
        )
        if not allowed:
            raise map_errors.lease_lost(operation, self._workflow_id)

    async def get(self, key: bytes) -> bytes | None:
        value: bytes | None = await self.store._query("get", "fetchval", self._workflow_id, key)
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
        rows = await self.store._query(
            "list", "fetch", self._workflow_id, prefix, end, statement=statement
        )
        return [(row[0], row[1]) for row in rows]

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        upserts, deletes = _split(writes)
        if not upserts and not deletes:
            return
        if not deletes and self._lease is None:
            await self.store._query(
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
        channel = self.store._alarm_channel
        await self.store._query("set_alarm", "execute", workflow_id, wake_at, channel)

    async def clear_alarm(self, workflow_id: str) -> None:
        await self.store._query("clear_alarm", "execute", workflow_id)

    # Live-mode hooks (engine.driver.WakeSource and Notifier).

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[None]]:
        return self.store.subscribe(self._workflow_id)

    async def notify(self, workflow_id: str) -> None:
        await self.store.notify(self._workflow_id or workflow_id)


class PostgresStore(Lifecycle):
    """Owns the connection pool, the schema and the LISTEN connection; hands out drivers.

    Create it with ``await PostgresStore.connect(dsn)`` (or ``from_url``). ``schema``
    separates deployments (or tests) sharing one database; ``min_size``/``max_size`` size
    the asyncpg pool.
    """

    def __init__(self, pool: Any, dsn: str, schema: str, worker_poll_interval: float) -> None:
        self.schema = schema
        self.worker_poll_interval = worker_poll_interval
        self.max_value_bytes = MAX_VALUE_BYTES
        self._alarm_channel = f"{schema}.alarms"
        self._message_channel = f"{schema}.messages"
        s = f'"{schema}"'
        sql = {name: text.format(s=s) for name, text in queries.STATEMENTS.items()}
        for name, text in queries.KV_WRITES.items():
            for suffix, guard in queries.GUARDS.items():
                sql[name + suffix] = text.format(s=s, guard=guard.format(s=s))
        self._statements = Statements(pool, sql)
        self._pool = pool  # the statements' pool, for tests that reach its connections
        self._query = self._statements.query  # bound once: every write calls it
        self._listener = Listener(dsn, self._alarm_channel, self._message_channel, map_errors)

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
        """Open a pool on ``dsn`` and create the schema's tables if they are missing (or
        upgrade them from an older layout)."""
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
        pool = await open_pool(dsn, min_size, max_size)
        try:
            await create_schema(pool, schema, SCHEMA_VERSION, queries.DDL.format(s=f'"{schema}"'))
        except BaseException:
            await pool.close()
            raise
        return cls(pool, dsn, schema, worker_poll_interval)

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

    def check_workflow_id(self, workflow_id: str) -> None:
        """``ValueError`` for an id the store cannot hold (``engine.store.Limits``): empty,
        not UTF-8 encodable, holding NUL, or over ``MAX_WORKFLOW_ID_BYTES``."""
        check_workflow_id(STORE, workflow_id, MAX_WORKFLOW_ID_BYTES, _REFUSED_IN_IDS)

    def driver(self, workflow_id: str) -> PostgresDriver:
        """The namespace of ``workflow_id``: a driver that reads and writes only its keys."""
        return PostgresDriver(self, workflow_id)

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` ``(workflow_id, wake_at)`` pairs whose alarm is due at ``now``
        (the current time when None), earliest first."""
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
        self.check_workflow_id(workflow_id)
        check_writes(STORE, writes, MAX_KEY_BYTES, MAX_VALUE_BYTES)
        rows = dict(creation_rows(writes))
        now = time.time()
        args: list[Any] = [workflow_id, name, list(rows), list(rows.values()), wake_at, now]
        args += [self._alarm_channel] if owner is None else [owner, now + lease]
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
                raise map_errors.failure(f"create_workflow of {workflow_id!r}: lost its row")
            registered = info[0]
        if not created or owner is None:
            return Registration(bool(created), registered)
        claim = Lease(workflow_id, owner, token, now + lease, wake_at, list(rows.items()))
        return Registration(True, registered, claim)

    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None:
        row = await self._query("workflow_info", "fetchrow", workflow_id)
        return None if row is None else (row[0], row[1])

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        rows = await self._query("list_workflows", "fetch", state, limit)
        return [row[0] for row in rows]

    async def workflow_rows(
        self, *, state: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowRow]:
        args: list[Any] = [time.time(), name, max(limit, 0)]
        if state is None or state == "running":
            statement = "workflow_rows" if state is None else "workflow_rows running"
        else:
            statement, args = "workflow_rows state", [*args, state]
        rows = await self._query("workflow_rows", "fetch", *args, statement=statement)
        return [WorkflowRow(*row) for row in rows]

    async def workflow_row(self, workflow_id: str) -> WorkflowRow | None:
        row = await self._query("workflow_row", "fetchrow", time.time(), workflow_id)
        return None if row is None else WorkflowRow(*row)

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

    async def claim(
        self, workflow_id: str, owner: str, lease: float, name: str, now: float | None = None
    ) -> Lease | None:
        self.check_workflow_id(workflow_id)
        now = time.time() if now is None else now
        # Not retried, like claim_due.
        row = await self._query(
            "claim", "fetchrow", workflow_id, owner, now + lease, now, name, idempotent=False
        )
        if row is None:
            return None
        token, wake_at, keys, values = row
        namespace = list(zip(keys or (), values or (), strict=True))
        return Lease(workflow_id, owner, token, now + lease, wake_at, namespace)

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

    async def post_message(
        self, workflow_id: str, key: bytes, value: bytes, wake_at: float
    ) -> None:
        # Refused before anything is sent: the statement is all or nothing, and so is this.
        self.check_workflow_id(workflow_id)
        check_writes(STORE, [(key, value)], MAX_KEY_BYTES, MAX_VALUE_BYTES)
        channels = (self._alarm_channel, self._message_channel, payload(workflow_id))
        await self._query("post_message", "execute", workflow_id, key, value, wake_at, *channels)

    async def cancel(self, workflow_id: str, writes: Sequence[tuple[bytes, bytes]]) -> None:
        self.check_workflow_id(workflow_id)
        upserts, deletes = _split(writes)
        await self._query(
            "cancel",
            "execute",
            workflow_id,
            time.time(),
            list(upserts),
            list(upserts.values()),
            deletes,
            self._message_channel,
            payload(workflow_id),
        )

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
            self._message_channel,
            payload(wid),
            statement=shape,
            idempotent=False,
        )
        if not allowed:
            raise map_errors.lease_lost("finish_run", wid)

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
        try:
            with map_errors("close"):
                await self._listener.close()
        finally:
            await self._statements.close()
