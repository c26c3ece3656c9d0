"""Workflow states and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

OutputT = TypeVar("OutputT")


class WorkflowState(StrEnum):
    """Lifecycle of a workflow; a ``str`` enum, so it compares equal to its value."""

    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class WorkflowResult(Generic[OutputT]):
    """How a run ended: completed (with ``output``), sleeping (until ``wake_at``, or a
    message in ``waiting_for_messages`` when ``wake_at`` is None), cancelled, or evicted
    (``evicted=True``, ``state`` is the persisted state)."""

    workflow_id: str
    state: WorkflowState
    output: OutputT | None = None
    wake_at: float | None = None
    evicted: bool = False
    waiting_for_messages: list[str] | None = None
    """Sleeping: the sorted message names it waits for (``"*"``: any name); None when it
    waits for no message."""


@dataclass(frozen=True)
class ErrorInfo:
    """What failed a workflow, as recorded: returned by ``handle.get_error()``."""

    type: str
    message: str
    traceback: str
