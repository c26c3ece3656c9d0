"""Typed records: what every stored value of a workflow means, with named attributes.

The operations, the runner and the handle speak only in these; ``engine.storage`` is the one
place that turns them into bytes and back (and checks their shape when it loads them), so a
record of the wrong shape is reported as ``CorruptedRecordError`` at load, never met as a
``KeyError`` in the middle of a run.

==================  =====================================================================
record              where it is stored
==================  =====================================================================
``StepEntry`` ...   ``(HISTORY, *location)``: one entry kind per operation (``Entry``)
``Metadata``        ``(METADATA, *location)``: a step's attempts, status, retry time and
                    error, a compensation done; a join branch's status
``MessageRecord``   ``(MESSAGES, sent_ns, nonce)``: a message not yet consumed
``WorkflowFields``  ``(FIELDS, field)``: state, name, input, output, errors
``ErrorRecord``     inside ``Metadata`` and ``WorkflowFields``: what an error was
==================  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias

from engine.state import WorkflowState


class _Missing:
    """The value of a field that was never stored (``None`` is a valid input or output)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(slots=True, eq=False)
class StepEntry:
    """A step: ``done`` with its ``output``; ``seq`` orders compensation (only a step with a
    rollback handler has one)."""

    kind: ClassVar[str] = "step"
    pos: int
    done: bool = False
    output: Any = None
    seq: int | None = None


@dataclass(slots=True, eq=False)
class SleepEntry:
    """A sleep: its wake time, fixed when it first started, so a restart never stretches it."""

    kind: ClassVar[str] = "sleep"
    pos: int
    wake_at: float
    done: bool = False


@dataclass(slots=True, eq=False)
class MessageEntry:
    """A message wait: its deadline (None: none), the names it waits for (None: any) and,
    once done, the payloads it consumed."""

    kind: ClassVar[str] = "message"
    pos: int
    deadline: float | None
    done: bool = False
    payloads: list[Any] | None = None
    names: list[str] | None = None


@dataclass(slots=True, eq=False)
class JoinEntry:
    """A join: the names of its branches (each branch's status is its own ``Metadata``)."""

    kind: ClassVar[str] = "join"
    pos: int
    branches: list[str]


@dataclass(slots=True, eq=False)
class RaceEntry:
    """A race: its branches and, once decided, the winner and the winner's value."""

    kind: ClassVar[str] = "race"
    pos: int
    branches: list[str]
    winner: str | None = None
    value: Any = None


@dataclass(slots=True, eq=False)
class LoopEntry:
    """A loop: the next iteration and the state committed for it, or, once ``done``, the
    value it broke with (``result``)."""

    kind: ClassVar[str] = "loop"
    pos: int
    iteration: int
    done: bool = False
    state: Any = None
    result: Any = None


@dataclass(slots=True, eq=False)
class IterationEntry:
    """The state a loop iteration started from, kept when it registered rollback handlers
    so a later run can replay it; ``pos`` is the iteration number."""

    kind: ClassVar[str] = "iteration"
    pos: int
    state: Any = None


@dataclass(slots=True, eq=False)
class RemovedEntry:
    """The placeholder ``ctx.removed`` records in a fresh history."""

    kind: ClassVar[str] = "removed"
    pos: int
    original_type: str


@dataclass(slots=True, eq=False)
class CheckpointEntry:
    """A rollback checkpoint: steps after it may register compensations."""

    kind: ClassVar[str] = "checkpoint"
    pos: int


Entry: TypeAlias = (
    StepEntry
    | SleepEntry
    | MessageEntry
    | JoinEntry
    | RaceEntry
    | LoopEntry
    | IterationEntry
    | RemovedEntry
    | CheckpointEntry
)

ENTRY_TYPES: Final[tuple[type[Entry], ...]] = (
    StepEntry,
    SleepEntry,
    MessageEntry,
    JoinEntry,
    RaceEntry,
    LoopEntry,
    IterationEntry,
    RemovedEntry,
    CheckpointEntry,
)

REMOVABLE: Final = ("step", "loop", "sleep", "message", "join", "race")
"""The kinds ``ctx.removed(name, original_type)`` can stand in for."""


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """What is stored about an error: its type and module, message and traceback text."""

    type: str
    module: str
    message: str
    traceback: str


STEP_STATUSES: Final = frozenset({"retrying", "exhausted", "failed", "completed", "recovered"})
BRANCH_STATUSES: Final = frozenset({"running", "completed", "failed"})


@dataclass(slots=True, eq=False)
class Metadata:
    """Facts about an entry besides its record: a step's ``attempts``, ``status``, next
    ``retry_at`` and last ``error``, whether its compensation ran (``compensated``); or a
    join branch's ``status`` (no record: pending)."""

    status: str | None = None
    attempts: int = 0
    retry_at: float | None = None
    error: ErrorRecord | None = None
    compensated: bool = False

    @property
    def failed(self) -> bool:
        """A step failure recorded for good (replay raises it again)."""
        return self.status in ("exhausted", "failed")


@dataclass(slots=True, eq=False)
class MessageRecord:
    """A message not yet consumed; ``key`` is where it is stored (FIFO by send time)."""

    key: bytes
    name: str
    data: Any
    sent_at: float


@dataclass(slots=True, eq=False)
class WorkflowFields:
    """The workflow-level fields; ``MISSING`` (or None for the others) when not stored."""

    state: WorkflowState | None = None
    name: str | None = None
    input: Any = MISSING
    output: Any = MISSING
    error: ErrorRecord | None = None
    rollback_error: ErrorRecord | None = None
    trace: dict[str, str] | None = None  # stored trace-context headers (engine.tracing)

    @property
    def seen(self) -> bool:
        """Any field stored: the workflow existed before this run."""
        return (
            self.state is not None
            or self.name is not None
            or self.input is not MISSING
            or self.output is not MISSING
            or self.error is not None
            or self.rollback_error is not None
        )
