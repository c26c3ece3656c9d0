"""The LevelDB store's handle on its database: opening it (upgrading an older layout), reads
on the loop, writes on the loop or in a thread, alarms, and closing once writes in flight
have landed. ``drivers/leveldb.py`` builds the store, its drivers, index and claims on it.

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
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import plyvel

from drivers._common import ErrorMap, Lifecycle
from drivers._leveldb_layout import (
    LAYOUT_VERSION,
    STORE,
    Table,
    alarm_moves,
    encode_id,
    fill_batch,
    scan_due,
    table_key,
    upgrade,
)
from engine.errors import StorageError

_T = TypeVar("_T")
# RuntimeError: the database is closed.
map_errors = ErrorMap(STORE, plyvel.Error, OSError, RuntimeError)


class DatabaseHandle(Lifecycle):
    """One open LevelDB directory (``LevelDBStore`` documents the arguments)."""

    def __init__(self, path: str | os.PathLike[str], *, sync: bool, fsync_in_thread: bool) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        self.fsync_in_thread = fsync_in_thread
        self._threaded = sync and fsync_in_thread  # writes go to a worker thread
        operation = f"open of {self.path!r}"
        try:
            self._db: Any = plyvel.DB(self.path, create_if_missing=True)
        except plyvel.Error as exc:
            if "lock" in str(exc).lower():
                operation += " (directory locked by another process or another open store)"
            raise StorageError(STORE, operation, exc) from exc
        meta = table_key(Table.META, b"layout")
        try:  # a database this code cannot use is closed again, its lock released
            with map_errors(operation):
                found = self._db.get(meta)
                if found is None:
                    self._db.put(meta, LAYOUT_VERSION, sync=sync)
                elif found != LAYOUT_VERSION and not upgrade(self._db, found, sync):
                    message = f"{operation}: layout version {found!r} is not supported"
                    raise StorageError(STORE, message)
        except BaseException:
            self._db.close()
            raise
        self._meta_lock = anyio.Lock()  # alarm and index updates read before they write
        self._inflight = 0
        self._drained: anyio.Event | None = None
        self._alarm_changed: anyio.Event | None = None

    # Calls into plyvel: on the loop, except synced writes when ``fsync_in_thread``.

    def _open_db(self, operation: str) -> Any:
        if self._db is None:
            raise StorageError(STORE, f"{operation} (store {self.path!r} is closed)")
        return self._db

    def _read(self, operation: str, read: Callable[[Any], _T]) -> _T:
        db = self._open_db(operation)
        with map_errors(operation):
            return read(db)

    async def _write(self, operation: str, apply: Callable[[Any], _T]) -> _T:
        db = self._open_db(operation)
        if not self._threaded:
            with map_errors(operation):
                return apply(db)
        self._inflight += 1  # close() waits for these before it closes the handle
        try:
            with map_errors(operation):
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
        """Up to ``limit`` ``(workflow_id, wake_at)`` pairs whose alarm is due at ``now``
        (the current time when None), earliest first."""
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

    async def close(self) -> None:
        """Wait for synced writes still in their thread, then release the directory lock."""
        db, self._db = self._db, None
        if db is None:
            return
        with anyio.CancelScope(shield=True):
            if self._inflight:
                self._drained = anyio.Event()
                await self._drained.wait()
            with map_errors("close"):
                db.close()
