"""What a store (the owner of many workflows' namespaces) offers the engine and its workers.

``Store`` is the contract's minimum: isolated drivers, due alarms, close. ``WorkerStore`` adds
what many worker processes sharing one store need: an index of workflows by state, claims
under a lease with a fencing token, and drivers whose every write checks that token in the
same atomic operation (so a worker that lost its lease cannot write).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    # The workflow's namespace (``driver.list(b"")``) as read by the claim, so the run
    # starts without another round trip; None on a renewed lease.
    rows: list[tuple[bytes, bytes]] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Registration:
    """What ``create_workflow`` found or did.

    ``created`` is False when the id already existed: nothing was written and ``name`` is
    the name it was registered with. ``lease`` is the claim made with the creation, when
    one was asked for.
    """

    created: bool
    name: str
    lease: Lease | None = None


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

    Contract for implementers (the conformance suite checks it). "Atomically" means one
    operation that lands entirely or not at all (a Lua script, one SQL statement, one
    LevelDB write batch):

    - ``create_workflow(workflow_id, name, writes, wake_at, owner=None, lease=0.0)``: if the
      id is absent from the index, atomically add it (``name``, state ``pending``), apply
      ``writes`` to its namespace and set its alarm to ``wake_at``; with an ``owner``, also
      claim it for ``lease`` seconds (the returned lease's ``rows`` are the ``writes``, its
      ``wake_at`` the alarm set) and send no wake-up, since no one else may run it. If the
      id exists, change nothing and report the registered name.
    - ``claim_due`` atomically claims up to ``limit`` workflows whose alarm is due and whose
      lease is absent or expired; each claim increments the workflow's token and carries
      the workflow's namespace in ``rows``, read in the same atomic operation.
    - ``renew`` extends a lease only if its token is still current and unexpired.
    - ``fenced_driver(lease)`` returns a driver for that workflow whose ``set``, ``delete``,
      ``delete_prefix``, ``delete_range`` and ``batch`` apply only if the lease's token is
      current and unexpired, checked in the same atomic operation as the write; otherwise
      they raise ``engine.errors.LeaseLostError`` and write nothing.
    - ``finish_run(lease, writes, state, wake_at)``: a run is over. Fenced like a write,
      and atomically: apply ``writes``, record ``state`` in the index, settle the alarm and
      release the lease (its token stays used). Settling: if the alarm still holds the
      claimed ``lease.wake_at``, it becomes ``wake_at`` (deleted when None); an alarm set
      since the claim (a message, a new deadline) is kept, lowered to ``wake_at`` if that
      is earlier.
    - ``release(lease)`` gives a lease up early (the token stays used); a lease that is no
      longer current is left alone.
    - ``wait_for_due(timeout)`` returns when an alarm may have become due (a pub/sub or
      LISTEN/NOTIFY wake-up where the backend has one) or after ``timeout`` seconds.
    """

    async def create_workflow(
        self,
        workflow_id: str,
        name: str,
        writes: Sequence[tuple[bytes, bytes]],
        wake_at: float,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> Registration: ...
    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None: ...
    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]: ...
    async def claim_due(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[Lease]: ...
    async def renew(self, lease: Lease, duration: float) -> Lease | None: ...
    async def release(self, lease: Lease) -> None: ...
    def fenced_driver(self, lease: Lease) -> EngineDriver: ...
    async def finish_run(
        self,
        lease: Lease,
        writes: Sequence[tuple[bytes, bytes | None]],
        state: str,
        wake_at: float | None,
    ) -> None: ...
    async def wait_for_due(self, timeout: float) -> None: ...


def settled_alarm(
    current: float | None, claimed: float | None, wake_at: float | None
) -> float | None:
    """The alarm a finished run leaves (``finish_run``), for stores that compute it in Python.

    ``current`` is the alarm now, ``claimed`` the one the run was claimed for, ``wake_at``
    the run's own next wake-up (None: it needs none).
    """
    if current is None or current == claimed:
        return wake_at
    return current if wake_at is None else min(current, wake_at)


def creation_rows(writes: Sequence[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes]]:
    """What ``create_workflow`` leaves in a new namespace: each key once (a later write
    wins), in key order. Stores validate with it before sending anything; a delete has no
    place in a creation."""
    rows: dict[bytes, bytes] = {}
    for key, value in writes:
        if value is None:
            raise TypeError(f"create_workflow writes set values, got a delete of {key!r}")
        rows[bytes(key)] = bytes(value)
    return sorted(rows.items())
