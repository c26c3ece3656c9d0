"""``Worker``: claims due workflows from a shared store and runs them under a lease.

One loop claims (at most as many workflows as there are free slots), one task per claimed
workflow runs it in yield mode on a *fenced* driver, and one heartbeat task renews every
running lease each ``heartbeat`` seconds. The fence is what makes a single writer: a worker
that lost its lease (paused, partitioned, slow) has every write rejected by the store in
the same atomic operation, so it abandons the run instead of corrupting history. A run ends
with one ``finish_run``: its last writes, its state in the index, the alarm it claimed
consumed (compare-and-delete, so an alarm set meanwhile by a message or the run's next
deadline survives) and the lease released.

What it reports (counters and one structured log record per event) is
``engine.worker_events``.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from engine.constants import (
    DEFAULT_HEARTBEAT,
    DEFAULT_LEASE,
    DEFAULT_WORKER_CONCURRENCY,
    DIVERGENCE_BACKOFF,
    DIVERGENCE_BACKOFF_MAX,
)
from engine.errors import (
    CorruptedRecordError,
    HistoryDivergedError,
    LeaseLostError,
    StorageError,
)
from engine.handle import WorkflowHandle
from engine.records import MISSING
from engine.runner import RunSpec, WorkflowFn
from engine.start import StartedWorkflow, create
from engine.state import WorkflowState
from engine.storage import Writes, commands
from engine.store import Lease, WorkerStore
from engine.worker_events import EventLog, WorkerStats
from engine.worker_leases import Heartbeat, Slot


class Worker:
    """Runs registered workflows that are due in ``store``, ``concurrency`` at a time.

    ``await worker.run()`` claims due workflows under a lease, runs each in yield mode on a
    driver fenced by the lease's token, and renews running leases every ``heartbeat``
    seconds, until ``stop()``, SIGTERM or SIGINT. Any number of workers may share a Redis
    or Postgres store (LevelDB and memory: one process).

    Args:
        store: a store shared by every worker (Redis, Postgres; LevelDB and memory in one
            process).
        workflows: registered name -> ``async def fn(ctx, input)``.
        concurrency: most workflows run at once by this worker, an int >= 1 (default 20).
        lease: seconds a claim lasts without renewal; another worker takes over after that
            (default 30.0).
        heartbeat: seconds between renewals, ``0 < heartbeat < lease`` (default 10.0).
        grace: on stop, seconds running steps get to finish before their runs are cancelled
            (default ``lease``: after that the lease is gone and no write could land anyway).
        poll_interval: seconds between looks for due workflows when the store sends no
            wake-up (default: the store's ``worker_poll_interval``).
        handle_signals: stop gracefully on SIGTERM/SIGINT (main thread only; default True).
        worker_id: the name in leases and logs (default ``host:pid:random``).

    Attributes:
        stats: a ``WorkerStats`` of what this worker did since it started.

    Raises:
        ValueError: ``concurrency < 1``, or not ``0 < heartbeat < lease``.
        TypeError: a registered function is not callable.
    """

    def __init__(
        self,
        store: WorkerStore,
        workflows: Mapping[str, WorkflowFn],
        concurrency: int = DEFAULT_WORKER_CONCURRENCY,
        lease: float = DEFAULT_LEASE,
        heartbeat: float = DEFAULT_HEARTBEAT,
        *,
        grace: float | None = None,
        poll_interval: float | None = None,
        handle_signals: bool = True,
        worker_id: str | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not lease > 0 or not 0 < heartbeat < lease:
            raise ValueError(f"need 0 < heartbeat < lease, got {heartbeat=} {lease=}")
        for name, fn in workflows.items():
            if not callable(fn):
                raise TypeError(f"workflow {name!r}: expected an async function fn(ctx, input)")
        self.store = store
        self.workflows = dict(workflows)
        self.concurrency = concurrency
        self.lease = float(lease)
        self.heartbeat = float(heartbeat)
        self.grace = self.lease if grace is None else float(grace)
        self.poll_interval = float(
            poll_interval
            if poll_interval is not None
            else getattr(store, "worker_poll_interval", 1.0)
        )
        self.handle_signals = handle_signals
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        events = EventLog(self.worker_id)
        self._log = events.log
        self._slots: dict[str, Slot] = {}
        self._beat = Heartbeat(
            store, self.lease, self.heartbeat, self._slots, self._log, self._lose
        )
        self._held: dict[str, Lease] = {}  # unknown workflows, held off for a while
        self._kick = anyio.Event()
        self._stop = anyio.Event()
        self._started = False
        self._task_groups: tuple[TaskGroup, TaskGroup] | None = None  # (runs, service)
        self._reserved = 0  # slots promised to eager starts whose store call is under way
        self._more_due = False  # the last claim was skipped or filled every free slot
        self._divergences: dict[str, int] = {}  # workflow id -> divergences in a row
        self._refill = max(1, concurrency // 4)  # free slots worth a claim when saturated

    # Lifecycle

    async def run(self) -> None:
        """Claim and run due workflows until ``stop()`` (or SIGTERM/SIGINT); then drain.

        Raises:
            RuntimeError: this worker has run before (make a new one).
        """
        if self._started:
            raise RuntimeError(f"worker {self.worker_id} has already run")
        self._started = True
        self._log(
            logging.INFO,
            "worker_started",
            concurrency=self.concurrency,
            lease=self.lease,
            heartbeat=self.heartbeat,
        )
        async with anyio.create_task_group() as service:
            if self.handle_signals:
                await service.start(self._watch_signals)
            service.start_soon(self._watch_due)
            service.start_soon(self._beat.run, service)
            async with anyio.create_task_group() as runs:
                service.start_soon(self._enforce_grace, runs)
                self._task_groups = (runs, service)
                try:
                    await self._claim_loop()
                finally:
                    self._task_groups = None
            service.cancel_scope.cancel()
        self._log(logging.INFO, "worker_stopped", None, **vars(self.stats))

    def stop(self) -> None:
        """Graceful stop: claim nothing more, evict every run at its next operation.

        A running step finishes and keeps its output; each evicted run flushes its state,
        re-arms its alarm for whoever runs it next, and its lease is released.
        """
        if self._stop.is_set():
            return
        self._log(logging.INFO, "worker_stopping", running=len(self._slots))
        self._stop.set()
        self._kick.set()
        for slot in self._slots.values():
            if slot.handle is not None:
                slot.handle.evict()

    async def start_workflow(self, name: str, workflow_id: str, input: Any) -> StartedWorkflow:
        """Start a workflow and, when this worker can take it now, run it here at once.

        Eager start: the workflow is created already claimed by this worker, in the same
        atomic store call that ``start_workflow`` makes, so its run begins without waiting
        for a wake-up and a claim. Should this process die, the workflow is due and another
        worker takes it over once the lease expires. When this worker is not running, is
        stopping, has no free slot or does not know ``name``, this is ``start_workflow``
        and any worker picks the workflow up.
        """
        eager = (
            self._task_groups is not None
            and not self._stop.is_set()
            and name in self.workflows
            and len(self._slots) + self._reserved < self.concurrency
        )
        if not eager:
            started, _ = await create(self.store, name, workflow_id, input)
            return started
        self._reserved += 1
        try:
            started, lease = await create(
                self.store, name, workflow_id, input, self.worker_id, self.lease
            )
        finally:
            self._reserved -= 1
        if lease is not None:
            self.stats.claimed += 1
            if self._task_groups is None or self._stop.is_set():
                await self._beat.release(lease)  # stopped meanwhile: due now for any worker
            else:
                self._start_slot(lease)
        return started

    @property
    def running(self) -> int:
        """How many workflows this worker runs right now."""
        return len(self._slots)

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
            with receiver as signals:
                task_status.started()
                async for signum in signals:
                    self._log(logging.INFO, "signal", signal=signal.Signals(signum).name)
                    self.stop()
        except (ValueError, RuntimeError, NotImplementedError):
            # Not the main thread (or no signal support): the caller stops us instead.
            task_status.started()

    async def _enforce_grace(self, runs: TaskGroup) -> None:
        await self._stop.wait()
        await anyio.sleep(self.grace)
        if self._slots:
            self._log(logging.WARNING, "grace_expired", running=len(self._slots))
            runs.cancel_scope.cancel()

    # Claiming

    async def _watch_due(self) -> None:
        """Turn the store's wake-ups (pub/sub, NOTIFY, or just the poll timeout) into kicks.

        Kept in its own task and never cancelled mid-wait: cancelling a pub/sub read would
        cost a reconnect every time a slot frees up.
        """
        while True:
            try:
                await self.store.wait_for_due(self.poll_interval)
            except StorageError as exc:
                self._log(logging.WARNING, "store_error", operation="wait_for_due", error=exc)
                await anyio.sleep(self.poll_interval)
            self._kick.set()

    async def _claim_loop(self) -> None:
        while not self._stop.is_set():
            # A fresh event before claiming: a kick that lands during the claim is kept.
            self._kick = anyio.Event()
            free = self.concurrency - len(self._slots) - self._reserved
            self._more_due = free <= 0
            if free > 0:
                try:
                    leases = await self.store.claim_due(self.worker_id, self.lease, free)
                    self._more_due = len(leases) >= free
                except StorageError as exc:
                    self.stats.store_errors += 1
                    self._log(logging.WARNING, "store_error", operation="claim_due", error=exc)
                    with anyio.move_on_after(self.poll_interval):
                        await self._stop.wait()
                    continue
                for lease in leases:
                    self.stats.claimed += 1
                    self._start_slot(lease)
            await self._kick.wait()

    def _start_slot(self, lease: Lease) -> None:
        assert self._task_groups is not None
        runs, service = self._task_groups
        stale = self._slots.get(lease.workflow_id)
        if stale is not None:
            # Our own earlier claim expired (this process was paused): that run can no
            # longer write, so it gives way to the fresh claim.
            self._lose(stale)
        slot = Slot(lease, time.monotonic() + self.heartbeat)
        self._slots[lease.workflow_id] = slot
        runs.start_soon(self._run_slot, slot, service)

    # Running one workflow

    async def _run_slot(self, slot: Slot, service: TaskGroup) -> None:
        wid = slot.lease.workflow_id
        hold = False
        try:
            try:
                hold = await self._execute(slot)
            except Exception as exc:  # a worker bug must not take the other runs down
                self._log(logging.ERROR, "worker_error", wid, error=exc)
            finally:
                slot.done = True
        finally:
            if self._slots.get(wid) is slot:
                del self._slots[wid]
            if hold:
                self._held[wid] = slot.lease
                service.start_soon(self._hold_off, slot.lease)
            elif not slot.finished:
                await self._beat.release(slot.lease)
            free = self.concurrency - len(self._slots) - self._reserved
            if not slot.finished or (self._more_due and free >= self._refill):
                # A freed slot matters only when workflows were left due for lack of one
                # (then claim a few at a time, not one call per finished run), or when
                # this one's alarm is still due; otherwise the store's wake-ups (or the
                # poll) bring the next claim, and an idle claim is a wasted call.
                self._kick.set()

    async def _execute(self, slot: Slot) -> bool:
        """Run the claimed workflow once; True when it must be held off (unknown name)."""
        lease = slot.lease
        wid = lease.workflow_id
        driver = self.store.fenced_driver(lease)
        try:
            rows = lease.rows if lease.rows is not None else await driver.list(b"")
            name, input_value = commands.started_as(rows, wid)
            if name is None:
                info = await self.store.workflow_info(wid)
                name = info[0] if info is not None else None
        except StorageError as exc:
            self.stats.store_errors += 1
            self._log(logging.WARNING, "store_error", wid, operation="load", error=exc)
            return False
        except CorruptedRecordError as exc:
            self.stats.corrupted += 1
            self._log(logging.ERROR, "corrupted_workflow", wid, error=exc)
            return True
        fn = self.workflows.get(name) if name is not None else None
        if fn is None or input_value is MISSING:
            # Never dropped, never failed: a deploy with that workflow may be on its way.
            self.stats.unknown += 1
            reason = "no input stored" if fn is not None else "no registered function"
            self._log(logging.ERROR, "unknown_workflow", wid, name=name, reason=reason)
            return True
        if self._stop.is_set() or slot.lost:
            return False
        self._log(logging.DEBUG, "claimed", wid, name=name, token=lease.token)

        async def finish(writes: Writes, state: WorkflowState, wake_at: float | None) -> None:
            # The run's last writes, its state in the index, the claimed alarm settled and
            # the lease released: one atomic store call, so no crash leaves a finished
            # workflow listed in its old state or a stale alarm behind.
            await self.store.finish_run(slot.lease, writes, state.value, wake_at)
            slot.finished = True

        spec = RunSpec(
            wid,
            fn,
            input_value,
            driver,
            "yield",
            None,
            None,  # failed attempts are logged by the run itself (engine.runner)
            snapshot=rows,
            finish=finish,
        )
        handle: WorkflowHandle[Any] = WorkflowHandle(spec)
        slot.handle = handle
        if self._stop.is_set():
            handle.evict()  # stop() ran between the claim and here
        return await self._finish(slot, handle)

    async def _finish(self, slot: Slot, handle: WorkflowHandle[Any]) -> bool:
        """Wait for the run and settle it; True when the workflow must be held off."""
        wid = slot.lease.workflow_id
        try:
            result = await handle.result()
        except CorruptedRecordError as exc:
            # Not the workflow's failure: nothing was written, and a repaired store (or a
            # fixed deploy) lets it carry on. Held off so no worker hot-loops on it.
            self.stats.corrupted += 1
            self._log(logging.ERROR, "corrupted_workflow", wid, error=exc)
            return True
        except HistoryDivergedError as exc:
            await self._diverged(slot, exc)
            return False
        except LeaseLostError as exc:
            # Someone else holds the workflow now; retrying here would make two writers.
            self.stats.fencing_rejections += 1
            self._log(logging.WARNING, "fencing_rejected", wid, token=slot.lease.token, error=exc)
            return False
        except StorageError as exc:
            self.stats.store_errors += 1
            self._log(logging.WARNING, "store_error", wid, operation="run", error=exc)
            return False  # the alarm stays: the run resumes from what landed
        except Exception as exc:
            self.stats.failed += 1
            self._log(logging.ERROR, "workflow_failed", wid, token=slot.lease.token, error=exc)
            await self._settle(slot, WorkflowState.FAILED.value)
            return False
        if slot.lost:
            self._log(
                logging.WARNING,
                "run_abandoned",
                wid,
                token=slot.lease.token,
                state=result.state.value,
            )
            return False
        self._divergences.pop(wid, None)  # it matched its history this time
        if result.evicted:
            self.stats.evicted += 1
        elif result.state == WorkflowState.COMPLETED:
            self.stats.completed += 1
        else:
            self.stats.suspended += 1
        self._log(
            logging.INFO,
            "run_finished",
            wid,
            token=slot.lease.token,
            state=result.state.value,
            evicted=result.evicted,
            wake_at=result.wake_at,
        )
        await self._settle(slot, result.state.value)
        return False

    async def _diverged(self, slot: Slot, error: HistoryDivergedError) -> None:
        """The deployed code does not match the workflow's history: not its failure. Left as
        it was and tried again later, backing off (capped), so a deploy of matching code
        resumes it without a ``recover()``."""
        wid = slot.lease.workflow_id
        tries = self._divergences[wid] = self._divergences.get(wid, 0) + 1
        delay = min(DIVERGENCE_BACKOFF * 2 ** (tries - 1), DIVERGENCE_BACKOFF_MAX)
        self.stats.diverged += 1
        self._log(logging.ERROR, "diverged", wid, retry_in=delay, tries=tries, error=error)
        try:
            info = await self.store.workflow_info(wid)
        except StorageError as exc:
            self.stats.store_errors += 1
            self._log(logging.WARNING, "store_error", wid, operation="settle", error=exc)
            return  # the claimed alarm stays due: it is tried again at the next claim
        state = info[1] if info is not None else WorkflowState.PENDING.value
        await self._settle(slot, state, time.time() + delay)

    async def _settle(self, slot: Slot, state: str, wake_at: float | None = None) -> None:
        """For a run that ended without writing (already finished when loaded, diverged):
        bring the index up to date, settle the claimed alarm (to ``wake_at``) and release,
        in one call."""
        if slot.finished:
            return
        wid = slot.lease.workflow_id
        try:
            await self.store.finish_run(slot.lease, [], state, wake_at)
            slot.finished = True
        except LeaseLostError as exc:
            self.stats.fencing_rejections += 1
            self._log(logging.WARNING, "fencing_rejected", wid, token=slot.lease.token, error=exc)
        except StorageError as exc:
            self.stats.store_errors += 1
            self._log(logging.WARNING, "store_error", wid, operation="settle", error=exc)

    def _lose(self, slot: Slot) -> None:
        """The lease is gone: evict the run at once (its writes would be rejected anyway)."""
        if slot.lost:
            return
        slot.lost = True
        self.stats.leases_lost += 1
        self._log(logging.WARNING, "lease_lost", slot.lease.workflow_id, token=slot.lease.token)
        if slot.handle is not None:
            slot.handle.evict()

    async def _hold_off(self, lease: Lease) -> None:
        """Keep an unknown workflow's lease (not renewed) so no worker hot-loops on it."""
        try:
            with anyio.move_on_after(self.lease):
                await self._stop.wait()
        finally:
            self._held.pop(lease.workflow_id, None)
            await self._beat.release(lease)
