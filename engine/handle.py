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
    """Prepare a run of ``fn(ctx, input)`` as ``workflow_id`` on ``driver``; no I/O yet."""
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
        raises the error that failed it.
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
        """Send a message; stored durably, so it is never lost (before, during or after a run)."""
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"workflow {self.workflow_id!r}: message name must be a non-empty string"
            )
        await commands.send_message(self._driver, self.workflow_id, name, data)
        if self._run is not None:
            await self._run.scheduler.notify_messages()

    async def wake(self) -> None:
        """Yield mode: an alarm for now. Live mode: re-check what the run waits for."""
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
        """Stop for good: state ``cancelled``, alarm cleared; later runs skip the function."""
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
        return await commands.read_state(self._driver, self.workflow_id)

    async def get_output(self) -> OutputT | None:
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
