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
INDEX id(workflow)             ``keys.pack((version, name, state, t))``, t its last change
STATE id(state) id(workflow)   empty: ``list_workflows(state)`` is a prefix scan
=============================  ===============================================

``create_workflow``, ``claim``, ``finish_run``, ``post_message`` and ``cancel`` each write
their DATA, INDEX, STATE and alarm rows in one write batch, so a crash never leaves a
workflow indexed without its input or alarm, finished without its state, a message without
its alarm or a cancel half done. A database of layout 1 (index records without their last
change) is upgraded in place when opened (``_leveldb_layout.upgrade``).

``workflow_rows`` scans the whole index and sorts it (a client's listing, not a hot path);
``workflow_row`` is two reads.

Limits: values up to ``MAX_VALUE_BYTES``; workflow ids of 1 to ``MAX_ID_BYTES`` bytes of
UTF-8 (a lone surrogate cannot be stored).

Threads: by default every call runs on the loop, and ``fsync_in_thread=True`` moves synced
writes to a thread (measurements and reasons in ``_leveldb_handle``, which owns the handle).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, Self, cast
from urllib.parse import unquote

try:
    import plyvel  # noqa: F401 - imported here so a missing extra is named at once
except ImportError as exc:  # the client is an extra: say which
    raise ImportError(
        "drivers.leveldb needs plyvel: pip install 'durable-engine[leveldb]'"
    ) from exc

from drivers._common import (
    check_workflow_id,
    check_writes,
    prefix_end,
    refuse_namespace,
    store_url,
)
from drivers._inprocess import InProcessLeases, InProcessWakeups, newest_first
from drivers._leveldb_handle import DatabaseHandle
from drivers._leveldb_handle import map_errors as _map_errors
from drivers._leveldb_layout import (
    STORE,
    Changes,
    Indexed,
    Table,
    alarm_moves,
    decode_id,
    decode_time,
    encode_id,
    fill_batch,
    index_moves,
    parse_index,
    read_alarm,
    read_rows,
    scan_due,
    scan_index,
    table_key,
)
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.state import WorkflowState
from engine.store import Lease, Registration, WorkflowRow, creation_rows, settled_alarm

MAX_VALUE_BYTES = 16 * 1024 * 1024
"""LevelDB rewrites values on every compaction; past a few MiB that gets slow and memory-hungry."""
MAX_ID_BYTES = 1024
"""An id is part of every key of its workflow; LevelDB keys stay small so blocks stay dense."""


class LevelDBDriver:
    """One workflow's namespace, every key stored under ``DATA id(workflow)``; with a
    ``lease``, every write is fenced by it."""

    max_value_bytes = MAX_VALUE_BYTES

    def __init__(self, store: LevelDBStore, workflow_id: str, lease: Lease | None = None) -> None:
        self.worker_poll_interval = store.worker_poll_interval
        self.store = store
        self._workflow_id = workflow_id
        self._lease = lease
        self._ns = table_key(Table.DATA, encode_id(workflow_id))

    def _fence(self, operation: str) -> None:
        # Runs after the batch is built and right before it is applied (in the writing thread
        # for synced writes), so a takeover during an earlier await is still caught.
        if self._lease is not None:
            self.store._leases.check(self._lease, _map_errors, operation)

    def _apply(
        self, operation: str, collect: Callable[[Any], Sequence[tuple[bytes, bytes | None]]]
    ) -> Callable[[Any], None]:
        lease, store = self._lease, self.store

        def apply(db: Any) -> None:
            batch = fill_batch(db.write_batch(sync=store.sync), collect(db))
            if lease is None or not store._threaded:
                self._fence(operation)
                batch.write()
                return
            # In a thread, a cancel may revoke the lease between the check and the write: it
            # waits for this write to land before it writes its own (Cancel wins).
            with store._leases.writing(lease, _map_errors, operation):
                batch.write()

        return apply

    async def get(self, key: bytes) -> bytes | None:
        return cast("bytes | None", self.store._read("get", lambda db: db.get(self._ns + key)))

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

        await self.store._write(operation, self._apply(operation, collect))

    async def list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return self.store._read("list", lambda db: read_rows(db, self._ns, prefix))

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        check_writes(STORE, writes, max_value=MAX_VALUE_BYTES)
        if not writes:
            self._fence("batch")  # nothing to write; a lost lease still reports itself
            return
        prefixed = [(self._ns + bytes(k), None if v is None else bytes(v)) for k, v in writes]
        await self.store._write("batch", self._apply("batch", lambda db: prefixed))

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        await self.store._set_alarm(workflow_id, wake_at)

    async def clear_alarm(self, workflow_id: str) -> None:
        await self.store._set_alarm(workflow_id, None)

    # Beyond the protocol: live-mode wake-ups (one process owns the database).

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[None]]:
        return self.store._subscribers.subscribe(self._workflow_id)

    async def notify(self, workflow_id: str) -> None:
        self.store._subscribers.notify(self._workflow_id)


class LevelDBStore(DatabaseHandle):
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

    max_value_bytes = MAX_VALUE_BYTES

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        fsync_in_thread: bool = False,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
    ) -> None:
        super().__init__(path, sync=sync, fsync_in_thread=fsync_in_thread)
        self.worker_poll_interval = worker_poll_interval
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
        """The namespace of ``workflow_id``: a driver that reads and writes only its keys."""
        return LevelDBDriver(self, workflow_id)

    def fenced_driver(self, lease: Lease) -> LevelDBDriver:
        return LevelDBDriver(self, lease.workflow_id, lease)

    def check_workflow_id(self, workflow_id: str) -> None:
        """Raise ``ValueError`` naming the store and its limit for an id it cannot hold:
        empty, not UTF-8 encodable, or over ``MAX_ID_BYTES`` in UTF-8."""
        check_workflow_id(STORE, workflow_id, MAX_ID_BYTES)

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
                return Registration(False, found.name)
            # Claimed before the batch lands, so no claim_due can take it in between.
            claim = None
            if owner is not None:
                claim = self._leases.claim(workflow_id, owner, time.time() + lease, wake_at)

            def apply(db: Any) -> None:
                ns = table_key(Table.DATA, wid)
                changes: Changes = [(ns + k, value) for k, value in rows]
                changes += index_moves(wid, name, WorkflowState.PENDING.value, None, time.time())
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
        found = parse_index(raw)
        return None if found is None else (found.name, found.state)

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

    async def workflow_rows(
        self, *, state: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowRow]:
        """A scan of the whole index, sorted: fine for a client's listing, not a hot path."""
        now = time.time()

        def scan(db: Any) -> list[WorkflowRow]:
            with db.snapshot() as snapshot:  # the index and its alarms as of one instant
                rows = (
                    self._row(workflow_id, indexed, now)
                    for workflow_id, indexed in scan_index(snapshot)
                    if name is None or indexed.name == name
                )
                chosen = newest_first((r for r in rows if state is None or r.state == state), limit)
                return [self._with_alarm(snapshot, row) for row in chosen]

        return self._read("workflow_rows", scan)

    async def workflow_row(self, workflow_id: str) -> WorkflowRow | None:
        wid = encode_id(workflow_id)

        def read(db: Any) -> WorkflowRow | None:
            with db.snapshot() as snapshot:
                indexed = parse_index(snapshot.get(table_key(Table.INDEX, wid)))
                if indexed is None:
                    return None
                return self._with_alarm(snapshot, self._row(workflow_id, indexed, time.time()))

        return self._read("workflow_row", read)

    def _row(self, workflow_id: str, indexed: Indexed, now: float) -> WorkflowRow:
        """The row without its alarm: what ``workflow_rows`` filters and sorts on."""
        state = self._leases.reported_state(workflow_id, indexed.state, now)
        return WorkflowRow(workflow_id, indexed.name, state, None, indexed.updated_at)

    @staticmethod
    def _with_alarm(db: Any, row: WorkflowRow) -> WorkflowRow:
        return replace(row, wake_at=read_alarm(db, encode_id(row.workflow_id)))

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

    async def claim(
        self, workflow_id: str, owner: str, lease: float, name: str, now: float | None = None
    ) -> Lease | None:
        """Take the workflow's lease unless a live one is held: the index row (registered if
        absent) gets ``updated_at`` ``now`` in one write batch."""
        now = time.time() if now is None else now
        wid = encode_id(workflow_id)
        index = table_key(Table.INDEX, wid)

        def read(db: Any) -> tuple[Indexed | None, float | None, list[tuple[bytes, bytes]]]:
            with db.snapshot() as snapshot:  # the index, alarm and namespace of one instant
                return (
                    parse_index(snapshot.get(index)),
                    read_alarm(snapshot, wid),
                    read_rows(snapshot, table_key(Table.DATA, wid)),
                )

        async with self._meta_lock:  # nothing else writes the index or alarm meanwhile
            if not self._leases.free(workflow_id, now):
                return None
            found, wake_at, rows = self._read("claim", read)
            # Claimed before the batch lands, with nothing awaited since the read.
            taken = self._leases.claim(workflow_id, owner, now + lease, wake_at)
            if found is None:
                moves = index_moves(wid, name, WorkflowState.PENDING.value, None, now)
            else:
                moves = index_moves(wid, found.name, found.state, found.state, now)
            try:
                await self._write(
                    "claim", lambda db: fill_batch(db.write_batch(sync=self.sync), moves).write()
                )
            except BaseException:
                self._leases.release(taken)
                raise
        return replace(taken, rows=rows)

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
            found = parse_index(db.get(table_key(Table.INDEX, wid)))
            name, old_state = ("", None) if found is None else (found.name, found.state)
            old = db.get(table_key(Table.ALARM_OF, wid))
            current = None if old is None else decode_time(old)
            settled = settled_alarm(current, lease.wake_at, wake_at)
            changes = data + index_moves(wid, name, state, old_state, time.time())
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
        self._subscribers.notify(workflow_id)

    async def post_message(
        self, workflow_id: str, key: bytes, value: bytes, wake_at: float
    ) -> None:
        check_writes(STORE, [(key, value)], max_value=MAX_VALUE_BYTES)
        wid = encode_id(workflow_id)
        row = (table_key(Table.DATA, wid) + bytes(key), bytes(value))

        def apply(db: Any) -> None:
            moves = alarm_moves(db.get(table_key(Table.ALARM_OF, wid)), wid, wake_at)
            fill_batch(db.write_batch(sync=self.sync), [row, *moves]).write()

        async with self._meta_lock:  # nothing else writes the alarm meanwhile
            await self._write("post_message", apply)
        self._wake_workers()
        self._subscribers.notify(workflow_id)

    async def cancel(self, workflow_id: str, writes: Sequence[tuple[bytes, bytes]]) -> None:
        """One write batch. The lease is revoked before it is written and no claim can take
        the workflow until it has landed (a failed write leaves the workflow uncancelled and
        its holder fenced off: the next claim runs it)."""
        check_writes(STORE, writes, max_value=MAX_VALUE_BYTES)
        wid = encode_id(workflow_id)
        ns = table_key(Table.DATA, wid)
        data: Changes = [(ns + bytes(k), None if v is None else bytes(v)) for k, v in writes]

        def apply(db: Any) -> None:
            changes = list(data)
            found = parse_index(db.get(table_key(Table.INDEX, wid)))
            if found is not None:
                cancelled = WorkflowState.CANCELLED.value
                changes += index_moves(wid, found.name, cancelled, found.state, time.time())
            changes += alarm_moves(db.get(table_key(Table.ALARM_OF, wid)), wid, None)
            batch = fill_batch(db.write_batch(sync=self.sync), changes)
            # A write of the old holder's that passed its fence in a thread lands first.
            self._leases.wait_for_writes(workflow_id)
            batch.write()

        async with self._meta_lock:  # nothing else writes the index or alarm meanwhile
            revoked = self._leases.revoke(workflow_id)
            try:
                await self._write("cancel", apply)
            finally:
                self._leases.release(revoked)
        self._subscribers.notify(workflow_id)
