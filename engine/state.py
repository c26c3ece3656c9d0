"""Workflow states and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

OutputT = TypeVar("OutputT")


class WorkflowState(StrEnum):
    """Lifecycle of a workflow; a ``str`` enum, so it compares equal to its value."""

    PENDING = "pending"
    """Started and not run yet (also the state of an id never seen), or recovered."""
    RUNNING = "running"
    """A run is under way, or one was evicted and the workflow is due to run again
    (``Client.list`` also says ``running`` while any run holds the workflow's lease)."""
    SLEEPING = "sleeping"
    """Waiting for a deadline or for messages; no process needs to hold it."""
    COMPLETED = "completed"
    """Returned; later runs return the stored output without calling the function."""
    FAILED = "failed"
    """Raised; later runs raise the recorded error without calling the function."""
    ROLLING_BACK = "rolling_back"
    """Failed and running its rollback handlers."""
    CANCELLED = "cancelled"
    """Stopped for good by ``cancel()``; later runs return at once."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class WorkflowResult(Generic[OutputT]):
    """How a run ended: completed (with ``output``), sleeping (until ``wake_at``, or a
    message in ``waiting_for_messages`` when ``wake_at`` is None), cancelled, or evicted
    (``evicted=True``, ``state`` is the persisted state)."""

    workflow_id: str
    """The workflow's id."""
    state: WorkflowState
    """The state the run ended in (for an evicted run, the stored state)."""
    output: OutputT | None = None
    """The workflow's output when ``state`` is ``completed``; None otherwise."""
    wake_at: float | None = None
    """Sleeping: the Unix time of its alarm (its earliest deadline); None when it waits only
    for messages, and in every other state."""
    evicted: bool = False
    """True when the run was stopped from outside (``evict()``, a worker stopping, a lost
    lease) before the workflow ended or waited; it is due again at once."""
    waiting_for_messages: list[str] | None = None
    """Sleeping: the sorted message names it waits for (``"*"``: any name); None when it
    waits for no message."""


@dataclass(frozen=True)
class ErrorInfo:
    """What failed a workflow, as recorded: returned by ``handle.get_error()``."""

    type: str
    """The error's type name, e.g. ``"StepExhaustedError"``."""
    message: str
    """``str()`` of the error."""
    traceback: str
    """The formatted traceback, as text, from the run where it was raised."""
