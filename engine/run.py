"""What one run shares between its contexts: storage, scheduler, hooks, rollback handlers.

Failures are logged here, where every one passes (``Run.emit_error``), on the
``engine.runner`` logger with structured fields as ``extra``: ``event``
(``step_failed``, ``rollback_failed``, ``workflow_failed``), ``workflow_id``,
``workflow_name``, ``path``, ``attempt`` and the details as ``fields``.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.keys import Location
from engine.scheduler import Scheduler
from engine.storage import Storage
from engine.timeouts import AwaitWithin, for_current_backend
from engine.tracing import RunTrace

logger = logging.getLogger("engine")
runner_logger = logging.getLogger("engine.runner")

ErrorHook = Callable[["ErrorEvent"], "Awaitable[None] | None"]
HistoryHook = Callable[[str], "Awaitable[None] | None"]


@dataclass(frozen=True)
class ErrorEvent:
    """Passed to ``on_error``: a step attempt, a rollback handler or the workflow failed."""

    workflow_id: str
    location: str
    kind: str  # "step", "rollback" or "workflow"
    attempt: int
    error: BaseException
    will_retry: bool = False
    retry_at: float | None = None


@dataclass
class RollbackHandler:
    seq: int
    location: Location
    handler: Callable[[Any, Any], Awaitable[None]]
    output: Any


@dataclass
class Run:
    """The state one run of one workflow shares between all of its contexts."""

    workflow_id: str
    storage: Storage
    scheduler: Scheduler
    on_error: ErrorHook | None = None
    aborted: anyio.Event = field(default_factory=anyio.Event)
    cancelled: bool = False
    checkpoint_seen: bool = False
    armed_at: float | None = None  # the alarm live mode set during this run
    # Resolved once, in the run's event loop: a step's timeout costs what its loop charges.
    await_within: AwaitWithin = field(default_factory=for_current_backend)
    rollback_handlers: list[RollbackHandler] = field(default_factory=list)
    trace: RunTrace | None = None  # the run's span, when tracing is on (engine.tracing)
    workflow_name: str = ""  # the registered name, else the function's

    def path(self, location: Location) -> str:
        return self.storage.names.render(location)

    def describe(self, location: Location) -> str:
        return f"workflow {self.workflow_id!r} at {self.path(location)}"

    def stop(self, cancelled: bool) -> None:
        self.cancelled = self.cancelled or cancelled
        self.aborted.set()
        self.scheduler.stop()

    async def emit_error(self, event: ErrorEvent) -> None:
        """Log a failed attempt, handler or workflow, then pass it to ``on_error``."""
        level = logging.WARNING if event.will_retry else logging.ERROR
        if runner_logger.isEnabledFor(level):
            self._log_error(level, event)
        await call_hook(self.on_error, event, "on_error")

    def _log_error(self, level: int, event: ErrorEvent) -> None:
        error = f"{type(event.error).__name__}: {event.error}"
        retry = "" if event.retry_at is None else f", retrying at {event.retry_at:.3f}"
        runner_logger.log(
            level,
            "%s: workflow %r (%s) at %s, attempt %d: %s%s",
            f"{event.kind}_failed",
            event.workflow_id,
            self.workflow_name,
            event.location,
            event.attempt,
            error,
            retry,
            extra={
                "event": f"{event.kind}_failed",
                "workflow_id": event.workflow_id,
                "workflow_name": self.workflow_name,
                "path": event.location,
                "attempt": event.attempt,
                "fields": {
                    "will_retry": event.will_retry,
                    "retry_at": event.retry_at,
                    "error": error,
                },
            },
        )


async def call_hook(hook: Callable[[Any], Any] | None, argument: Any, label: str) -> None:
    """Run a user hook (sync or async); a hook that raises is logged, never breaks the run."""
    if hook is None:
        return
    try:
        result = hook(argument)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.error("%s hook raised; the run goes on:\n%s", label, traceback.format_exc())
