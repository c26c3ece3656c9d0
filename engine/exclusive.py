"""One writer: at most one run of a workflow executes at any moment, however runs start.

On a store's driver (one with a ``store``), a run takes the workflow's lease, the one the
Workers claim, in the same atomic call that reads the namespace (``Claims.claim``): no
round trip of its own. Every write of the run is fenced by it, a heartbeat renews it while
the run goes on (live runs included), and the run ends with ``finish_run``, which releases
it. A run that finds the lease held raises ``WorkflowBusyError`` before anything executes
or is written; a Worker's claimed run already holds its lease and goes straight on. On a
bare driver (no store), one run at a time per driver object, kept in this process.

A lease that is lost while the run goes on (revoked by a cancel, or expired and taken over)
stops the run at its next operation; its writes are refused by the fence meanwhile.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio

from engine.constants import DEFAULT_HEARTBEAT, DEFAULT_LEASE
from engine.errors import StorageError, WorkflowBusyError, single
from engine.run import Run
from engine.runner import RunSpec, execute
from engine.state import WorkflowResult, WorkflowState
from engine.storage import Writes, commands
from engine.store import Lease, WorkerStore, bound_store, check_workflow_id

_running_on: set[int] = set()  # id() of the bare drivers a run of this process is using


async def run_exclusively(
    spec: RunSpec, attach: Callable[[Run | None], None], name: str
) -> WorkflowResult[Any]:
    """Run ``spec`` once, as the workflow's only writer; ``name`` registers a workflow the
    store does not know yet (``run_workflow`` gives the function's name)."""
    if spec.finish is not None:
        return await execute(spec, attach)  # a Worker's claim: it holds the lease already
    store = bound_store(spec.driver)
    if store is None:
        return await _on_bare_driver(spec, attach)
    check_workflow_id(spec.workflow_id, store)
    owner = f"run:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    lease = await store.claim(spec.workflow_id, owner, DEFAULT_LEASE, name)
    if lease is None:
        raise WorkflowBusyError(
            f"workflow {spec.workflow_id!r} is running elsewhere (a Worker or another "
            "run holds its lease); wait for it with a client handle's result()"
        )
    held = _HeldLease(store, lease)
    runs: list[Run] = []

    def attached(run: Run | None) -> None:
        if run is not None:
            runs.append(run)
        attach(run)

    async def lost() -> None:
        # Revoked by a cancel, or expired and taken over: stop at the next operation.
        try:
            cancelled = await commands.read_state(spec.driver, spec.workflow_id) == (
                WorkflowState.CANCELLED
            )
        except StorageError:
            cancelled = False  # evicted, then: its writes are refused either way
        for run in runs:
            run.stop(cancelled=cancelled)

    leased = replace(
        spec,
        driver=store.fenced_driver(lease),
        snapshot=lease.rows,
        finish=held.finish,
        on_wakeup=held.poke,
    )
    result: WorkflowResult[Any] | None = None
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as keeper:
            keeper.start_soon(held.keep, lost)
            try:
                result = await execute(leased, attached)
            except Exception as exc:  # raised below as it is: a group would hide its cause
                failure = exc
            finally:
                keeper.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise single(group) from None
    finally:
        await held.release()
    if failure is not None:
        raise failure
    assert result is not None
    return result


async def _on_bare_driver(
    spec: RunSpec, attach: Callable[[Run | None], None]
) -> WorkflowResult[Any]:
    check_workflow_id(spec.workflow_id)
    key = id(spec.driver)  # the driver is referenced by ``spec`` throughout: no reuse
    if key in _running_on:
        raise WorkflowBusyError(
            f"workflow {spec.workflow_id!r}: another run on this driver is going on"
        )
    _running_on.add(key)
    try:
        return await execute(spec, attach)
    finally:
        _running_on.discard(key)


class _HeldLease:
    """The lease of a run on a store's driver: renewed while it goes on, released at its end."""

    def __init__(self, store: WorkerStore, lease: Lease) -> None:
        self.store = store
        self.lease = lease
        self.finished = False
        self._poked = anyio.Event()

    async def keep(self, lost: Callable[[], Any]) -> None:
        """Renew every heartbeat, and at once when poked (a live run's wake-up may be a
        cancel); call ``lost`` when the lease is gone."""
        while True:
            with anyio.move_on_after(DEFAULT_HEARTBEAT):
                await self._poked.wait()
            self._poked = anyio.Event()
            try:
                renewed = await self.store.renew(self.lease, DEFAULT_LEASE)
            except StorageError:
                if time.time() < self.lease.expires_at:
                    continue  # the store is unreachable for now; the lease still holds
                renewed = None
            if renewed is None:
                await lost()
                return
            self.lease = renewed

    def poke(self) -> None:
        self._poked.set()

    async def finish(self, writes: Writes, state: WorkflowState, wake_at: float | None) -> None:
        await self.store.finish_run(self.lease, writes, state.value, wake_at)
        self.finished = True

    async def release(self) -> None:
        """A run that ended without ``finish`` (an error, a divergence) gives the lease up."""
        if self.finished:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release(self.lease)
            except StorageError:
                pass  # it expires by itself
