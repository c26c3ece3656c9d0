"""One run of one workflow: load, call the function from the top, settle the outcome.

Replay path: ``Storage.load`` reads the namespace (one ``list`` per key prefix); the
function runs from the top; each operation finds its entry by position in its scope,
checks name and kind, and returns what was recorded. New operations execute and flush.

How a run ends:

- completed: output and state written in one batch, alarm cleared;
- suspended (yield mode, every task waiting): pending writes flushed; an alarm is set for
  the earliest deadline (a wait for messages alone sets none: the sender sets one);
- evicted: pending writes flushed, alarm set for now so whoever owns the store resumes it;
- cancelled: state ``cancelled``, alarm cleared;
- failed: rollback handlers run (unless the failure is a divergence), then state
  ``failed`` and the error record are written, alarm cleared, and the error is raised.

A storage failure is never recorded as a workflow failure: the store is not written again
and the ``StorageError`` propagates; the next run resumes from what landed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from engine.context import WorkflowContext
from engine.driver import EngineDriver, WakeSource, is_run_finisher, is_wake_source
from engine.errors import (
    EvictedError,
    HistoryDivergedError,
    StorageError,
    SuspendSignal,
    error_record,
    rebuild_error,
    single,
)
from engine.keys import Field
from engine.location import ROOT
from engine.ops.rollback import run_handlers
from engine.run import ErrorEvent, ErrorHook, HistoryHook, Run, call_hook
from engine.scheduler import Mode, Scheduler
from engine.state import WorkflowResult, WorkflowState
from engine.storage import Storage, Writes

WorkflowFn = Callable[[WorkflowContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class RunSpec:
    workflow_id: str
    fn: WorkflowFn
    input: Any
    driver: EngineDriver
    mode: Mode
    on_history_updated: HistoryHook | None
    on_error: ErrorHook | None
    snapshot: Sequence[tuple[bytes, bytes]] | None = None  # the namespace, already read


async def execute(spec: RunSpec, attach: Callable[[Run | None], None]) -> WorkflowResult:
    """Run the workflow once; ``attach`` receives the live ``Run`` so the handle can reach it."""
    wid = spec.workflow_id
    storage = Storage(spec.driver, wid)
    await storage.load(spec.snapshot)
    fields = storage.fields
    state = WorkflowState(fields.get(Field.STATE, WorkflowState.PENDING))
    if state == WorkflowState.COMPLETED:
        return WorkflowResult(wid, state, output=fields.get(Field.OUTPUT))
    if state == WorkflowState.CANCELLED:
        return WorkflowResult(wid, state)
    resume_rollback = state == WorkflowState.ROLLING_BACK or (
        state == WorkflowState.FAILED and Field.ROLLBACK_ERROR in fields
    )
    if state == WorkflowState.FAILED and not resume_rollback:
        raise rebuild_error(fields[Field.ERROR])
    if Field.INPUT not in fields:
        # The first run sees the input exactly as later runs will: through the codec.
        storage.set_value_field(Field.INPUT, spec.input)
    if not resume_rollback:
        storage.set_field(Field.STATE, WorkflowState.RUNNING.value)

    run = Run(wid, storage, _scheduler(spec, storage), spec.on_error)

    async def flushed() -> None:
        await call_hook(spec.on_history_updated, wid, "on_history_updated")

    if spec.on_history_updated is not None:
        storage.on_flushed = flushed
    attach(run)
    try:
        kind, value = await _call(run, spec, fields[Field.INPUT])
        return await _settle(run, spec, kind, value, resume_rollback)
    finally:
        attach(None)


def _scheduler(spec: RunSpec, storage: Storage) -> Scheduler:
    armed: list[float | None] = [None]

    async def on_live_idle(earliest: float | None) -> None:
        # Everything is waiting in memory: make what happened durable, and arm the alarm so
        # that a crash now is resumed by whoever owns the store.
        await storage.flush()
        if earliest is not None and armed[0] != earliest:
            await spec.driver.set_alarm(spec.workflow_id, earliest)
            armed[0] = earliest
            scheduler.armed_alarm = True

    scheduler = Scheduler(
        spec.mode,
        spec.driver.worker_poll_interval,
        storage.refresh_messages,
        on_live_idle,
        message_poll=not is_wake_source(spec.driver),
    )
    return scheduler


async def _call(run: Run, spec: RunSpec, input_value: Any) -> tuple[str, Any]:
    """Call the workflow function once; how it ended, as (kind, value)."""
    ctx = WorkflowContext(run, ROOT, run.storage.root)
    run.scheduler.enter()
    try:
        return await _call_beside_coordinator(run, spec, ctx, input_value)
    except BaseExceptionGroup as group:
        raise single(group) from None


async def _call_beside_coordinator(
    run: Run, spec: RunSpec, ctx: WorkflowContext, input_value: Any
) -> tuple[str, Any]:
    scheduler = run.scheduler
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.coordinate)
        if spec.mode == "live" and is_wake_source(spec.driver):
            await tg.start(_forward_wakeups, spec.driver, scheduler)
        try:
            value = await spec.fn(ctx, input_value)
            ctx.end_scope()
            return ("completed", value)
        except SuspendSignal:
            return ("suspended", None)
        except EvictedError:
            return ("stopped", None)
        except Exception as exc:
            return ("failed", exc)
        finally:
            scheduler.leave()
            tg.cancel_scope.cancel()
    raise AssertionError("unreachable: the task group body always returns")


async def _forward_wakeups(
    driver: WakeSource, scheduler: Scheduler, *, task_status: TaskStatus[None]
) -> None:
    async with driver.subscribe() as wakeups:
        task_status.started()
        async for _ in wakeups:
            await scheduler.notify_messages()


async def _settle(
    run: Run, spec: RunSpec, kind: str, value: Any, resume_rollback: bool
) -> WorkflowResult:
    storage = run.storage
    wid = spec.workflow_id
    if storage.broken:
        raise _storage_failure(value)
    if kind == "completed" and resume_rollback:
        # Replay of a failed workflow got further than the failure: run the remaining
        # handlers anyway and keep the recorded error.
        return await _fail(run, spec, rebuild_error(storage.fields[Field.ERROR]), True)
    if kind == "completed":
        try:
            output = storage.set_value_field(Field.OUTPUT, value)
        except Exception as exc:
            kind, value = "failed", exc
        else:
            # Without an earlier start, a message or an alarm armed by this run, no alarm
            # can exist. (A message sent in the very last instant may leave one: a worker
            # then replays the completed workflow once.)
            clear = storage.seen_before or storage.saw_messages or run.scheduler.armed_alarm
            await _end(run, spec, WorkflowState.COMPLETED, None, clear_alarm=clear)
            return WorkflowResult(wid, WorkflowState.COMPLETED, output=output)
    if kind == "suspended":
        deadline = run.scheduler.suspend_deadline
        # A wait for messages alone arms nothing: whoever sends one sets the alarm.
        await _end(run, spec, WorkflowState.SLEEPING, deadline, clear_alarm=False)
        return WorkflowResult(wid, WorkflowState.SLEEPING, wake_at=deadline)
    if kind == "stopped":
        if run.cancelled:
            await _end(run, spec, WorkflowState.CANCELLED, None, clear_alarm=True)
            return WorkflowResult(wid, WorkflowState.CANCELLED)
        return await _evicted(run, spec)
    return await _fail(run, spec, value, resume_rollback)


async def _fail(run: Run, spec: RunSpec, error: BaseException, resumed: bool) -> WorkflowResult:
    storage = run.storage
    wid = spec.workflow_id
    await run.emit_error(ErrorEvent(wid, "<workflow>", "workflow", 1, error))
    if run.rollback_handlers and not isinstance(error, HistoryDivergedError):
        # A divergence means the code no longer matches history: compensating based on a
        # partial replay could undo the wrong things, so it is left to a human (recover()).
        try:
            rollback_error = await run_handlers(run, WorkflowState.ROLLING_BACK.value)
        except EvictedError:
            return await _evicted(run, spec)
        if rollback_error is None and Field.ROLLBACK_ERROR in storage.fields:
            storage.delete_field(Field.ROLLBACK_ERROR)
    if not resumed or Field.ERROR not in storage.fields:
        storage.set_field(Field.ERROR, error_record(error))
    await _end(run, spec, WorkflowState.FAILED, None, clear_alarm=True)
    raise error


async def _evicted(run: Run, spec: RunSpec) -> WorkflowResult:
    """Stopped from outside: keep what happened and be due now for whoever runs it next."""
    state = WorkflowState(run.storage.fields.get(Field.STATE, WorkflowState.PENDING))
    await _end(run, spec, state, time.time(), clear_alarm=False)
    return WorkflowResult(spec.workflow_id, state, evicted=True)


async def _end(
    run: Run, spec: RunSpec, state: WorkflowState, wake_at: float | None, *, clear_alarm: bool
) -> None:
    """Record ``state`` with the run's last writes, then arm the alarm for ``wake_at`` or
    (``clear_alarm``) clear it. A driver that finishes runs itself (a worker's claim) gets
    all of it in one atomic call, and settles its alarm by its own rule."""
    storage = run.storage
    storage.set_field(Field.STATE, state.value)  # no write when it is the stored state
    driver = spec.driver
    if is_run_finisher(driver):
        finisher = driver

        async def finish(writes: Writes) -> None:
            await finisher.finish_run(writes, state.value, wake_at)

        await storage.flush(last=finish)
        return
    await storage.flush()
    if wake_at is not None:
        await driver.set_alarm(spec.workflow_id, wake_at)
    elif clear_alarm:
        await driver.clear_alarm(spec.workflow_id)


def _storage_failure(value: Any) -> BaseException:
    """The storage error behind a broken run (it may sit inside a join's errors)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, StorageError):
            return item
        if isinstance(item, BaseException):
            pending.extend(getattr(item, "errors", {}).values())
            pending.append(item.__cause__)
            pending.append(item.__context__)
    return StorageError("store", "run", value if isinstance(value, BaseException) else None)
