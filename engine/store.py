"""What a store (the owner of many workflows' namespaces) offers the engine and its workers.

``Store`` is the contract's minimum: isolated drivers, due alarms, close. ``WorkerStore`` adds
what many worker processes sharing one store need: an index of workflows by state, claims
under a lease with a fencing token, and drivers whose every write checks that token in the
same atomic operation (so a worker that lost its lease cannot write).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.driver import EngineDriver


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one workflow; ``token`` grows with every claim of that workflow."""

    workflow_id: str
    owner: str
    token: int
    expires_at: float
    wake_at: float | None = None  # the due alarm this claim was made for


@runtime_checkable
class Store(Protocol):
    def driver(self, workflow_id: str) -> EngineDriver: ...
    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]: ...
    async def close(self) -> None: ...


@runtime_checkable
class WorkerStore(Store, Protocol):
    """A store that workers in several processes can share.

    Contract for implementers (the conformance suite checks it):

    - ``register_workflow`` creates the index row only if absent and says whether it did.
    - ``claim_due`` atomically claims up to ``limit`` workflows whose alarm is due and whose
      lease is absent or expired; each claim increments the workflow's token.
    - ``renew`` extends a lease only if its token is still current and unexpired.
    - ``fenced_driver(lease)`` returns a driver for that workflow whose ``set``, ``delete``,
      ``delete_prefix``, ``delete_range`` and ``batch`` apply only if the lease's token is
      current and unexpired, checked in the same atomic operation as the write; otherwise
      they raise ``engine.errors.LeaseLostError`` and write nothing.
    - ``settle_alarm(workflow_id, wake_at)`` deletes the alarm only if it still holds
      ``wake_at`` (compare-and-delete): a worker consumes the alarm it claimed, while one
      set meanwhile (a message, the run's next deadline) survives.
    - ``wait_for_due(timeout)`` returns when an alarm may have become due (a pub/sub or
      LISTEN/NOTIFY wake-up where the backend has one) or after ``timeout`` seconds.
    """

    async def register_workflow(self, workflow_id: str, name: str, state: str) -> bool: ...
    async def set_index_state(self, workflow_id: str, state: str) -> None: ...
    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None: ...
    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]: ...
    async def claim_due(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[Lease]: ...
    async def renew(self, lease: Lease, duration: float) -> Lease | None: ...
    async def release(self, lease: Lease) -> None: ...
    def fenced_driver(self, lease: Lease) -> EngineDriver: ...
    async def settle_alarm(self, workflow_id: str, wake_at: float) -> None: ...
    async def wait_for_due(self, timeout: float) -> None: ...
