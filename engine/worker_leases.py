"""A worker's claims and their leases: one slot per claimed workflow, and the heartbeat
that keeps every running lease alive."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from engine.errors import StorageError
from engine.handle import WorkflowHandle
from engine.store import Lease, WorkerStore


@dataclass
class Slot:
    """One claimed workflow: its current lease and, once started, its run."""

    lease: Lease
    renew_at: float  # time.monotonic() of the next renewal; inf while one is under way
    handle: WorkflowHandle[Any] | None = None
    lost: bool = False
    finished: bool = False  # the run ended through finish_run: lease released, alarm settled
    done: bool = False


class Heartbeat:
    """Renews each running lease ``heartbeat`` seconds after its claim or last renewal.

    One task for the whole worker, not one per run: most runs end before their first
    renewal, and they then cost no task at all. Each renewal runs in a task of its own, so
    a slow one holds up no other. It never sleeps past a renewal: any lease claimed while
    it sleeps is due a whole ``heartbeat`` later, after its wake-up. A lease found gone is
    handed to ``lost``.
    """

    def __init__(
        self,
        store: WorkerStore,
        lease: float,
        heartbeat: float,
        slots: dict[str, Slot],
        log: Callable[..., None],
        lost: Callable[[Slot], None],
    ) -> None:
        self.store = store
        self.lease = lease
        self.heartbeat = heartbeat
        self.slots = slots
        self._log = log
        self._lost = lost

    async def run(self, service: TaskGroup) -> None:
        while True:
            now = time.monotonic()
            for slot in list(self.slots.values()):
                if slot.renew_at <= now:
                    slot.renew_at = math.inf
                    service.start_soon(self._renew, slot)
            due = min((slot.renew_at for slot in self.slots.values()), default=math.inf)
            await anyio.sleep(max(0.0, min(due, now + self.heartbeat) - time.monotonic()))

    async def _renew(self, slot: Slot) -> None:
        if slot.done:
            return
        try:
            renewed = await self.store.renew(slot.lease, self.lease)
        except StorageError as exc:
            self._log(
                logging.WARNING, "store_error", slot.lease.workflow_id, operation="renew", error=exc
            )
            if time.time() < slot.lease.expires_at:
                slot.renew_at = time.monotonic() + self.heartbeat  # the lease may still hold
                return
            renewed = None
        if renewed is None:
            if not slot.done:
                self._lost(slot)
            return
        slot.lease = renewed
        slot.renew_at = time.monotonic() + self.heartbeat

    async def release(self, lease: Lease) -> None:
        """Give a lease up, even while being cancelled; a failure only means it expires."""
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release(lease)
            except StorageError as exc:
                self._log(
                    logging.WARNING,
                    "store_error",
                    lease.workflow_id,
                    operation="release",
                    error=exc,
                )
