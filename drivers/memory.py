"""In-memory driver and store: for tests, demos and workflows that need no durability.

Keys are kept in a sorted list beside a dict, so ``list`` is a bisect plus a slice and byte
order is Python's ``bytes`` order (unsigned lexicographic), exactly what drivers must give.

Limits: values of any size; workflow ids of 1 to ``MAX_ID_BYTES`` bytes of UTF-8.
"""

from __future__ import annotations

import bisect
import builtins
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, NamedTuple, Self

import anyio

from drivers._common import (
    ErrorMap,
    Lifecycle,
    check_workflow_id,
    check_writes,
    prefix_end,
    refuse_namespace,
    store_url,
)
from drivers._inprocess import InProcessLeases, InProcessWakeups, newest_first
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.state import WorkflowState
from engine.store import Lease, Registration, WorkflowRow, creation_rows, settled_alarm

_STORE = "memory store"
_ERRORS = ErrorMap(_STORE)  # no client to fail: only fenced writes raise, LeaseLostError
MAX_ID_BYTES = 1024
"""The longest workflow id in UTF-8, as LevelDB's: an id that works here works there."""


class _Indexed(NamedTuple):
    """A workflow in the index: its registered name, recorded state and last change."""

    name: str
    state: str
    updated_at: float


class _Namespace:
    """One workflow's keys: a dict for lookups and a sorted key list for ranges."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.order: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.values:
            bisect.insort(self.order, key)
        self.values[key] = value

    def remove(self, key: bytes) -> None:
        if self.values.pop(key, None) is not None:
            del self.order[bisect.bisect_left(self.order, key)]

    def apply(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        for key, value in writes:  # in order: a later write of a key wins
            if value is None:
                self.remove(bytes(key))
            else:
                self.put(bytes(key), bytes(value))

    def rows(self) -> list[tuple[bytes, bytes]]:
        return [(key, self.values[key]) for key in self.order]

    def remove_span(self, lo: int, hi: int) -> None:
        for key in self.order[lo:hi]:
            del self.values[key]
        del self.order[lo:hi]

    def prefix_span(self, prefix: bytes) -> tuple[int, int]:
        """The slice of ``order`` holding the keys that start with ``prefix``: two bisects."""
        lo = bisect.bisect_left(self.order, prefix)
        end = prefix_end(prefix)
        hi = len(self.order) if end is None else bisect.bisect_left(self.order, end, lo)
        return lo, hi


class _Alarms:
    """Wake times by workflow id, shared by every driver of one store."""

    def __init__(self) -> None:
        self.wake_at: dict[str, float] = {}
        self.changed = anyio.Event()

    def set(self, workflow_id: str, wake_at: float) -> None:
        self.wake_at[workflow_id] = wake_at
        self.changed.set()
        self.changed = anyio.Event()

    def due(self, now: float | None, limit: int) -> list[tuple[str, float]]:
        cutoff = time.time() if now is None else now
        due = sorted((at, wid) for wid, at in self.wake_at.items() if at <= cutoff)
        return [(wid, at) for at, wid in due[:limit]]


class MemoryDriver:
    """One workflow's namespace in memory; with a ``lease``, every write is fenced by it.

    ``MemoryDriver()`` alone is a namespace with a store of its own (nothing to share).

    Args:
        store: the store whose namespace ``workflow_id`` this driver reads and writes.
        workflow_id: the workflow; None for a driver with a store of its own.
        lease: writes apply only while this is the workflow's current lease
            (``MemoryStore.fenced_driver``), checked right before each write applies.
        worker_poll_interval: without a store: sleeps shorter than this wait in memory,
            longer ones yield (with a store: the store's).
        latency: without a store: simulated seconds per call, to see how the engine behaves
            on a slow store (with a store: the store's).
    """

    max_value_bytes = sys.maxsize  # no limit but memory

    def __init__(
        self,
        store: MemoryStore | None = None,
        workflow_id: str | None = None,
        lease: Lease | None = None,
        *,
        worker_poll_interval: float | None = None,
        latency: float | None = None,
    ) -> None:
        bare = store is None
        if store is None:
            store = MemoryStore(
                worker_poll_interval=DEFAULT_WORKER_POLL_INTERVAL
                if worker_poll_interval is None
                else worker_poll_interval,
                latency=latency or 0.0,
            )
        elif worker_poll_interval is not None or latency is not None:
            raise TypeError("a driver of a MemoryStore takes the store's poll interval and latency")
        self.worker_poll_interval = store.worker_poll_interval
        self.latency = store.latency
        self._store = store
        # The store a run leases the workflow through: none for a bare ``MemoryDriver()``,
        # whose namespace is its own (one run at a time per driver object, then).
        self.store: MemoryStore | None = None if bare else store
        self._workflow_id = workflow_id
        self._lease = lease
        self._ns = store._namespaces.setdefault(workflow_id or "", _Namespace())
        self._alarms = store._alarms

    async def _tick(self) -> None:
        if self.latency:
            await anyio.sleep(self.latency)

    def _fence(self, operation: str) -> None:
        # After the simulated latency, right before the write: the check and the write are
        # one step, so no takeover can come between them.
        if self._lease is not None:
            self._store._leases.check(self._lease, _ERRORS, operation)

    async def get(self, key: bytes) -> bytes | None:
        await self._tick()
        return self._ns.values.get(key)

    async def set(self, key: bytes, value: bytes) -> None:
        check_writes(_STORE, [(key, value)])
        await self._tick()
        self._fence("set")
        self._ns.put(bytes(key), bytes(value))

    async def delete(self, key: bytes) -> None:
        await self._tick()
        self._fence("delete")
        self._ns.remove(key)

    async def delete_prefix(self, prefix: bytes) -> None:
        await self._tick()
        self._fence("delete_prefix")
        self._ns.remove_span(*self._ns.prefix_span(prefix))

    async def delete_range(self, start: bytes, end: bytes) -> None:
        await self._tick()
        self._fence("delete_range")
        if start >= end:
            return
        lo = bisect.bisect_left(self._ns.order, start)
        hi = bisect.bisect_left(self._ns.order, end)
        self._ns.remove_span(lo, hi)

    async def list(self, prefix: bytes) -> builtins.list[tuple[bytes, bytes]]:
        await self._tick()
        lo, hi = self._ns.prefix_span(prefix)
        values = self._ns.values
        return [(key, values[key]) for key in self._ns.order[lo:hi]]

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        check_writes(_STORE, writes)  # all of them first: a bad write applies none
        await self._tick()
        self._fence("batch")
        self._ns.apply(writes)

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        await self._tick()
        self._alarms.set(workflow_id, wake_at)

    async def clear_alarm(self, workflow_id: str) -> None:
        await self._tick()
        self._alarms.wake_at.pop(workflow_id, None)

    # Beyond the protocol: live-mode wake-ups and alarm inspection for tests and demos.

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[None]]:
        return self._store._subscribers.subscribe(self._workflow_id or "")

    async def notify(self, workflow_id: str) -> None:
        self._store._subscribers.notify(self._workflow_id or workflow_id)

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> builtins.list[tuple[str, float]]:
        """Up to ``limit`` ``(workflow_id, wake_at)`` pairs whose alarm is due at ``now``
        (the current time when None), earliest first."""
        return self._alarms.due(now, limit)

    def alarm(self, workflow_id: str) -> float | None:
        """The wake time currently set for ``workflow_id`` (for tests and tools)."""
        return self._alarms.wake_at.get(workflow_id)

    def key_count(self) -> int:
        """How many keys this namespace holds (for tests of bounded history)."""
        return len(self._ns.order)


class MemoryStore(Lifecycle):
    """Hands out isolated in-memory drivers that share one alarm index.

    Args:
        worker_poll_interval: sleeps shorter than this wait in memory, longer ones yield.
        latency: simulated seconds per driver call, to see how the engine behaves on a slow
            store.
    """

    max_value_bytes = sys.maxsize  # no limit but memory

    def __init__(
        self, *, worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL, latency: float = 0.0
    ) -> None:
        self.worker_poll_interval = worker_poll_interval
        self.latency = latency
        self._namespaces: dict[str, _Namespace] = {}
        self._alarms = _Alarms()
        self._subscribers = InProcessWakeups()
        self._index: dict[str, _Indexed] = {}
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
        """``memory://``: a new empty store, shared with no one (demos and tests).

        ``options`` go to the constructor (``latency``); a memory store has no namespace.
        """
        store_url(url, _STORE, ("memory",))
        refuse_namespace(_STORE, namespace)
        return cls(worker_poll_interval=worker_poll_interval, **options)

    def driver(self, workflow_id: str) -> MemoryDriver:
        """The namespace of ``workflow_id``: a driver that reads and writes only its keys."""
        return MemoryDriver(self, workflow_id)

    def fenced_driver(self, lease: Lease) -> MemoryDriver:
        return MemoryDriver(self, lease.workflow_id, lease)

    def check_workflow_id(self, workflow_id: str) -> None:
        """Raise ``ValueError`` naming the store and its limit for an id it cannot hold:
        empty, not UTF-8 encodable, or over ``MAX_ID_BYTES`` in UTF-8."""
        check_workflow_id(_STORE, workflow_id, MAX_ID_BYTES)

    # Worker support (engine.store.WorkerStore): one process, so claims live in memory.

    async def create_workflow(
        self,
        workflow_id: str,
        name: str,
        writes: Sequence[tuple[bytes, bytes]],
        wake_at: float,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> Registration:
        check_writes(_STORE, writes)
        rows = creation_rows(writes)
        found = self._index.get(workflow_id)
        if found is not None:
            return Registration(False, found.name)
        self._index[workflow_id] = _Indexed(name, WorkflowState.PENDING.value, time.time())
        self._namespaces.setdefault(workflow_id, _Namespace()).apply(rows)
        if owner is None:
            self._alarms.set(workflow_id, wake_at)
            return Registration(True, name)
        self._alarms.wake_at[workflow_id] = wake_at  # claimed: no wake-up for other workers
        claim = self._leases.claim(workflow_id, owner, time.time() + lease, wake_at)
        return Registration(True, name, replace(claim, rows=rows))

    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None:
        found = self._index.get(workflow_id)
        return None if found is None else (found.name, found.state)

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        ids = sorted(w for w, found in self._index.items() if state is None or found.state == state)
        return ids[:limit]

    async def workflow_rows(
        self, *, state: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowRow]:
        now = time.time()
        rows = (
            self._row(workflow_id, found, now)
            for workflow_id, found in self._index.items()
            if name is None or found.name == name
        )
        return newest_first((row for row in rows if state is None or row.state == state), limit)

    async def workflow_row(self, workflow_id: str) -> WorkflowRow | None:
        found = self._index.get(workflow_id)
        return None if found is None else self._row(workflow_id, found, time.time())

    def _row(self, workflow_id: str, found: _Indexed, now: float) -> WorkflowRow:
        state = self._leases.reported_state(workflow_id, found.state, now)
        wake_at = self._alarms.wake_at.get(workflow_id)
        return WorkflowRow(workflow_id, found.name, state, wake_at, found.updated_at)

    async def claim_due(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[Lease]:
        now = time.time() if now is None else now
        claimed: list[Lease] = []
        for workflow_id, wake_at in self._alarms.due(now, len(self._alarms.wake_at)):
            if len(claimed) >= limit:
                break
            if self._leases.free(workflow_id, now):
                claim = self._leases.claim(workflow_id, owner, now + lease, wake_at)
                namespace = self._namespaces.get(workflow_id, _Namespace())
                claimed.append(replace(claim, rows=namespace.rows()))
        return claimed

    async def claim(
        self, workflow_id: str, owner: str, lease: float, name: str, now: float | None = None
    ) -> Lease | None:
        """Take the workflow's lease unless a live one is held; the index row's
        ``updated_at`` becomes ``now``."""
        now = time.time() if now is None else now
        if not self._leases.free(workflow_id, now):
            return None
        found = self._index.get(workflow_id)
        self._index[workflow_id] = (
            _Indexed(name, WorkflowState.PENDING.value, now)
            if found is None
            else found._replace(updated_at=now)
        )
        wake_at = self._alarms.wake_at.get(workflow_id)
        taken = self._leases.claim(workflow_id, owner, now + lease, wake_at)
        namespace = self._namespaces.get(workflow_id, _Namespace())
        return replace(taken, rows=namespace.rows())

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
        workflow_id = lease.workflow_id
        await self.fenced_driver(lease).batch(writes)  # checks the lease, then writes
        found = self._index.get(workflow_id)
        self._index[workflow_id] = _Indexed(found.name if found else "", state, time.time())
        alarms = self._alarms.wake_at
        settled = settled_alarm(alarms.get(workflow_id), lease.wake_at, wake_at)
        if settled is None:
            alarms.pop(workflow_id, None)
        elif settled != alarms.get(workflow_id):
            self._alarms.set(workflow_id, settled)
        self._leases.release(lease)
        self._subscribers.notify(workflow_id)

    async def post_message(
        self, workflow_id: str, key: bytes, value: bytes, wake_at: float
    ) -> None:
        check_writes(_STORE, [(key, value)])
        self._namespaces.setdefault(workflow_id, _Namespace()).put(bytes(key), bytes(value))
        self._alarms.set(workflow_id, wake_at)  # wakes wait_for_due
        self._subscribers.notify(workflow_id)

    async def cancel(self, workflow_id: str, writes: Sequence[tuple[bytes, bytes]]) -> None:
        check_writes(_STORE, writes)
        revoked = self._leases.revoke(workflow_id)  # the holder is fenced off from here on
        self._namespaces.setdefault(workflow_id, _Namespace()).apply(writes)
        found = self._index.get(workflow_id)
        if found is not None:
            self._index[workflow_id] = _Indexed(
                found.name, WorkflowState.CANCELLED.value, time.time()
            )
        self._alarms.wake_at.pop(workflow_id, None)
        self._leases.release(revoked)
        self._subscribers.notify(workflow_id)

    async def wait_for_due(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._alarms.changed.wait()

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` ``(workflow_id, wake_at)`` pairs whose alarm is due at ``now``
        (the current time when None), earliest first."""
        return self._alarms.due(now, limit)

    def key_count(self) -> int:
        """How many keys every namespace of the store holds together (for tests)."""
        return sum(len(ns.order) for ns in self._namespaces.values())

    async def close(self) -> None:
        """Nothing to release; present so every store closes the same way."""
