"""The storage protocol the engine runs on: bytes in, bytes out, no engine types.

One driver instance is one workflow's isolated key-value namespace. A driver MUST:

- return ``list(prefix)`` sorted by raw key bytes (unsigned, lexicographic), holding exactly
  the keys that start with ``prefix`` (the empty prefix lists the whole namespace);
- never let one namespace see or change another's keys (prefix and range isolation);
- treat ``delete_range(start, end)`` as half-open: ``start`` deleted, ``end`` kept;
- apply ``batch`` atomically: after a crash either every write of the batch is visible or
  none is (``None`` as a value deletes the key);
- keep alarms per workflow id: ``set_alarm`` replaces the previous wake time,
  ``clear_alarm`` removes it;
- raise ``engine.errors.StorageError`` (naming the store and operation) for client failures.

The engine is the single writer of a namespace while a run is in progress; only messages are
written by others, and always under fresh keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeGuard, runtime_checkable


class EngineDriver(Protocol):
    """Key-value storage and scheduling for one workflow."""

    worker_poll_interval: float
    """Seconds: a yield-mode wait no longer than this happens in memory, a longer one ends
    the run with an alarm; live runs without ``subscribe`` poll for messages this often."""

    async def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None when it is absent."""
        ...

    async def set(self, key: bytes, value: bytes) -> None:
        """Write one key."""
        ...

    async def delete(self, key: bytes) -> None:
        """Delete one key; deleting an absent key is not an error."""
        ...

    async def delete_prefix(self, prefix: bytes) -> None:
        """Delete every key that starts with ``prefix`` (the empty prefix: all of them)."""
        ...

    async def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete the keys ``k`` with ``start <= k < end`` in byte order (half-open)."""
        ...

    async def list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, sorted by raw key bytes."""
        ...

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Apply ``writes`` atomically, in order: a value of None deletes the key."""
        ...

    async def set_alarm(self, workflow_id: str, wake_at: float) -> None:
        """Make ``workflow_id`` due at the Unix time ``wake_at``, replacing its alarm."""
        ...

    async def clear_alarm(self, workflow_id: str) -> None:
        """Remove ``workflow_id``'s alarm, if it has one."""
        ...


@runtime_checkable
class WakeSource(Protocol):
    """Optional driver hook for live mode: a stream of "a message arrived" notifications.

    ``subscribe()`` returns an async context manager; once entered, every message written to
    this workflow (from any process) produces one item, so a live run never has to poll.
    """

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[None]]: ...


@runtime_checkable
class Notifier(Protocol):
    """Optional driver hook used after a message is written: tell subscribers about it."""

    async def notify(self, workflow_id: str) -> None: ...


# The engine asks these on every run. ``isinstance`` against a runtime-checkable protocol
# walks the protocol's members on each call (~5 us on Python 3.11, several times a run);
# the check is the same, an attribute look-up, so the engine asks it directly.


def is_wake_source(driver: object) -> TypeGuard[WakeSource]:
    return callable(getattr(driver, "subscribe", None))


def is_notifier(driver: object) -> TypeGuard[Notifier]:
    return callable(getattr(driver, "notify", None))
