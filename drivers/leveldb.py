"""LevelDB driver and store: the embedded default for one process that must survive a restart.

One database directory holds every workflow of the store. LevelDB allows one open handle per
directory, so one process owns the store: leases, fencing tokens and live wake-ups are kept
in memory, while data, alarms and the workflow index are durable.

Byte layout, built and parsed in ``_leveldb_layout`` (every key starts with one ``Table``
byte; ``id(s)`` is the UTF-8 text with 0x00 escaped as 0x00 0x01 and ended by 0x00 0x00, so
no id's encoding is a prefix of another's and "a" can never reach the keys of "a\\x00" or
"a:b"; ``t`` is the wake time as 8 bytes that sort like the float):

=============================  ===============================================
key                            value
=============================  ===============================================
META "layout"                  layout version (``LAYOUT_VERSION``)
DATA id(workflow) key          the driver's value for ``key``
ALARM_AT t id(workflow)        empty: due alarms are a range scan up to now
ALARM_OF id(workflow)          t, so a new alarm replaces the old in one batch
INDEX id(workflow)             ``keys.pack((version, name, state))``
STATE id(state) id(workflow)   empty: ``list_workflows(state)`` is a prefix scan
=============================  ===============================================

``create_workflow`` and ``finish_run`` write a workflow's DATA, INDEX, STATE and alarm rows
in one write batch, so a crash never leaves a workflow indexed without its input or alarm,
or finished without its state.

Threads. ``benchmarks/leveldb_threads.py`` (2 vCPU VM, asyncio and trio alike), median/p99 us,
direct call vs ``anyio.to_thread.run_sync``: get 0.3/0.4 vs 100/160; 20-key list 5/6 vs
110/190; 5-put batch ``sync=False`` 6/23 vs 107/154, ``sync=True`` 145/232 vs 284/389. A thread
hop (~100 us) costs far more than a read or an unsynced write, so those run on the loop. A
synced write blocks for a whole fsync (0.15 ms here, 1-10 ms on common SSDs and network disks):
with 20 tasks writing, direct calls stalled the loop 3.5-13 ms at p99 against 0.05-0.9 ms
threaded, delaying every workflow and lease heartbeat.

Measured against the issue's target (one step within 1.2x of a raw synced ``WriteBatch`` plus
the engine's own cost), the thread hop alone put a step at 1.85x on this machine. So by
default every call runs on the loop (a synced write blocks it for one fsync, ~0.15 ms here),
and ``fsync_in_thread=True`` moves synced writes to a thread for disks whose fsync takes
milliseconds, where keeping the loop free matters more than the hop.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, Self, TypeVar, cast
from urllib.parse import unquote

import anyio
import anyio.to_thread
import plyvel

from drivers._common import (
    ErrorMap,
    Lifecycle,
    check_writes,
    prefix_end,
    refuse_namespace,
    store_url,
)
from drivers._inprocess import InProcessLeases, InProcessWakeups
from drivers._leveldb_layout import (
    LAYOUT_VERSION,
    STORE,
    Changes,
    Table,
    alarm_moves,
    decode_id,
    decode_time,
    encode_id,
    fill_batch,
    index_moves,
    parse_index,
    read_rows,
    scan_due,
    table_key,
)
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.errors import StorageError
from engine.state import WorkflowState
from engine.store import Lease, Registration, creation_rows, settled_alarm

MAX_VALUE_BYTES = 16 * 1024 * 1024
"""LevelDB rewrites values on every compaction; past a few MiB that gets slow and memory-hungry."""

_T = TypeVar("_T")
# RuntimeError: the database is closed.
_map_errors = ErrorMap(STORE, plyvel.Error, OSError, RuntimeError)


class LevelDBDriver:
    """One workflow's namespace, every key stored under ``DATA id(workflow)``; with a
    ``lease``, every write is fenced by it."""

    def __init__(self, store: LevelDBStore, workflow_id: str, lease: Lease | None = None) -> None:
        self.worker_poll_interval = store.worker_poll_interval
        self._store = store
        self._workflow_id = workflow_id
        self._lease = lease
        self._ns = table_key(Table.DATA, encode_id(workflow_id))

    def _fence(self, operation: str) -> None:
        # Runs after the batch is built and right before it is applied (in the writing thread
        # for synced writes), so a takeover during an earlier await is still caught.
        if self._lease is not None:
            self._store._leases.check(self._lease, _map_errors, operation)

    def _apply(
        self, operation: str, collect: Callable[[Any], Sequence[tuple[bytes, bytes | None]]]
    ) -> Callable[[Any], None]:
        def apply(db: Any) -> None:
            batch = fill_batch(db.write_batch(sync=self._store.sync), collect(db))
            self._fence(operation)
            batch.write()

        return apply

    async def get(self, key: bytes) -> bytes | None:
        return cast("bytes | None", self._store._read("get", lambda db: db.get(self._ns + key)))

    async def set(self, key: bytes, value: bytes) -> None:
        await self.batch([(key, value)])

    async def delete(self, key: bytes) -> None:
        await self.batch([(key, None)])

    async def delete_prefix(self, prefix: bytes) -> None:
        # The namespace prefix ends in 0x00 0x00, so the span always has an upper bound.
        await self._delete_span("delete_prefix", self._ns + prefix, prefix_end(self._ns + prefix))

    async def delete_range(self, start: bytes, end: bytes) -> None:
        if start < end:
            await self._delete_span("delete_range", self._ns + start, self._ns + end)

    async def _delete_span(self, operation: str, start: bytes, stop: bytes | None) -> None:
        def collect(db: Any) -> list[tuple[bytes, bytes | None]]:
            keys = db.iterator(start=start, stop=stop, include_value=False)
            return [(k, None) for k in keys]

        await self._store._write(operation, self._apply(operation, collect))

    async def list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return self._store._read("list", lambda db: read_rows(db, self._ns, prefix))

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        check_writes(STORE, writes, max_value=MAX_VALUE_BYTES)
        if not writes:
            self._fence("batch")  # nothing to write; a lost lease still reports itself
            return
        prefixed = [(self._ns + bytes(k), None if v is None else bytes(v)) for k, v in writes]
        await self._store._write("batch", self._apply("batch", lambda db: prefixed))

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        await self._store._set_alarm(workflow_id, wake_at)

    async def clear_alarm(self, workflow_id: str) -> None:
        await self._store._set_alarm(workflow_id, None)

    # Beyond the protocol: live-mode wake-ups (one process owns the database).

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[None]]:
        return self._store._subscribers.subscribe(self._workflow_id)

    async def notify(self, workflow_id: str) -> None:
        self._store._subscribers.notify(self._workflow_id)


class LevelDBStore(Lifecycle):
    """Owns one LevelDB directory and hands out isolated per-workflow drivers.

    Args:
        path: the database directory, created if missing; one open store per directory.
        sync: fsync every write (durable across power loss). ``False`` survives a process
            crash but may lose the last writes on an OS crash; it is several times faster.
        fsync_in_thread: run synced writes in a worker thread so a slow fsync never blocks
            the event loop (costs ~0.1 ms per write; worth it when fsync takes milliseconds).
        worker_poll_interval: sleeps shorter than this wait in memory, longer ones yield.

    Raises:
        StorageError: the directory cannot be opened, e.g. another process holds its lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        fsync_in_thread: bool = False,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
    ) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        self.fsync_in_thread = fsync_in_thread
        self.worker_poll_interval = worker_poll_interval
        operation = f"open of {self.path!r}"
        try:
            self._db: Any = plyvel.DB(self.path, create_if_missing=True)
        except plyvel.Error as exc:
            if "lock" in str(exc).lower():
                operation += " (directory locked by another process or another open store)"
            raise StorageError(STORE, operation, exc) from exc
        meta = table_key(Table.META, b"layout")
        with _map_errors(operation):
            found = self._db.get(meta)
            if found is None:
                self._db.put(meta, LAYOUT_VERSION, sync=sync)
        if found not in (None, LAYOUT_VERSION):
            self._db.close()
            raise StorageError(STORE, f"{operation}: layout version {found!r} is not supported")
        self._meta_lock = anyio.Lock()  # alarm and index updates read before they write
        self._inflight = 0
        self._drained: anyio.Event | None = None
        self._alarm_changed: anyio.Event | None = None
        self._subscribers = InProcessWakeups()
        self._leases = InProcessLeases()

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        namespace: str | None = None,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
        **options: Any,
    ) -> Self:
        """``leveldb:///abs/path``: open (or create) the database directory at that path.

        ``options`` go to the constructor (``sync``, ``fsync_in_thread``); a LevelDB store
        has no namespace (one directory is one store).
        """
        path = unquote(store_url(url, STORE, ("leveldb",)).path)
        refuse_namespace(STORE, namespace)
        if not path:
            raise ValueError(f"leveldb URL needs a path, like leveldb:///var/lib/wf: {url!r}")
        return cls(path, worker_poll_interval=worker_poll_interval, **options)

    def driver(self, workflow_id: str) -> LevelDBDriver:
        return LevelDBDriver(self, workflow_id)

    def fenced_driver(self, lease: Lease) -> LevelDBDriver:
        return LevelDBDriver(self, lease.workflow_id, lease)

    # Calls into plyvel: on the loop, except synced writes when ``fsync_in_thread``.

    def _open_db(self, operation: str) -> Any:
        if self._db is None:
            raise StorageError(STORE, f"{operation} (store {self.path!r} is closed)")
        return self._db

    def _read(self, operation: str, read: Callable[[Any], _T]) -> _T:
        db = self._open_db(operation)
        with _map_errors(operation):
            return read(db)

    async def _write(self, operation: str, apply: Callable[[Any], _T]) -> _T:
        db = self._open_db(operation)
        if not (self.sync and self.fsync_in_thread):
            with _map_errors(operation):
                return apply(db)
        self._inflight += 1  # close() waits for these before it closes the handle
        try:
            with _map_errors(operation):
                return await anyio.to_thread.run_sync(apply, db)
        finally:
            self._inflight -= 1
            if not self._inflight and self._drained is not None:
                self._drained.set()

    async def _set_alarm(self, workflow_id: str, wake_at: float | None) -> None:
        """Set (or with ``None`` clear) an alarm."""
        wid = encode_id(workflow_id)

        def apply(db: Any) -> None:
            moves = alarm_moves(db.get(table_key(Table.ALARM_OF, wid)), wid, wake_at)
            if moves:
                fill_batch(db.write_batch(sync=self.sync), moves).write()

        operation = "set_alarm" if wake_at is not None else "clear_alarm"
        async with self._meta_lock:
            await self._write(operation, apply)
        if wake_at is not None:
            self._wake_workers()

    def _wake_workers(self) -> None:
        """Return every ``wait_for_due``: an alarm was set that may already be due."""
        if self._alarm_changed is not None:
            self._alarm_changed.set()
            self._alarm_changed = None

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        """Alarms with a wake time at or before ``now``, earliest first."""
        cutoff = time.time() if now is None else now
        return self._read("due_alarms", lambda db: scan_due(db, cutoff, limit, lambda _: True))

    async def wait_for_due(self, timeout: float) -> None:
        if self._alarm_changed is None:
            self._alarm_changed = anyio.Event()
        changed = self._alarm_changed
        with anyio.move_on_after(timeout):
            await changed.wait()

    # Workflow index: durable, so start_workflow stays idempotent across restarts.

    async def create_workflow(
        self,
        workflow_id: str,
        name: str,
        writes: Sequence[tuple[bytes, bytes]],
        wake_at: float,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> Registration:
        check_writes(STORE, writes, max_value=MAX_VALUE_BYTES)
        rows = creation_rows(writes)
        wid = encode_id(workflow_id)
        index = table_key(Table.INDEX, wid)
        async with self._meta_lock:  # nothing else writes the index or alarm meanwhile
            found = parse_index(self._read("create_workflow", lambda db: db.get(index)))
            if found is not None:
                return Registration(False, found[0])
            # Claimed before the batch lands, so no claim_due can take it in between.
            claim = None
            if owner is not None:
                claim = self._leases.claim(workflow_id, owner, time.time() + lease, wake_at)

            def apply(db: Any) -> None:
                ns = table_key(Table.DATA, wid)
                changes: Changes = [(ns + k, value) for k, value in rows]
                changes += index_moves(wid, name, WorkflowState.PENDING.value, None)
                changes += alarm_moves(db.get(table_key(Table.ALARM_OF, wid)), wid, wake_at)
                fill_batch(db.write_batch(sync=self.sync), changes).write()

            try:
                await self._write("create_workflow", apply)
            except BaseException:
                if claim is not None:
                    self._leases.release(claim)
                raise
        if claim is None:
            self._wake_workers()
            return Registration(True, name)
        return Registration(True, name, replace(claim, rows=rows))

    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None:
        raw = self._read(
            "workflow_info", lambda db: db.get(table_key(Table.INDEX, encode_id(workflow_id)))
        )
        return parse_index(raw)

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        """Workflow ids in id order, all of them or those in ``state``."""
        prefix = (
            table_key(Table.STATE, encode_id(state))
            if state is not None
            else table_key(Table.INDEX)
        )

        def scan(db: Any) -> list[str]:
            ids: list[str] = []
            with db.iterator(prefix=prefix, include_value=False) as keys:
                for k in keys:
                    if len(ids) >= limit:
                        break
                    ids.append(decode_id(k[len(prefix) :]))
            return ids

        return self._read("list_workflows", scan)

    # Claims: one process owns the database, so leases and tokens live in memory.

    async def claim_due(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[Lease]:
        now = time.time() if now is None else now

        def free(workflow_id: str) -> bool:
            return self._leases.free(workflow_id, now)

        def scan(db: Any) -> list[tuple[str, float, list[tuple[bytes, bytes]]]]:
            # One snapshot: alarms and namespaces as of one instant, even with a synced
            # write landing from its thread meanwhile.
            snapshot = db.snapshot()
            try:
                return [
                    (
                        workflow_id,
                        wake_at,
                        read_rows(snapshot, table_key(Table.DATA, encode_id(workflow_id))),
                    )
                    for workflow_id, wake_at in scan_due(snapshot, now, limit, free)
                ]
            finally:
                snapshot.close()

        # Everything is read before anything is claimed: a failed read leaves no lease held.
        return [
            replace(self._leases.claim(workflow_id, owner, now + lease, wake_at), rows=namespace)
            for workflow_id, wake_at, namespace in self._read("claim_due", scan)
        ]

    async def renew(self, lease: Lease, duration: float) -> Lease | None:
        return self._leases.renew(lease, duration)

    async def release(self, lease: Lease) -> None:
        self._leases.release(lease)

    async def finish_run(
        self,
        lease: Lease,
        writes: Sequence[tuple[bytes, bytes | None]],
        state: str,
        wake_at: float | None,
    ) -> None:
        check_writes(STORE, writes, max_value=MAX_VALUE_BYTES)
        workflow_id = lease.workflow_id
        wid = encode_id(workflow_id)
        ns = table_key(Table.DATA, wid)
        data: Changes = [(ns + bytes(k), None if v is None else bytes(v)) for k, v in writes]

        def apply(db: Any) -> bool:
            name, old_state = parse_index(db.get(table_key(Table.INDEX, wid))) or ("", None)
            old = db.get(table_key(Table.ALARM_OF, wid))
            current = None if old is None else decode_time(old)
            settled = settled_alarm(current, lease.wake_at, wake_at)
            changes = data + index_moves(wid, name, state, old_state)
            changes += alarm_moves(old, wid, settled)
            batch = fill_batch(db.write_batch(sync=self.sync), changes)
            # Checked right before the batch is applied, as the fenced driver does.
            self._leases.check(lease, _map_errors, "finish_run")
            batch.write()
            return settled is not None and settled != current

        async with self._meta_lock:  # nothing else writes the index or alarm meanwhile
            alarm_set = await self._write("finish_run", apply)
            self._leases.release(lease)
        if alarm_set:
            self._wake_workers()

    async def close(self) -> None:
        """Wait for synced writes still in their thread, then release the directory lock."""
        db, self._db = self._db, None
        if db is None:
            return
        with anyio.CancelScope(shield=True):
            if self._inflight:
                self._drained = anyio.Event()
                await self._drained.wait()
            with _map_errors("close"):
                db.close()
