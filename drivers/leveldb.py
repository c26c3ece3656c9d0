"""LevelDB driver and store: the embedded default for one process that must survive a restart.

One database directory holds every workflow of the store. LevelDB allows one open handle per
directory, so one process owns the store: leases, fencing tokens and live wake-ups are kept
in memory, while data, alarms and the workflow index are durable.

Byte layout (every key starts with one ``_Table`` byte; ``id(s)`` is the UTF-8 text with
0x00 escaped as 0x00 0x01 and ended by 0x00 0x00, so no id's encoding is a prefix of another's
and "a" can never reach the keys of "a\\x00" or "a:b"; ``t`` is the wake time as 8 bytes that
sort like the float):

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
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import replace
from enum import IntEnum
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
import plyvel

from drivers._inprocess import InProcessLeases, InProcessWakeups
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.errors import CorruptedRecordError, LeaseLostError, SerializationError, StorageError
from engine.keys import pack, prefix_end, unpack
from engine.state import WorkflowState
from engine.store import Lease, Registration, creation_rows, settled_alarm

MAX_VALUE_BYTES = 16 * 1024 * 1024
"""LevelDB rewrites values on every compaction; past a few MiB that gets slow and memory-hungry."""

LAYOUT_VERSION = b"1"
_STORE = "leveldb store"
_INDEX_VERSION = 1
_T = TypeVar("_T")
_Writes = list[tuple[bytes, bytes | None]]


class _Table(IntEnum):
    """First byte of every key: which table of the database it belongs to."""

    META = 0x00
    DATA = 0x01
    ALARM_AT = 0x02
    ALARM_OF = 0x03
    INDEX = 0x04
    STATE = 0x05


def _key(table: _Table, *parts: bytes) -> bytes:
    return bytes([table]) + b"".join(parts)


def _encode_id(text: str) -> bytes:
    return text.encode("utf-8").replace(b"\x00", b"\x00\x01") + b"\x00\x00"


def _decode_id(raw: bytes) -> str:  # ``raw`` ends with one ``_encode_id`` encoding
    return raw[:-2].replace(b"\x00\x01", b"\x00").decode("utf-8")


def _encode_time(wake_at: float) -> bytes:
    # IEEE 754 bits sort like the float once positives get the sign bit and negatives flip all.
    (bits,) = struct.unpack(">Q", struct.pack(">d", wake_at))
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
    return struct.pack(">Q", bits)


def _decode_time(raw: bytes) -> float:
    (bits,) = struct.unpack(">Q", raw)
    bits = bits & ~(1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
    return cast(float, struct.unpack(">d", struct.pack(">Q", bits))[0])


@contextmanager
def _map_errors(operation: str) -> Iterator[None]:
    """Translate plyvel's exceptions into the engine's ``StorageError`` at the boundary."""
    try:
        yield
    except (plyvel.Error, OSError, RuntimeError) as exc:  # RuntimeError: database is closed
        raise StorageError(_STORE, operation, exc) from exc


def _check(key: object, value: object) -> None:
    """Validate before writing, so a bad value can never leave half a batch applied."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"driver keys are bytes, got {type(key).__name__}")
    if value is None:
        return
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"driver values are bytes or None, got {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise SerializationError(
            f"{_STORE}: value for key {bytes(key[:80])!r} is {len(value)} bytes, "
            f"above MAX_VALUE_BYTES ({MAX_VALUE_BYTES})"
        )


class LevelDBDriver:
    """One workflow's namespace: every key is stored under ``DATA id(workflow)``."""

    def __init__(self, store: LevelDBStore, workflow_id: str) -> None:
        self.worker_poll_interval = store.worker_poll_interval
        self._store = store
        self._workflow_id = workflow_id
        self._ns = _key(_Table.DATA, _encode_id(workflow_id))

    def _before_write(self, operation: str) -> None:
        """Hook run right before a batch is applied; the fenced driver checks its lease."""

    def _apply(
        self, operation: str, collect: Callable[[Any], Sequence[tuple[bytes, bytes | None]]]
    ) -> Callable[[Any], None]:
        def apply(db: Any) -> None:
            batch = _fill(db.write_batch(sync=self._store.sync), collect(db))
            self._before_write(operation)
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

    async def _delete_span(self, operation: str, start: bytes, stop: bytes) -> None:
        def collect(db: Any) -> list[tuple[bytes, bytes | None]]:
            keys = db.iterator(start=start, stop=stop, include_value=False)
            return [(key, None) for key in keys]

        await self._store._write(operation, self._apply(operation, collect))

    async def list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return self._store._read("list", lambda db: _rows(db, self._ns, prefix))

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        for key, value in writes:
            _check(key, value)
        if not writes:
            self._before_write("batch")  # nothing to write; a lost lease still reports itself
            return
        prefixed = [(self._ns + bytes(key), None if v is None else bytes(v)) for key, v in writes]
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


class _FencedLevelDBDriver(LevelDBDriver):
    """A driver whose writes apply only while ``lease`` is the workflow's current lease."""

    def __init__(self, store: LevelDBStore, lease: Lease) -> None:
        super().__init__(store, lease.workflow_id)
        self._lease = lease

    def _before_write(self, operation: str) -> None:
        # Runs after the batch is built and right before it is applied (in the writing thread
        # for synced writes), so a takeover during an earlier await is still caught.
        if not self._store._leases.holds(self._lease):
            raise LeaseLostError(_STORE, f"{operation} of workflow {self._lease.workflow_id!r}")


class LevelDBStore:
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
            raise StorageError(_STORE, operation, exc) from exc
        meta = _key(_Table.META, b"layout")
        with _map_errors(operation):
            found = self._db.get(meta)
            if found is None:
                self._db.put(meta, LAYOUT_VERSION, sync=sync)
        if found not in (None, LAYOUT_VERSION):
            self._db.close()
            raise StorageError(_STORE, f"{operation}: layout version {found!r} is not supported")
        self._meta_lock = anyio.Lock()  # alarm and index updates read before they write
        self._inflight = 0
        self._drained: anyio.Event | None = None
        self._alarm_changed: anyio.Event | None = None
        self._subscribers = InProcessWakeups()
        self._leases = InProcessLeases()

    def driver(self, workflow_id: str) -> LevelDBDriver:
        return LevelDBDriver(self, workflow_id)

    # Calls into plyvel: on the loop, except synced writes when ``fsync_in_thread``.

    def _open_db(self, operation: str) -> Any:
        if self._db is None:
            raise StorageError(_STORE, f"{operation} (store {self.path!r} is closed)")
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
        wid = _encode_id(workflow_id)

        def apply(db: Any) -> None:
            moves = _alarm_moves(db.get(_key(_Table.ALARM_OF, wid)), wid, wake_at)
            if moves:
                _fill(db.write_batch(sync=self.sync), moves).write()

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
        return self._read("due_alarms", lambda db: _due(db, cutoff, limit, lambda _: True))

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
        for key, value in writes:
            _check(key, value)
        rows = creation_rows(writes)
        wid = _encode_id(workflow_id)
        index = _key(_Table.INDEX, wid)
        async with self._meta_lock:  # nothing else writes the index or alarm meanwhile
            found = _parse_index(self._read("create_workflow", lambda db: db.get(index)))
            if found is not None:
                return Registration(False, found[0])
            # Claimed before the batch lands, so no claim_due can take it in between.
            claim = None
            if owner is not None:
                claim = self._leases.claim(workflow_id, owner, time.time() + lease, wake_at)

            def apply(db: Any) -> None:
                ns = _key(_Table.DATA, wid)
                changes: _Writes = [(ns + key, value) for key, value in rows]
                changes += _index_moves(wid, name, WorkflowState.PENDING.value, None)
                changes += _alarm_moves(db.get(_key(_Table.ALARM_OF, wid)), wid, wake_at)
                _fill(db.write_batch(sync=self.sync), changes).write()

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
            "workflow_info", lambda db: db.get(_key(_Table.INDEX, _encode_id(workflow_id)))
        )
        return _parse_index(raw)

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        """Workflow ids in id order, all of them or those in ``state``."""
        prefix = _key(_Table.STATE, _encode_id(state)) if state is not None else _key(_Table.INDEX)

        def scan(db: Any) -> list[str]:
            ids: list[str] = []
            with db.iterator(prefix=prefix, include_value=False) as keys:
                for key in keys:
                    if len(ids) >= limit:
                        break
                    ids.append(_decode_id(key[len(prefix) :]))
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
                        _rows(snapshot, _key(_Table.DATA, _encode_id(workflow_id))),
                    )
                    for workflow_id, wake_at in _due(snapshot, now, limit, free)
                ]
            finally:
                snapshot.close()

        # Everything is read before anything is claimed: a failed read leaves no lease held.
        return [
            replace(self._leases.claim(workflow_id, owner, now + lease, wake_at), rows=rows)
            for workflow_id, wake_at, rows in self._read("claim_due", scan)
        ]

    async def renew(self, lease: Lease, duration: float) -> Lease | None:
        return self._leases.renew(lease, duration)

    async def release(self, lease: Lease) -> None:
        self._leases.release(lease)

    def fenced_driver(self, lease: Lease) -> LevelDBDriver:
        return _FencedLevelDBDriver(self, lease)

    async def finish_run(
        self,
        lease: Lease,
        writes: Sequence[tuple[bytes, bytes | None]],
        state: str,
        wake_at: float | None,
    ) -> None:
        for key, value in writes:
            _check(key, value)
        workflow_id = lease.workflow_id
        wid = _encode_id(workflow_id)
        ns = _key(_Table.DATA, wid)
        data: _Writes = [(ns + bytes(k), None if v is None else bytes(v)) for k, v in writes]

        def apply(db: Any) -> bool:
            name, old_state = _parse_index(db.get(_key(_Table.INDEX, wid))) or ("", None)
            old = db.get(_key(_Table.ALARM_OF, wid))
            current = None if old is None else _decode_time(old)
            settled = settled_alarm(current, lease.wake_at, wake_at)
            changes = data + _index_moves(wid, name, state, old_state)
            changes += _alarm_moves(old, wid, settled)
            batch = _fill(db.write_batch(sync=self.sync), changes)
            # Checked right before the batch is applied, as the fenced driver does.
            if not self._leases.holds(lease):
                raise LeaseLostError(_STORE, f"finish_run of workflow {workflow_id!r}")
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

    async def __aenter__(self) -> LevelDBStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _fill(batch: Any, writes: Sequence[tuple[bytes, bytes | None]]) -> Any:
    """Add ``writes`` (``None`` deletes) to ``batch``, in order: a later write of a key wins."""
    for key, value in writes:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    return batch


def _rows(db: Any, ns: bytes, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
    """A namespace's rows under ``prefix``, keys without the namespace (``driver.list``)."""
    cut = len(ns)
    with db.iterator(prefix=ns + prefix) as items:
        return [(key[cut:], value) for key, value in items]


def _due(
    db: Any, cutoff: float, limit: int, accept: Callable[[str], bool]
) -> list[tuple[str, float]]:
    """Up to ``limit`` accepted alarms due at ``cutoff``, earliest first: one range scan."""
    start = _key(_Table.ALARM_AT)
    due: list[tuple[str, float]] = []
    stop = prefix_end(start + _encode_time(cutoff))
    with db.iterator(start=start, stop=stop, include_value=False) as keys:
        for key in keys:
            if len(due) >= limit:
                break
            workflow_id = _decode_id(key[9:])
            if accept(workflow_id):
                due.append((workflow_id, _decode_time(key[1:9])))
    return due


def _alarm_moves(old: bytes | None, wid: bytes, wake_at: float | None) -> _Writes:
    """The writes that move an alarm from ``old`` (its ALARM_OF value) to ``wake_at``."""
    new = None if wake_at is None else _encode_time(wake_at)
    if new == old:
        return []
    moves: _Writes = [] if old is None else [(_key(_Table.ALARM_AT, old, wid), None)]
    if new is None:
        return [*moves, (_key(_Table.ALARM_OF, wid), None)]
    return [*moves, (_key(_Table.ALARM_AT, new, wid), b""), (_key(_Table.ALARM_OF, wid), new)]


def _index_moves(wid: bytes, name: str, state: str, old_state: str | None) -> _Writes:
    """The writes that record ``state`` in the index, moving it out of ``old_state``."""
    moves: _Writes = []
    if old_state is not None and old_state != state:
        moves.append((_key(_Table.STATE, _encode_id(old_state), wid), None))
    moves.append((_key(_Table.INDEX, wid), pack((_INDEX_VERSION, name, state))))
    moves.append((_key(_Table.STATE, _encode_id(state), wid), b""))
    return moves


def _parse_index(raw: bytes | None) -> tuple[str, str] | None:
    if raw is None:
        return None
    try:
        version, name, state = unpack(raw)
    except ValueError as exc:
        raise CorruptedRecordError(f"{_STORE}: workflow index record {raw!r} is damaged") from exc
    if version != _INDEX_VERSION or not isinstance(name, str) or not isinstance(state, str):
        raise CorruptedRecordError(f"{_STORE}: workflow index record {raw!r} is not version 1")
    return name, state
