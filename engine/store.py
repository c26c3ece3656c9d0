"""What a store (the owner of many workflows' namespaces) offers the engine and its workers.

``Store`` is the contract's minimum: isolated drivers, due alarms, close. ``WorkerStore`` adds
what many worker processes sharing one store need, in two parts: a ``WorkflowIndex`` of
workflows by state, and ``Claims`` under a lease with a fencing token, with drivers whose
every write checks that token in the same atomic operation (so a worker that lost its lease
cannot write).

A store is opened from a URL by ``engine.cli.open_store``, which finds its class by URL
scheme and calls its ``async from_url(url, *, namespace=None, worker_poll_interval=...,
**options)``.
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
    """The claimed workflow."""
    owner: str
    """Who holds it: a worker's id, or a ``run:`` id for ``run_workflow``."""
    token: int
    """The fencing token every write under this lease is checked against."""
    expires_at: float
    """When the lease ends unless renewed, a Unix time."""
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


@dataclass(frozen=True)
class WorkflowRow:
    """One workflow as the index knows it (``WorkflowIndex.workflow_rows``).

    ``state`` is ``running`` while a lease on the workflow is live (held and unexpired),
    whatever the index recorded last; ``wake_at`` is its alarm (None: none); ``updated_at``
    when the index last changed it (created, claimed, finished, cancelled), epoch seconds.
    """

    workflow_id: str
    name: str
    state: str
    wake_at: float | None
    updated_at: float


@runtime_checkable
class Store(Protocol):
    """What every store offers: isolated drivers, due alarms, close."""

    def driver(self, workflow_id: str) -> EngineDriver:
        """The namespace of ``workflow_id``: a driver that reads and writes only its keys."""
        ...

    async def due_alarms(
        self, now: float | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` ``(workflow_id, wake_at)`` pairs whose alarm is due at ``now``
        (the current time when None), earliest first."""
        ...

    async def close(self) -> None:
        """Release connections and locks; the store is unusable afterwards."""
        ...


@runtime_checkable
class Limits(Protocol):
    """What a store can hold: the engine checks ids when a run or a start begins and values
    when it encodes them, so nothing too big or malformed reaches the store half-way."""

    max_value_bytes: int
    """The largest value the store takes (a step's output, an input, a message) in bytes."""

    def check_workflow_id(self, workflow_id: str) -> None:
        """Raise ``ValueError`` naming the store and its limit when the store cannot hold
        ``workflow_id`` (too long in UTF-8, a character it cannot store)."""
        ...


# "Atomically" below means one operation that lands entirely or not at all (a Lua script, one
# SQL statement, one LevelDB write batch). The conformance suite checks every clause.


@runtime_checkable
class WorkflowIndex(Protocol):
    """The workflows a store holds, by id, with their registered name and state."""

    async def create_workflow(
        self,
        workflow_id: str,
        name: str,
        writes: Sequence[tuple[bytes, bytes]],
        wake_at: float,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> Registration:
        """Register a workflow, if its id is new.

        If the id is absent from the index, atomically add it (``name``, state ``pending``),
        apply ``writes`` to its namespace and set its alarm to ``wake_at``; with an
        ``owner``, also claim it for ``lease`` seconds (the returned lease's ``rows`` are the
        ``writes``, its ``wake_at`` the alarm set) and send no wake-up, since no one else may
        run it. If the id exists, change nothing and report the registered name.
        """
        ...

    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None:
        """The registered ``(name, state)`` of a workflow; None for an unknown id."""
        ...

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        """Up to ``limit`` workflow ids in id order: all of them, or those in ``state``."""
        ...

    async def workflow_rows(
        self, *, state: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowRow]:
        """Up to ``limit`` registered workflows, most recently updated first, those in
        ``state`` (``running``: a live lease) and registered as ``name`` when given."""
        ...

    async def workflow_row(self, workflow_id: str) -> WorkflowRow | None:
        """One workflow's row; None for an id the index does not hold."""
        ...


@runtime_checkable
class Claims(Protocol):
    """Leases on workflows, each with a fencing token that every write of its holder checks."""

    async def claim_due(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[Lease]:
        """Atomically claim up to ``limit`` workflows whose alarm is due at ``now`` (the
        current time when None) and whose lease is absent or expired, for ``lease`` seconds.

        Each claim increments the workflow's token and carries the workflow's namespace in
        ``rows``, read in the same atomic operation.
        """
        ...

    async def renew(self, lease: Lease, duration: float) -> Lease | None:
        """Extend a lease by ``duration`` seconds from now, only if its token is still current
        and unexpired; None if it is not (the holder lost it)."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give a lease up early (the token stays used); a lease that is no longer current is
        left alone."""
        ...

    async def claim(
        self, workflow_id: str, owner: str, lease: float, name: str, now: float | None = None
    ) -> Lease | None:
        """Atomically take one workflow's lease for ``lease`` seconds, whether or not its
        alarm is due: the lease ``run_workflow`` holds.

        If the workflow's lease is absent or expired at ``now``: increment its token, take
        the lease, register the workflow in the index if absent (``name``, state
        ``pending``), and return the lease with ``rows`` (its namespace, read in the same
        atomic operation) and ``wake_at`` (its alarm then, None if none). If a live lease
        is held by anyone (the same owner included), change nothing and return None.
        """
        ...

    async def post_message(
        self, workflow_id: str, key: bytes, value: bytes, wake_at: float
    ) -> None:
        """Atomically write a message row (``key`` is fresh, not fenced: anyone may send) and
        set the workflow's alarm to ``wake_at``; then wake live runs and idle workers."""
        ...

    async def cancel(self, workflow_id: str, writes: Sequence[tuple[bytes, bytes]]) -> None:
        """Atomically apply ``writes`` (the state field), record state ``cancelled`` in the
        index (for a registered workflow), clear the alarm and revoke any lease, keeping its
        token used, so the holder's next write, renewal or ``finish_run`` is refused; then
        wake the workflow's subscribers."""
        ...

    def fenced_driver(self, lease: Lease) -> EngineDriver:
        """A driver for the lease's workflow whose writes apply only under that lease.

        Its ``set``, ``delete``, ``delete_prefix``, ``delete_range`` and ``batch`` apply only
        if the lease's token is current and unexpired, checked in the same atomic operation
        as the write; otherwise they raise ``engine.errors.LeaseLostError`` and write nothing.
        """
        ...

    async def finish_run(
        self,
        lease: Lease,
        writes: Sequence[tuple[bytes, bytes | None]],
        state: str,
        wake_at: float | None,
    ) -> None:
        """End a claimed run: fenced like a write, and atomically apply ``writes``, record
        ``state`` in the index, settle the alarm and release the lease (its token stays used).

        Settling (``settled_alarm``): if the alarm still holds the claimed ``lease.wake_at``,
        it becomes ``wake_at`` (deleted when None); an alarm set since the claim (a message, a
        new deadline) is kept, lowered to ``wake_at`` if that is earlier. Once a run that
        ended for good (``completed``, ``failed``) landed, the workflow's subscribers
        (``driver.subscribe()``) are woken, so a waiting client sees it at once; a store may
        wake them on other ends too.
        """
        ...

    async def wait_for_due(self, timeout: float) -> None:
        """Return when an alarm may have become due (a pub/sub or LISTEN/NOTIFY wake-up where
        the backend has one) or after ``timeout`` seconds."""
        ...


@runtime_checkable
class WorkerStore(Store, Limits, WorkflowIndex, Claims, Protocol):
    """A store that workers in several processes can share: a ``Store`` with its
    ``Limits``, a ``WorkflowIndex`` and ``Claims``."""


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


def bound_store(driver: object) -> WorkerStore | None:
    """The store a driver was handed out by (its ``store`` attribute), when that store
    keeps leases: runs on it hold the workflow's lease, messages and cancels go through it."""
    store = getattr(driver, "store", None)
    return store if callable(getattr(store, "claim", None)) else None


def check_workflow_id(workflow_id: object, store: object = None) -> None:
    """A workflow id the engine and, when given, the store can hold; ``ValueError`` if not."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    try:
        workflow_id.encode()
    except UnicodeEncodeError:
        raise ValueError(f"workflow_id {workflow_id!r} cannot be encoded as UTF-8") from None
    check = getattr(store, "check_workflow_id", None)
    if check is not None:
        check(workflow_id)
