"""``run_workflow`` and its handle: start, wait, message, wake, recover, evict, cancel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from engine.context import WorkflowContext
from engine.driver import EngineDriver
from engine.exclusive import run_exclusively
from engine.run import ErrorHook, HistoryHook, Run
from engine.runner import RunSpec
from engine.scheduler import Mode
from engine.state import ErrorInfo, WorkflowResult, WorkflowState
from engine.storage import commands
from engine.store import check_workflow_id

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")


def run_workflow(
    workflow_id: str,
    fn: Callable[[WorkflowContext, InputT], Awaitable[OutputT]],
    input: InputT,
    driver: EngineDriver,
    *,
    mode: Mode = "yield",
    on_history_updated: HistoryHook | None = None,
    on_error: ErrorHook | None = None,
) -> WorkflowHandle[OutputT]:
    """Prepare a run of ``fn(ctx, input)`` as ``workflow_id`` on ``driver``; no I/O yet.

    The run starts when the handle's ``result()`` is awaited, or in the background inside
    ``async with run_workflow(...) as handle:``. On a store's driver it holds the workflow's
    lease while it goes on, so it is the only run of that workflow anywhere.

    Args:
        workflow_id: the workflow's id, a non-empty string the store can hold.
        fn: the workflow, ``async def fn(ctx, input)``.
        input: the input, stored on the first run; later runs get the stored one.
        driver: the workflow's namespace, ``store.driver(workflow_id)``.
        mode: ``"yield"`` (the default) ends the run when every task of it waits longer
            than the store's ``worker_poll_interval``, with an alarm for its earliest
            deadline; ``"live"`` keeps it in memory, woken by deadlines and messages.
        on_history_updated: called (sync or async) with the workflow id after each write of
            the run's history. Default None.
        on_error: called (sync or async) with an ``ErrorEvent`` for each failed step attempt,
            failed rollback handler and workflow failure. Default None. A hook that raises
            is logged and never breaks the run.

    Returns:
        A handle on the workflow.

    Raises:
        ValueError: ``workflow_id`` is not a non-empty string that UTF-8 can encode, or
            ``mode`` is neither ``"yield"`` nor ``"live"``.
        TypeError: ``fn`` is not callable.
    """
    check_workflow_id(workflow_id)
    if not callable(fn):
        raise TypeError(f"workflow {workflow_id!r}: fn must be an async function fn(ctx, input)")
    if mode not in ("yield", "live"):
        raise ValueError(f"workflow {workflow_id!r}: mode must be 'yield' or 'live', got {mode!r}")
    spec = RunSpec(workflow_id, fn, input, driver, mode, on_history_updated, on_error)
    return WorkflowHandle(spec)


class WorkflowHandle(Generic[OutputT]):
    """Talks to one workflow: runs it once, and reaches it from outside while it runs.

    Generic in the workflow's output: ``result()`` returns a ``WorkflowResult[OutputT]``.
    ``async with run_workflow(...) as handle:`` starts the run in the background; leaving
    the block waits for it to end (evicting it first if the block raised) and raises its
    error if the run failed and no ``result()`` call raised it already.
    """

    def __init__(self, spec: RunSpec) -> None:
        self._spec = spec
        self.workflow_id = spec.workflow_id
        self._driver = spec.driver
        self._run: Run | None = None
        self._started = False
        self._done = anyio.Event()
        self._result: WorkflowResult[OutputT] | None = None
        self._error: BaseException | None = None
        self._error_seen = False
        self._evict_requested = False
        self._task_group: TaskGroup | None = None

    # Running

    async def result(self) -> WorkflowResult[OutputT]:
        """Run until completed, failed, cancelled, evicted or (yield mode) waiting.

        Starts the run if it has not started, otherwise waits for it. A run that fails
        raises the error that failed it. A completed workflow returns its stored output
        without calling the function; a failed one raises its recorded error (an engine
        error as its own type, any other as ``WorkflowFailedError``).

        Returns:
            How the run ended: its state, and the output, wake time or awaited message
                names that go with it.

        Raises:
            WorkflowBusyError: another run holds the workflow; nothing ran.
            HistoryDivergedError: the code does not match the workflow's history; nothing
                was written.
            CorruptedRecordError: a stored record cannot be read; nothing was written.
            StorageError: the store failed; the next run resumes from what landed.
            ValueError: the store cannot hold the workflow id.
        """
        if not self._started:
            await self._run_once()
        else:
            await self._done.wait()
        if self._error is not None:
            self._error_seen = True
            raise self._error
        assert self._result is not None
        return self._result

    async def _run_once(self) -> None:
        self._started = True
        try:
            name = getattr(self._spec.fn, "__name__", type(self._spec.fn).__name__)
            self._result = await run_exclusively(self._spec, self._attach, name)
        except Exception as exc:
            self._error = exc
        finally:
            self._done.set()

    def _attach(self, run: Run | None) -> None:
        self._run = run
        if run is not None and self._evict_requested:
            run.stop(cancelled=False)

    async def __aenter__(self) -> WorkflowHandle[OutputT]:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._started = True
        self._task_group.start_soon(self._run_once)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        if exc is not None:
            self.evict()
        await self._done.wait()
        await self._task_group.__aexit__(exc_type, exc, tb)
        if exc is None and self._error is not None and not self._error_seen:
            raise self._error  # a failure nobody looked at must not pass silently
        return None

    # Reaching the workflow

    async def message(self, name: str, data: Any) -> None:
        """Send a message; stored durably, so it is never lost (before, during or after a run).

        The message is stored, then the workflow is made due and a live run woken. A wait
        (``ctx.queue.next``) takes it once, oldest first among the names it waits for.

        Args:
            name: the message's name, which waits select on.
            data: any storable value.

        Raises:
            ValueError: ``name`` is not a non-empty string.
            SerializationError: ``data`` cannot be stored (nothing is).
            StorageError: the store failed.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"workflow {self.workflow_id!r}: message name must be a non-empty string"
            )
        await commands.send_message(self._driver, self.workflow_id, name, data)
        if self._run is not None:
            await self._run.scheduler.notify_messages()

    async def wake(self) -> None:
        """Yield mode: an alarm for now. Live mode: re-check what the run waits for.

        A sleep whose wake time has not come sleeps on: waking runs the workflow early, it
        does not end its waits.
        """
        if self._run is not None:
            await self._run.scheduler.notify_messages()
            self._run.scheduler.wake_all()
        else:
            await commands.request_run(self._driver, self.workflow_id)

    def evict(self) -> None:
        """Graceful stop: a running step finishes and keeps its output; the run stops at the
        next operation with its state flushed."""
        self._evict_requested = True
        if self._run is not None:
            self._run.stop(cancelled=False)

    async def cancel(self) -> None:
        """Stop for good: state ``cancelled``, alarm cleared; later runs skip the function.

        A run going on anywhere is stopped at its next operation (its lease is revoked, so
        it can write nothing more). Rollback handlers do not run.
        """
        await commands.cancel(self._driver, self.workflow_id)
        if self._run is not None:
            self._run.stop(cancelled=True)

    async def recover(self) -> None:
        """Make a failed workflow runnable again and schedule a run.

        Without a pending rollback, exhausted and failed steps get fresh attempts and the
        workflow error is cleared. With a rollback that failed part-way, the next run retries
        the remaining handlers (the steps are not re-run: they were compensated).
        """
        await commands.recover(self._driver, self.workflow_id)

    # Reading

    async def get_state(self) -> WorkflowState:
        """The stored state; ``pending`` for a workflow that was never started or run."""
        return await commands.read_state(self._driver, self.workflow_id)

    async def get_output(self) -> OutputT | None:
        """The stored output of a completed workflow; None before it completed."""
        output: OutputT | None = await commands.read_output(self._driver, self.workflow_id)
        return output

    async def get_error(self) -> ErrorInfo | None:
        """What failed the workflow (type name, message, traceback text); None unless failed."""
        if await self.get_state() != WorkflowState.FAILED:
            return None
        record = await commands.read_error(self._driver, self.workflow_id)
        if record is None:
            return None
        return ErrorInfo(record.type, record.message, record.traceback)
