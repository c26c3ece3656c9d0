"""Wrapper drivers for tests: count a workflow's driver calls, or crash at a chosen write.

Plain Python (no pytest), so a test suite on any runner, or a benchmark, can use them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from engine.driver import EngineDriver

WRITE_METHODS = frozenset(
    {"set", "delete", "delete_prefix", "delete_range", "batch", "set_alarm", "clear_alarm"}
)


class SimulatedCrash(BaseException):
    """Raised by ``FaultyDriver`` in place of a write: the process "dies" at that point."""


class CountingDriver:
    """Wraps a driver and counts calls by method name (``calls["batch"]``, ...).

    A run on a wrapped driver is not leased through the inner driver's store (``store`` is
    None here): every call it makes goes through the wrapper, to be counted or crashed.
    """

    store = None

    def __init__(self, inner: EngineDriver) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.worker_poll_interval = inner.worker_poll_interval

    @property
    def writes(self) -> int:
        return sum(self.calls[name] for name in WRITE_METHODS)

    def reset(self) -> None:
        self.calls.clear()

    def _before(self, method: str) -> None:
        self.calls[method] += 1

    async def get(self, key: bytes) -> bytes | None:
        self._before("get")
        return await self.inner.get(key)

    async def set(self, key: bytes, value: bytes) -> None:
        self._before("set")
        await self.inner.set(key, value)

    async def delete(self, key: bytes) -> None:
        self._before("delete")
        await self.inner.delete(key)

    async def delete_prefix(self, prefix: bytes) -> None:
        self._before("delete_prefix")
        await self.inner.delete_prefix(prefix)

    async def delete_range(self, start: bytes, end: bytes) -> None:
        self._before("delete_range")
        await self.inner.delete_range(start, end)

    async def list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        self._before("list")
        return await self.inner.list(prefix)

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        self._before("batch")
        await self.inner.batch(writes)

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        self._before("set_alarm")
        await self.inner.set_alarm(workflow_id, wake_at)

    async def clear_alarm(self, workflow_id: str) -> None:
        self._before("clear_alarm")
        await self.inner.clear_alarm(workflow_id)

    def __getattr__(self, name: str) -> Any:
        # Optional hooks (subscribe, notify, due_alarms) pass through untouched.
        return getattr(self.inner, name)


class FaultyDriver(CountingDriver):
    """Crashes at the ``crash_at``-th write (1-based) and at every write after it.

    The write that crashes does not reach the inner driver, like a process killed just
    before its write landed; reads keep working, as they would for the next process.
    """

    def __init__(self, inner: EngineDriver, crash_at: int) -> None:
        super().__init__(inner)
        self.crash_at = crash_at
        self.crashed = False

    def _before(self, method: str) -> None:
        super()._before(method)
        if method in WRITE_METHODS and self.writes >= self.crash_at:
            self.crashed = True
            raise SimulatedCrash(f"crash injected at write {self.writes} ({method})")
