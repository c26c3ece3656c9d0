"""Redis driver and store: many workers in many processes share one Redis.

Key layout (``N`` = the store's namespace, ``W`` = the workflow id's UTF-8 bytes in hex, so
no id can forge a separator or a hash tag; ``{#W}`` keeps one workflow's keys in one slot,
even for the empty id):

=========================  ======  ===================================================
``N:w:{#W}:kv``            hash    driver key -> value
``N:w:{#W}:ix``            zset    driver keys, all scored 0: ZRANGEBYLEX is byte order
``N:w:{#W}:lease``         hash    ``token`` (grows per claim), ``owner``, ``exp``
                                   (``exp`` after now: a live lease, the row's
                                   ``running``); a release or cancel keeps ``token``
``N:s:{N}:alarms``         zset    workflow id scored by wake time
``N:s:{N}:info``           hash    ``n<id>`` -> registered name, ``s<id>`` -> state
``N:s:{N}:all``            zset    every registered id (score 0, listed in order)
``N:s:{N}:state:<state>``  zset    registered ids in that state
``N:s:{N}:updated``        zset    registered ids scored by ``-updated_at`` (rank order:
                                   newest first, then id), set by ``create_workflow``,
                                   ``claim``, ``finish_run`` and ``cancel``, never by
                                   ``claim_due``; an id registered before this key
                                   existed is in ``all`` only (``updated_at`` 0.0)
=========================  ======  ===================================================

Channels: ``N:msg:W`` (a message was written for W, W was cancelled or a run of W ended:
what a live run or a waiting client listens to) and ``N:due`` (an alarm was set: idle
workers). Both go over one pub/sub connection per store (``_redis_pubsub``); the pool is in
``_redis_client``, the index read as rows in ``_redis_index``.

Every write of a driver is one Lua script (EVALSHA, reloaded on NOSCRIPT) that checks the
lease when the driver is fenced, then updates the hash and the index together, so a batch is
atomic and costs one round trip, which it shares with the calls other runs make meanwhile
(one pipeline on the wire at a time, ``_redis_batching``). ``create_workflow`` and
``finish_run`` are one script each too, touching a workflow's keys and the store's
together; so are ``claim``, ``post_message`` and ``cancel``. ``claim_due`` derives each
claimed workflow's keys (lease, kv, ix) from alarm members inside its script, the row
scripts derive lease keys, ``finish_run`` and ``cancel`` the previous state's set, so the
store needs a single Redis primary (not a cluster).

Limits: keys and values up to ``MAX_VALUE_BYTES``, a batch up to ``MAX_BATCH_BYTES``;
workflow ids of 1 to ``MAX_ID_BYTES`` bytes of UTF-8.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Self, cast

import anyio

try:
    import redis.asyncio as aioredis
except ImportError as exc:  # the client is an extra: say which
    raise ImportError("drivers.redis needs redis-py: pip install 'durable-engine[redis]'") from exc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from drivers import _redis_scripts as scripts
from drivers._common import (
    ErrorMap,
    Lifecycle,
    check_workflow_id,
    check_writes,
    latest_writes,
    prefix_end,
    store_url,
)
from drivers._redis_batching import ScriptCalls
from drivers._redis_client import WaitingPool
from drivers._redis_index import ROW, ROWS, IndexReads
from drivers._redis_pubsub import SharedPubSub
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.state import WorkflowState
from engine.store import Lease, Registration, creation_rows

STORE = "redis store"
# Redis caps a bulk string (and so a hash value or zset member) at 512 MiB by default
# (proto-max-bulk-len); a whole request is capped at 1 GiB (client-query-buffer-limit).
MAX_VALUE_BYTES = 512 * 1024 * 1024
"""Largest key or value accepted: Redis's own cap on a string (``proto-max-bulk-len``)."""
MAX_BATCH_BYTES = 1024 * 1024 * 1024 - 1024 * 1024
"""Largest batch accepted, keys and values together: under Redis's 1 GiB request cap."""
# Ids travel in keys (hex, twice as long), channel names and index members.
MAX_ID_BYTES = 1024
"""The longest workflow id, in UTF-8."""
DEFAULT_RETRIES = 3
"""How many times a call on a dropped connection is sent again (``connect``'s ``retry``)."""
DEFAULT_NAMESPACE = "durable"
"""The key prefix when none is given (``connect``'s ``namespace``, the ``--namespace`` of
the command line)."""
# OSError: a socket error redis-py did not wrap.
_map_errors = ErrorMap(STORE, RedisError, OSError)


def _check_sizes(writes: Sequence[tuple[object, object]]) -> None:
    """Reject non-bytes and oversized data before anything is sent, so nothing half-lands."""
    # Keys are hash fields and zset members: Redis strings, capped like values.
    check_writes(STORE, writes, MAX_VALUE_BYTES, MAX_VALUE_BYTES, MAX_BATCH_BYTES)


def _ops(writes: Sequence[tuple[bytes, bytes | None]]) -> list[bytes | str]:
    """The script ops of a batch; later writes of a key win, so each key is applied once."""
    ops: list[bytes | str] = []
    for key, value in latest_writes(writes).items():
        ops += ["D", key, ""] if value is None else ["S", key, value]
    return ops


def _rows(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def _prefix_bounds(prefix: bytes) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of every key starting with ``prefix`` (0xff tails included)."""
    end = prefix_end(prefix)
    if end is None:
        return (b"[" + prefix if prefix else b"-"), b"+"
    return b"[" + prefix, b"(" + end


class RedisDriver:
    """One workflow's namespace in Redis; fenced when built with a lease."""

    max_value_bytes = MAX_VALUE_BYTES

    def __init__(self, store: RedisStore, workflow_id: str, lease: Lease | None = None) -> None:
        self.worker_poll_interval = store.worker_poll_interval
        self.store = store  # engine.store.bound_store: runs hold leases, messages go through it
        self._workflow_id = workflow_id
        self._lease = lease
        self._keys = store._workflow_keys(workflow_id)
        self._channel = store._channel(workflow_id)

    async def _write(self, operation: str, ops: list[bytes | str]) -> None:
        token = "" if self._lease is None else str(self._lease.token)
        with _map_errors(operation):
            applied = await self.store._scripts(
                "write", self._keys, [token, repr(time.time()), *ops]
            )
        if not applied:
            raise _map_errors.lease_lost(operation, self._workflow_id)

    async def get(self, key: bytes) -> bytes | None:
        with _map_errors("get"):
            return cast("bytes | None", await self.store._client.hget(self._keys[0], bytes(key)))

    async def set(self, key: bytes, value: bytes) -> None:
        _check_sizes([(key, value)])
        await self._write("set", ["S", bytes(key), bytes(value)])

    async def delete(self, key: bytes) -> None:
        await self._write("delete", ["D", bytes(key), ""])

    async def delete_prefix(self, prefix: bytes) -> None:
        await self._write("delete_prefix", ["R", *_prefix_bounds(prefix)])

    async def delete_range(self, start: bytes, end: bytes) -> None:
        if start >= end:
            return  # empty range; no round trip (a fenced driver writes nothing either way)
        await self._write("delete_range", ["R", b"[" + start, b"(" + end])

    async def list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        with _map_errors("list"):
            flat = await self.store._scripts("list", self._keys[:2], [*_prefix_bounds(prefix)])
        return _rows(flat)

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        _check_sizes(writes)
        if ops := _ops(writes):
            await self._write("batch", ops)

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        await self.store._set_alarm(workflow_id, wake_at)

    async def clear_alarm(self, workflow_id: str) -> None:
        with _map_errors("clear_alarm"):
            await self.store._client.zrem(self.store._alarms, workflow_id)

    # Live mode (engine.driver.WakeSource / Notifier): Redis pub/sub, across processes.

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[None]]:
        return self.store._pubsub.subscribe(self._channel)

    async def notify(self, workflow_id: str) -> None:
        # Like MemoryDriver: the engine only notifies the workflow whose driver it wrote with.
        with _map_errors("notify"):
            await self.store._client.publish(self._channel, b"")


class RedisStore(IndexReads, Lifecycle):
    """Owns the connection pool, the alarm index, the worker index and leases.

    Build it with ``await RedisStore.connect(url)`` (or ``from_url``); ``namespace``
    prefixes every key and channel, so stores with different namespaces never see each other.
    """

    max_value_bytes = MAX_VALUE_BYTES
    _errors = _map_errors

    def __init__(
        self, client: aioredis.Redis, *, namespace: str, worker_poll_interval: float
    ) -> None:
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace must be non-empty without braces: {namespace!r}")
        self.namespace = namespace
        self.worker_poll_interval = worker_poll_interval
        self._client = client
        head = f"{namespace}:s:{{{namespace}}}"
        self._alarms, self._info, self._all = f"{head}:alarms", f"{head}:info", f"{head}:all"
        self._updated = f"{head}:updated"
        self._state_head = f"{head}:state:"
        self._due_channel = f"{namespace}:due"
        # What the row scripts derive a workflow's lease key from: head + hex(id) + tail.
        self._key_parts = [f"{namespace}:w:{{#", "}"]
        self._pubsub = SharedPubSub(client, _map_errors)
        self._scripts = ScriptCalls(
            client,
            {
                "write": scripts.WRITE,
                "list": scripts.LIST,
                "claim": scripts.CLAIM,
                "claim_one": scripts.CLAIM_ONE,
                "renew": scripts.RENEW,
                "create": scripts.CREATE,
                "finish": scripts.FINISH,
                "post": scripts.POST,
                "cancel": scripts.CANCEL,
                "row": ROW,
                "rows": ROWS,
            },
        )

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
        max_connections: int = 50,
        connection_wait: float = 30.0,
        **client_options: Any,
    ) -> Self:
        """Connect and check the server answers; ``client_options`` go to redis-py.

        A dropped connection is retried (``DEFAULT_RETRIES`` times unless ``retry`` is given):
        every write is a script that sets a final state, so resending one whose reply was
        lost is harmless, and a script never runs halfway. At most ``max_connections`` are
        open; a call beyond that waits up to ``connection_wait`` seconds for a free one
        (redis-py's default pool would raise at once, e.g. under a burst of starts).
        """
        client_options.setdefault(
            "retry", Retry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), DEFAULT_RETRIES)
        )
        pool = WaitingPool.from_url(url, max_connections=max_connections, **client_options)
        pool.connection_wait = connection_wait
        client = aioredis.Redis(connection_pool=pool)
        try:
            with _map_errors("connect"):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return cls(client, namespace=namespace, worker_poll_interval=worker_poll_interval)

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        namespace: str | None = None,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
        **options: Any,
    ) -> Self:
        """``redis://`` or ``rediss://``: ``connect`` to that server; ``namespace`` is the
        key prefix (``DEFAULT_NAMESPACE`` when None or empty), ``options`` go to ``connect``."""
        store_url(url, STORE, ("redis", "rediss"))
        return await cls.connect(
            url,
            namespace=namespace or DEFAULT_NAMESPACE,
            worker_poll_interval=worker_poll_interval,
            **options,
        )

    def check_workflow_id(self, workflow_id: str) -> None:
        """Raise ``ValueError`` naming the store and its limit for an id it cannot hold:
        empty, not UTF-8 encodable, or over ``MAX_ID_BYTES`` in UTF-8."""
        check_workflow_id(STORE, workflow_id, MAX_ID_BYTES)

    def _workflow_head(self, workflow_id: str) -> str:
        return f"{self.namespace}:w:{{#{workflow_id.encode().hex()}}}"

    def _channel(self, workflow_id: str) -> str:
        """The workflow's channel: a message, a cancel or the end of a run."""
        return f"{self.namespace}:msg:{workflow_id.encode().hex()}"

    def _workflow_keys(self, workflow_id: str) -> list[str]:
        """The kv, ix and lease keys of one workflow, in the order the scripts take them."""
        head = self._workflow_head(workflow_id)
        return [head + ":kv", head + ":ix", head + ":lease"]

    def driver(self, workflow_id: str) -> RedisDriver:
        """The namespace of ``workflow_id``: a driver that reads and writes only its keys."""
        return RedisDriver(self, workflow_id)

    def fenced_driver(self, lease: Lease) -> RedisDriver:
        return RedisDriver(self, lease.workflow_id, lease)

    async def _set_alarm(self, workflow_id: str, wake_at: float) -> None:
        with _map_errors("set_alarm"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._alarms, {workflow_id: wake_at})
                pipe.publish(self._due_channel, b"")
                await pipe.execute()

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` ``(workflow_id, wake_at)`` pairs whose alarm is due at ``now``
        (the current time when None), earliest first."""
        cutoff = time.time() if now is None else now
        with _map_errors("due_alarms"):
            rows: list[tuple[bytes, float]] = await self._client.zrangebyscore(
                self._alarms, "-inf", repr(cutoff), start=0, num=limit, withscores=True
            )  # type: ignore[assignment]
        return [(member.decode(), float(score)) for member, score in rows]

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
        _check_sizes(writes)
        rows = dict(creation_rows(writes))
        state = WorkflowState.PENDING.value
        keys = [*self._workflow_keys(workflow_id), self._alarms, self._info, self._all]
        keys += [self._state_head + state, self._updated]
        now = time.time()
        expires = now + lease
        args: list[bytes | str] = [
            workflow_id,
            name,
            state,
            repr(wake_at),
            owner or "",
            repr(expires),
            self._due_channel,
            repr(-now),  # updated scores are -updated_at: rank order is newest first, then id
        ]
        for key, value in rows.items():
            args += [key, value]
        with _map_errors("create_workflow"):
            created, found = await self._scripts("create", keys, args)
        if not created:
            return Registration(False, found.decode())
        if owner is None:
            return Registration(True, name)
        claim = Lease(workflow_id, owner, int(found), expires, wake_at, list(rows.items()))
        return Registration(True, name, claim)

    async def claim_due(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[Lease]:
        now = time.time() if now is None else now
        expires = now + lease
        args: list[str | int] = [repr(now), repr(expires), limit, owner, *self._key_parts]
        with _map_errors("claim_due"):
            claims = await self._scripts("claim", [self._alarms], args)
        return [
            Lease(
                wid.decode(),
                owner,
                int(token),
                expires,
                float(score),  # Redis prints scores with 17 digits: the float comes back exact
                _rows(flat),
            )
            for wid, token, score, flat in claims
        ]

    async def claim(
        self, workflow_id: str, owner: str, lease: float, name: str, now: float | None = None
    ) -> Lease | None:
        now = time.time() if now is None else now
        expires = now + lease
        state = WorkflowState.PENDING.value
        keys = [*self._workflow_keys(workflow_id), self._alarms, self._info, self._all]
        keys += [self._state_head + state, self._updated]
        args = [workflow_id, owner, repr(now), repr(expires), name, state, repr(-now)]
        with _map_errors("claim"):
            claimed = await self._scripts("claim_one", keys, args)
        if claimed is None:
            return None
        token, alarm, flat = claimed
        wake_at = float(alarm) if alarm else None
        return Lease(workflow_id, owner, int(token), expires, wake_at, _rows(flat))

    async def renew(self, lease: Lease, duration: float) -> Lease | None:
        now = time.time()
        key = self._workflow_head(lease.workflow_id) + ":lease"
        args = [str(lease.token), repr(now), repr(now + duration)]
        with _map_errors("renew"):
            renewed = await self._scripts("renew", [key], args)
        if not renewed:
            return None
        return Lease(lease.workflow_id, lease.owner, lease.token, now + duration, lease.wake_at)

    async def release(self, lease: Lease) -> None:
        key = self._workflow_head(lease.workflow_id) + ":lease"
        with _map_errors("release"):
            await self._scripts("renew", [key], [str(lease.token), "0", ""])

    async def post_message(
        self, workflow_id: str, key: bytes, value: bytes, wake_at: float
    ) -> None:
        _check_sizes([(key, value)])
        keys = [*self._workflow_keys(workflow_id)[:2], self._alarms]
        channels = [self._channel(workflow_id), self._due_channel]
        args = [workflow_id, bytes(key), bytes(value), repr(wake_at), *channels]
        with _map_errors("post_message"):
            await self._scripts("post", keys, args)

    async def cancel(self, workflow_id: str, writes: Sequence[tuple[bytes, bytes]]) -> None:
        _check_sizes(writes)
        state = WorkflowState.CANCELLED.value
        keys = [*self._workflow_keys(workflow_id), self._alarms, self._info]
        keys += [self._state_head + state, self._updated]
        args: list[bytes | str] = [
            workflow_id,
            repr(-time.time()),
            state,
            self._state_head,
            self._channel(workflow_id),
            *_ops(writes),
        ]
        with _map_errors("cancel"):
            await self._scripts("cancel", keys, args)

    async def finish_run(
        self,
        lease: Lease,
        writes: Sequence[tuple[bytes, bytes | None]],
        state: str,
        wake_at: float | None,
    ) -> None:
        _check_sizes(writes)
        workflow_id = lease.workflow_id
        keys = [*self._workflow_keys(workflow_id), self._alarms, self._info, self._all]
        keys += [self._state_head + state, self._updated]
        claimed = "" if lease.wake_at is None else repr(lease.wake_at)
        now = time.time()
        args: list[bytes | str] = [
            str(lease.token),
            repr(now),
            workflow_id,
            state,
            self._state_head,
            claimed,
            "" if wake_at is None else repr(wake_at),
            self._due_channel,
            self._channel(workflow_id),
            repr(-now),
            *_ops(writes),
        ]
        with _map_errors("finish_run"):
            finished = await self._scripts("finish", keys, args)
        if not finished:
            raise _map_errors.lease_lost("finish_run", workflow_id)

    async def wait_for_due(self, timeout: float) -> None:
        """Return on the next alarm set anywhere, or after ``timeout`` seconds.

        The due channel stays subscribed from the first call on (on the store's one pub/sub
        connection), so an alarm set between two calls ends the next call at once, and a
        reconnect of that connection ends it too (an alarm set meanwhile went unheard).
        """
        await self._pubsub.wait(self._due_channel, timeout)

    async def close(self) -> None:
        """Close the pub/sub connection and every pooled connection."""
        with anyio.CancelScope(shield=True), _map_errors("close"):
            await self._scripts.wait_idle()
            await self._pubsub.close()
            await self._client.aclose()
