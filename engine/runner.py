"""One run of one workflow: load, call the function from the top, settle the outcome.

Replay path: ``Storage.load`` reads the namespace (one ``list``, or the rows a worker's
claim read) and checks every record, so a damaged one raises ``CorruptedRecordError`` before
the function runs and nothing is written; the function runs from the top; each operation
finds its entry by position in its scope, checks name and kind, and returns what was
recorded. New operations execute and flush.

How a run ends:

- completed: output and state written in one batch, alarm cleared;
- suspended (yield mode, every task waiting): pending writes flushed; an alarm is set for
  the earliest deadline (a wait for messages alone sets none: the sender sets one);
- evicted: pending writes flushed, alarm set for now so whoever owns the store resumes it;
- cancelled: state ``cancelled``, alarm cleared;
- failed: rollback handlers run, then state ``failed`` and the error record are written,
  alarm cleared, and the error is raised;
- diverged (``HistoryDivergedError``): nothing is written and the error is raised: the
  workflow keeps its state and history, and code that matches them resumes it.

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

from engine import tracing
from engine.context import WorkflowContext
from engine.driver import EngineDriver, WakeSource, is_wake_source
from engine.errors import (
    EvictedError,
    HistoryDivergedError,
    LeaseLostError,
    StorageError,
    SuspendSignal,
    WorkflowFailedError,
    error_record,
    rebuild_error,
    single,
)
from engine.location import ROOT
from engine.ops.rollback import run_handlers
from engine.records import MISSING
from engine.run import ErrorEvent, ErrorHook, HistoryHook, Run, call_hook
from engine.scheduler import Mode, Scheduler
from engine.state import WorkflowResult, WorkflowState
from engine.storage import Storage, Writes

WorkflowFn = Callable[[WorkflowContext, Any], Awaitable[Any]]
Finisher = Callable[[Writes, WorkflowState, "float | None"], Awaitable[None]]
"""Ends a claimed run in one atomic store call: its last writes, its state, its next
wake-up (None: it needs none); see ``WorkerStore.finish_run``."""


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
    finish: Finisher | None = None  # a claimed run ends through the store (finish_run)
    on_wakeup: Callable[[], None] | None = None  # a live run was woken (a message, a cancel)


async def execute(spec: RunSpec, attach: Callable[[Run | None], None]) -> WorkflowResult[Any]:
    """Run the workflow once; ``attach`` receives the live ``Run`` so the handle can reach it."""
    wid = spec.workflow_id
    storage = Storage(spec.driver, wid)
    await storage.load(spec.snapshot)
    fields = storage.fields
    state = fields.state or WorkflowState.PENDING
    if state == WorkflowState.COMPLETED:
        output = None if fields.output is MISSING else fields.output
        return WorkflowResult(wid, state, output=output)
    if state == WorkflowState.CANCELLED:
        return WorkflowResult(wid, state)
    resume_rollback = state == WorkflowState.ROLLING_BACK or (
        state == WorkflowState.FAILED and fields.rollback_error is not None
    )
    if state == WorkflowState.FAILED and not resume_rollback:
        raise _recorded_failure(storage)
    if fields.input is MISSING:
        # The first run sees the input exactly as later runs will: through the codec.
        storage.set_input(spec.input)
    if not resume_rollback:
        storage.set_state(WorkflowState.RUNNING)

    scheduler = Scheduler(
        spec.mode,
        spec.driver.worker_poll_interval,
        storage.refresh_messages,
        lambda earliest: _arm_while_live(run, spec, earliest),
        message_poll=not is_wake_source(spec.driver),
    )
    name = fields.name or _name_of(spec.fn)
    run = Run(wid, storage, scheduler, spec.on_error, workflow_name=name)

    async def flushed() -> None:
        await call_hook(spec.on_history_updated, wid, "on_history_updated")

    if spec.on_history_updated is not None:
        storage.on_flushed = flushed
    run.trace = tracing.start_run(wid, name, fields.trace)
    attach(run)
    try:
        if run.trace is None:
            kind, value = await _call(run, spec, fields.input)
            return await _settle(run, spec, kind, value, resume_rollback)
        return await _traced(run, spec, run.trace, resume_rollback)
    finally:
        attach(None)


async def _traced(
    run: Run, spec: RunSpec, trace: tracing.RunTrace, resume_rollback: bool
) -> WorkflowResult[Any]:
    """The run under its span, ended with how the run ended."""
    storage = run.storage
    if storage.fields.trace is None:
        storage.set_trace(trace.carrier())  # later runs, anywhere, continue this trace
    try:
        with trace.active():
            kind, value = await _call(run, spec, storage.fields.input)
            result = await _settle(run, spec, kind, value, resume_rollback)
    except HistoryDivergedError as exc:
        trace.end("diverged", exc)
        raise
    except BaseException as exc:
        # Failed: the failure is recorded; anything else (the store, a cancelled caller)
        # left the workflow to resume.
        failed = storage.fields.state == WorkflowState.FAILED
        trace.end(WorkflowState.FAILED.value if failed else "error", exc)
        raise
    trace.end("evicted" if result.evicted else result.state.value)
    return result


def _name_of(fn: WorkflowFn) -> str:
    """A workflow run without a registered name (``run_workflow``) is named after its code."""
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _recorded_failure(storage: Storage) -> BaseException:
    """The error a failed workflow was recorded with, raised again by every later run."""
    error = storage.fields.error
    if error is None:
        return WorkflowFailedError("unknown", "the workflow failed with no error recorded")
    return rebuild_error(error)


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
            await tg.start(_forward_wakeups, spec.driver, scheduler, spec.on_wakeup)
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
    driver: WakeSource,
    scheduler: Scheduler,
    on_wakeup: Callable[[], None] | None,
    *,
    task_status: TaskStatus[None],
) -> None:
    async with driver.subscribe() as wakeups:
        # A message sent after the load but before the subscription took hold has no
        # wake-up of its own: look once more, now that none can be missed.
        await scheduler.notify_messages()
        task_status.started()
        async for _ in wakeups:
            if on_wakeup is not None:
                on_wakeup()
            await scheduler.notify_messages()


async def _settle(
    run: Run, spec: RunSpec, kind: str, value: Any, resume_rollback: bool
) -> WorkflowResult[Any]:
    storage = run.storage
    wid = spec.workflow_id
    if storage.broken:
        failure = _storage_failure(value)
        if run.cancelled and isinstance(failure, LeaseLostError):
            # Cancelled from outside: the canceller recorded the state and revoked the
            # lease, so this run's writes were refused, as they must be.
            return WorkflowResult(wid, WorkflowState.CANCELLED)
        raise failure
    if kind == "completed" and resume_rollback:
        # Replay of a failed workflow got further than the failure: run the remaining
        # handlers anyway and keep the recorded error.
        return await _fail(run, spec, _recorded_failure(storage), True)
    if kind == "completed":
        try:
            output = storage.set_output(value)
        except Exception as exc:
            kind, value = "failed", exc
        else:
            await _end(run, spec, WorkflowState.COMPLETED, None)
            return WorkflowResult(wid, WorkflowState.COMPLETED, output=output)
    if kind == "suspended":
        deadline = run.scheduler.suspend_deadline
        await _end(run, spec, WorkflowState.SLEEPING, deadline)
        return WorkflowResult(
            wid,
            WorkflowState.SLEEPING,
            wake_at=deadline,
            waiting_for_messages=run.scheduler.waiting_for,
        )
    if kind == "failed" and isinstance(value, HistoryDivergedError):
        # The code no longer matches history: not the workflow's failure. Nothing is
        # written (the names this run interned, the state it set at start), so deploying
        # code that matches resumes it; compensating after a partial replay could undo the
        # wrong things.
        storage.discard_pending()
        raise value
    if kind == "stopped":
        if run.cancelled:
            try:
                await _end(run, spec, WorkflowState.CANCELLED, None)
            except LeaseLostError:
                pass  # cancelled from outside: the canceller wrote the state, revoked the lease
            return WorkflowResult(wid, WorkflowState.CANCELLED)
        return await _evicted(run, spec)
    return await _fail(run, spec, value, resume_rollback)


async def _fail(
    run: Run, spec: RunSpec, error: BaseException, resumed: bool
) -> WorkflowResult[Any]:
    storage = run.storage
    wid = spec.workflow_id
    await run.emit_error(ErrorEvent(wid, "<workflow>", "workflow", 1, error))
    if run.rollback_handlers:
        try:
            rollback_error = await run_handlers(run)
        except EvictedError:
            return await _evicted(run, spec)
        if rollback_error is None and storage.fields.rollback_error is not None:
            storage.set_rollback_error(None)
    if not resumed or storage.fields.error is None:
        storage.set_error(error_record(error))
    await _end(run, spec, WorkflowState.FAILED, None)
    raise error


async def _evicted(run: Run, spec: RunSpec) -> WorkflowResult[Any]:
    """Stopped from outside: keep what happened and be due now for whoever runs it next."""
    state = run.storage.fields.state or WorkflowState.PENDING
    await _end(run, spec, state, time.time())
    return WorkflowResult(spec.workflow_id, state, evicted=True)


async def _end(run: Run, spec: RunSpec, state: WorkflowState, wake_at: float | None) -> None:
    """Record ``state`` with the run's last writes and settle the alarm: the runner's one
    place for the alarm policy.

    - a run that will want to run again (sleeping until ``wake_at``, evicted: now) arms the
      alarm for then; a wait for messages alone arms nothing (whoever sends one does);
    - a run that ended for good clears it; a completed one only if an alarm can exist (an
      earlier start, a message seen, one armed by this run: a message sent in the very
      last instant may leave one, whose run then finds the workflow done);
    - a worker's claimed run (``spec.finish``) hands all of it to the store in one atomic
      call, which settles the alarm it claimed by the store's own rule.
    """
    storage = run.storage
    storage.set_state(state)  # no write when it is the stored state
    if spec.finish is not None:
        finish = spec.finish

        async def last(writes: Writes) -> None:
            await finish(writes, state, wake_at)

        await storage.flush(last=last)
        return
    await storage.flush()
    driver = spec.driver
    if wake_at is not None:
        await driver.set_alarm(spec.workflow_id, wake_at)
    elif state in (WorkflowState.FAILED, WorkflowState.CANCELLED) or (
        state == WorkflowState.COMPLETED
        and (storage.seen_before or storage.saw_messages or run.armed_at is not None)
    ):
        await driver.clear_alarm(spec.workflow_id)


async def _arm_while_live(run: Run, spec: RunSpec, earliest: float | None) -> None:
    """Live mode, everything waiting in memory: make what happened durable and arm the alarm,
    so that a crash now is resumed by whoever owns the store."""
    await run.storage.flush()
    if earliest is not None and run.armed_at != earliest:
        await spec.driver.set_alarm(spec.workflow_id, earliest)
        run.armed_at = earliest


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
