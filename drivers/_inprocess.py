"""What the stores that one process owns (memory, LevelDB) keep in memory: live-mode
wake-ups and worker leases."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from drivers._common import ErrorMap
from engine.store import Lease


class InProcessWakeups:
    """Subscriptions by workflow id; a notification with none open is simply dropped."""

    def __init__(self) -> None:
        self.streams: dict[str, set[MemoryObjectSendStream[None]]] = {}

    @asynccontextmanager
    async def subscribe(self, workflow_id: str) -> AsyncIterator[AsyncIterator[None]]:
        send, receive = anyio.create_memory_object_stream[None](max_buffer_size=64)
        self.streams.setdefault(workflow_id, set()).add(send)
        try:
            async with receive:
                yield receive
        finally:
            self.streams[workflow_id].discard(send)
            send.close()

    def notify(self, workflow_id: str) -> None:
        for stream in self.streams.get(workflow_id, ()):
            try:
                stream.send_nowait(None)
            except anyio.WouldBlock:
                pass  # a wake-up is already queued; one is enough


class InProcessLeases:
    """Leases and fencing tokens kept in memory, for a store that one process owns.

    A token grows with every claim of a workflow, so a holder whose lease expired and was
    claimed again can never pass ``holds`` with its old token.
    """

    def __init__(self) -> None:
        self._current: dict[str, Lease] = {}
        self._tokens: dict[str, int] = {}

    def free(self, workflow_id: str, now: float) -> bool:
        held = self._current.get(workflow_id)
        return held is None or held.expires_at <= now

    def claim(self, workflow_id: str, owner: str, expires_at: float, wake_at: float) -> Lease:
        token = self._tokens.get(workflow_id, 0) + 1
        self._tokens[workflow_id] = token
        lease = Lease(workflow_id, owner, token, expires_at, wake_at)
        self._current[workflow_id] = lease
        return lease

    def holds(self, lease: Lease) -> bool:
        current = self._current.get(lease.workflow_id)
        return (
            current is not None
            and current.token == lease.token
            and current.expires_at > time.time()
        )

    def check(self, lease: Lease, errors: ErrorMap, operation: str) -> None:
        """Fence a write: raise ``LeaseLostError`` unless ``lease`` is current. Called in the
        same step as the write it guards (no await between them), so nothing can take the
        workflow over in between."""
        if not self.holds(lease):
            raise errors.lease_lost(operation, lease.workflow_id)

    def renew(self, lease: Lease, duration: float) -> Lease | None:
        if not self.holds(lease):
            return None
        renewed = Lease(
            lease.workflow_id, lease.owner, lease.token, time.time() + duration, lease.wake_at
        )
        self._current[lease.workflow_id] = renewed
        return renewed

    def release(self, lease: Lease) -> None:
        current = self._current.get(lease.workflow_id)
        if current is not None and current.token == lease.token:
            del self._current[lease.workflow_id]
