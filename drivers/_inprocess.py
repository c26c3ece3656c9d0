"""What the stores that one process owns (memory, LevelDB) keep in memory: live-mode
wake-ups and worker leases, and how they pick the workflow rows a client lists."""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from drivers._common import ErrorMap
from engine.state import WorkflowState
from engine.store import Lease, WorkflowRow


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
        # Fenced writes under way in other threads, by workflow (``writing``).
        self._writing: dict[str, int] = {}
        self._landed = threading.Condition()

    def free(self, workflow_id: str, now: float) -> bool:
        held = self._current.get(workflow_id)
        return held is None or held.expires_at <= now

    def reported_state(self, workflow_id: str, recorded: str, now: float) -> str:
        """The state a workflow row reports (``WorkflowRow``): ``running`` while its lease
        is live, else the state the index recorded."""
        return recorded if self.free(workflow_id, now) else WorkflowState.RUNNING.value

    def claim(
        self, workflow_id: str, owner: str, expires_at: float, wake_at: float | None
    ) -> Lease:
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

    @contextmanager
    def writing(self, lease: Lease, errors: ErrorMap, operation: str) -> Iterator[None]:
        """``check`` for a write made in a thread: the block (the write) is counted until it
        ends, so ``wait_for_writes`` sees a write that passed its fence before a ``revoke``."""
        workflow_id = lease.workflow_id
        with self._landed:
            self._writing[workflow_id] = self._writing.get(workflow_id, 0) + 1
        try:
            self.check(lease, errors, operation)
            yield
        finally:
            with self._landed:
                left = self._writing[workflow_id] - 1
                if left:
                    self._writing[workflow_id] = left
                else:
                    del self._writing[workflow_id]
                    self._landed.notify_all()

    def revoke(self, workflow_id: str) -> Lease:
        """Take the workflow's lease from whoever holds it, for the store itself: a lease
        with the next token that never expires. The holder's writes, renewal and
        ``finish_run`` are refused from now on, and no claim can take the workflow until the
        caller releases the returned lease, once its own write (a cancel) has landed.

        Called on the event loop, where every claim is made, so tokens never race.
        """
        return self.claim(workflow_id, "", math.inf, None)

    def wait_for_writes(self, workflow_id: str) -> None:
        """Wait until the fenced writes of the workflow that passed their check in other
        threads (``writing``) have landed: after a ``revoke``, none can land later than the
        caller's next write. Without threads writing, it returns at once."""
        with self._landed:
            while self._writing.get(workflow_id):
                self._landed.wait()

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


def newest_first(rows: Iterable[WorkflowRow], limit: int) -> list[WorkflowRow]:
    """Up to ``limit`` rows, most recently updated first (``workflow_rows``); ids break ties."""
    return heapq.nsmallest(max(limit, 0), rows, key=lambda row: (-row.updated_at, row.workflow_id))
