"""In-memory driver and store: for tests, demos and workflows that need no durability.

Keys are kept in a sorted list beside a dict, so ``list`` is a bisect plus a slice and byte
order is Python's ``bytes`` order (unsigned lexicographic), exactly what drivers must give.
"""

from __future__ import annotations

import bisect
import builtins
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio

from drivers._inprocess import InProcessLeases, InProcessWakeups
from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.errors import LeaseLostError
from engine.state import WorkflowState
from engine.store import Lease, Registration, creation_rows, settled_alarm


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

    def remove_span(self, lo: int, hi: int) -> None:
        for key in self.order[lo:hi]:
            del self.values[key]
        del self.order[lo:hi]

    def prefix_span(self, prefix: bytes) -> tuple[int, int]:
        lo = bisect.bisect_left(self.order, prefix)
        hi = lo
        while hi < len(self.order) and self.order[hi].startswith(prefix):
            hi += 1
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
    """One workflow's namespace in memory.

    Args:
        worker_poll_interval: sleeps shorter than this wait in memory, longer ones yield.
        latency: simulated seconds per call, to see how the engine behaves on a slow store.
    """

    def __init__(
        self,
        *,
        worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
        latency: float = 0.0,
        _namespace: _Namespace | None = None,
        _alarms: _Alarms | None = None,
        _subscribers: InProcessWakeups | None = None,
        _workflow_id: str | None = None,
    ) -> None:
        self.worker_poll_interval = worker_poll_interval
        self.latency = latency
        self._ns = _namespace or _Namespace()
        self._alarms = _alarms or _Alarms()
        self._subscribers = _subscribers or InProcessWakeups()
        self._workflow_id = _workflow_id

    async def _tick(self) -> None:
        if self.latency:
            await anyio.sleep(self.latency)

    async def get(self, key: bytes) -> bytes | None:
        await self._tick()
        return self._ns.values.get(key)

    async def set(self, key: bytes, value: bytes) -> None:
        _check_bytes(key, value)
        await self._tick()
        self._ns.put(bytes(key), bytes(value))

    async def delete(self, key: bytes) -> None:
        await self._tick()
        self._ns.remove(key)

    async def delete_prefix(self, prefix: bytes) -> None:
        await self._tick()
        self._ns.remove_span(*self._ns.prefix_span(prefix))

    async def delete_range(self, start: bytes, end: bytes) -> None:
        await self._tick()
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
        # Validate everything first so a bad write cannot leave half a batch applied.
        for key, value in writes:
            _check_bytes(key, value)
        await self._tick()
        for key, value in writes:
            if value is None:
                self._ns.remove(bytes(key))
            else:
                self._ns.put(bytes(key), bytes(value))

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        await self._tick()
        self._alarms.set(workflow_id, wake_at)

    async def clear_alarm(self, workflow_id: str) -> None:
        await self._tick()
        self._alarms.wake_at.pop(workflow_id, None)

    # Beyond the protocol: live-mode wake-ups and alarm inspection for tests and demos.

    def subscribe(self) -> Any:
        return self._subscribers.subscribe(self._workflow_id or "")

    async def notify(self, workflow_id: str) -> None:
        self._subscribers.notify(self._workflow_id or workflow_id)

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> builtins.list[tuple[str, float]]:
        return self._alarms.due(now, limit)

    def alarm(self, workflow_id: str) -> float | None:
        """The wake time currently set for ``workflow_id`` (for tests and tools)."""
        return self._alarms.wake_at.get(workflow_id)

    def key_count(self) -> int:
        return len(self._ns.order)


class _FencedMemoryDriver(MemoryDriver):
    """A driver whose writes apply only while ``lease`` is the workflow's current lease."""

    def __init__(self, store: MemoryStore, lease: Lease, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store
        self._lease = lease

    def _check_lease(self, operation: str) -> None:
        if not self._store._leases.holds(self._lease):
            raise LeaseLostError(
                "memory store", f"{operation} of workflow {self._lease.workflow_id!r}"
            )

    async def set(self, key: bytes, value: bytes) -> None:
        self._check_lease("set")
        await super().set(key, value)

    async def delete(self, key: bytes) -> None:
        self._check_lease("delete")
        await super().delete(key)

    async def delete_prefix(self, prefix: bytes) -> None:
        self._check_lease("delete_prefix")
        await super().delete_prefix(prefix)

    async def delete_range(self, start: bytes, end: bytes) -> None:
        self._check_lease("delete_range")
        await super().delete_range(start, end)

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        for key, value in writes:
            _check_bytes(key, value)
        await self._tick()
        self._check_lease(
            "batch"
        )  # after the simulated latency: the check and the write are one step
        saved, self.latency = self.latency, 0.0
        try:
            await super().batch(writes)
        finally:
            self.latency = saved


def _check_bytes(key: object, value: object) -> None:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"driver keys are bytes, got {type(key).__name__}")
    if value is not None and not isinstance(value, bytes | bytearray):
        raise TypeError(f"driver values are bytes or None, got {type(value).__name__}")


class MemoryStore:
    """Hands out isolated in-memory drivers that share one alarm index."""

    def __init__(
        self, *, worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL, latency: float = 0.0
    ) -> None:
        self.worker_poll_interval = worker_poll_interval
        self.latency = latency
        self._namespaces: dict[str, _Namespace] = {}
        self._alarms = _Alarms()
        self._subscribers = InProcessWakeups()
        self._index: dict[str, tuple[str, str]] = {}
        self._leases = InProcessLeases()

    def _driver_kwargs(self, workflow_id: str) -> dict[str, Any]:
        return {
            "worker_poll_interval": self.worker_poll_interval,
            "latency": self.latency,
            "_namespace": self._namespaces.setdefault(workflow_id, _Namespace()),
            "_alarms": self._alarms,
            "_subscribers": self._subscribers,
            "_workflow_id": workflow_id,
        }

    def driver(self, workflow_id: str) -> MemoryDriver:
        return MemoryDriver(**self._driver_kwargs(workflow_id))

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
        for key, value in writes:
            _check_bytes(key, value)
        rows = creation_rows(writes)
        if workflow_id in self._index:
            return Registration(False, self._index[workflow_id][0])
        self._index[workflow_id] = (name, WorkflowState.PENDING.value)
        namespace = self._namespaces.setdefault(workflow_id, _Namespace())
        for key, value in rows:
            namespace.put(key, value)
        if owner is None:
            self._alarms.set(workflow_id, wake_at)
            return Registration(True, name)
        self._alarms.wake_at[workflow_id] = wake_at  # claimed: no wake-up for other workers
        claim = self._leases.claim(workflow_id, owner, time.time() + lease, wake_at)
        return Registration(True, name, replace(claim, rows=rows))

    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None:
        return self._index.get(workflow_id)

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        ids = sorted(w for w, (_, s) in self._index.items() if state is None or s == state)
        return ids[:limit]

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
                rows = [(key, namespace.values[key]) for key in namespace.order]
                claimed.append(replace(claim, rows=rows))
        return claimed

    async def renew(self, lease: Lease, duration: float) -> Lease | None:
        return self._leases.renew(lease, duration)

    async def release(self, lease: Lease) -> None:
        self._leases.release(lease)

    def fenced_driver(self, lease: Lease) -> MemoryDriver:
        return _FencedMemoryDriver(self, lease, **self._driver_kwargs(lease.workflow_id))

    async def finish_run(
        self,
        lease: Lease,
        writes: Sequence[tuple[bytes, bytes | None]],
        state: str,
        wake_at: float | None,
    ) -> None:
        workflow_id = lease.workflow_id
        await self.fenced_driver(lease).batch(writes)  # checks the lease, then writes
        name, _ = self._index.get(workflow_id, ("", state))
        self._index[workflow_id] = (name, state)
        alarms = self._alarms.wake_at
        settled = settled_alarm(alarms.get(workflow_id), lease.wake_at, wake_at)
        if settled is None:
            alarms.pop(workflow_id, None)
        elif settled != alarms.get(workflow_id):
            self._alarms.set(workflow_id, settled)
        self._leases.release(lease)

    async def wait_for_due(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._alarms.changed.wait()

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        return self._alarms.due(now, limit)

    def key_count(self) -> int:
        return sum(len(ns.order) for ns in self._namespaces.values())

    async def close(self) -> None:
        """Nothing to release; present so every store closes the same way."""

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
