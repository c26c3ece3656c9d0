"""What a workflow looks like from outside: its row in the index, and its history read back
in the order the workflow recorded it (``Client.describe``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine.keys import Location
from engine.records import (
    MISSING,
    CheckpointEntry,
    Entry,
    IterationEntry,
    JoinEntry,
    LoopEntry,
    MessageEntry,
    RaceEntry,
    RemovedEntry,
    SleepEntry,
    StepEntry,
)
from engine.state import ErrorInfo, WorkflowState
from engine.storage import Node, Storage


@dataclass(frozen=True)
class WorkflowInfo:
    """One workflow in ``Client.list``: ``state`` is ``running`` while a run holds it."""

    workflow_id: str
    """The workflow's id."""
    name: str
    """The name it was started under (``run_workflow``: the function's name)."""
    state: WorkflowState
    """Its state; ``running`` while a run holds its lease, whatever was recorded last."""
    wake_at: float | None
    """Its alarm, a Unix time; None when it has none."""
    updated_at: float
    """When the store's index last changed it (started, claimed, finished, cancelled), a
    Unix time."""


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded operation: where (``path`` as in divergence messages), what kind, how
    far it got (``status``), its attempts, and its output or error when it has one."""

    path: str
    """Where the operation sits: scope names and its own, joined by ``/`` (``~N`` for loop
    iteration ``N``)."""
    kind: str
    """``step``, ``sleep``, ``message``, ``join``, ``race``, ``loop``, ``checkpoint`` or
    ``removed``."""
    status: str
    """``completed``; a step ``running``, ``retrying``, ``exhausted`` or ``failed``; a sleep
    ``sleeping``; a message wait ``waiting``; a join, race or loop ``running`` (a join
    ``failed`` when a branch failed); ``removed``."""
    attempts: int = 0
    """A step's attempts so far (0 for other kinds)."""
    output: Any = None
    """A step's output, a message wait's list of data, a race's ``[winner, value]``, a
    loop's state (``running``) or result (``completed``); None otherwise."""
    error: ErrorInfo | None = None
    """The recorded error of a failed (or retrying) step."""


@dataclass(frozen=True)
class WorkflowDescription:
    """``WorkflowInfo`` plus the workflow's input, output, error, what it waits for and its
    history in recorded order."""

    workflow_id: str
    """The workflow's id."""
    name: str
    """The name it was started under."""
    state: WorkflowState
    """Its state; ``running`` while a run holds its lease."""
    wake_at: float | None
    """Its alarm, a Unix time; None when it has none."""
    updated_at: float
    """When the store's index last changed it, a Unix time (0.0 if it is not indexed)."""
    input: Any
    """Its stored input."""
    output: Any
    """Its output once completed; None before."""
    error: ErrorInfo | None
    """What failed it; None unless failed."""
    waiting_for_messages: list[str] | None
    """When sleeping: the sorted message names its waits wait for (``"*"``: any name); None
    when it waits for no message."""
    history: list[HistoryEntry]
    """Every recorded operation, in the order the workflow recorded them, depth first."""


def history(storage: Storage) -> list[HistoryEntry]:
    """Every recorded entry of a loaded workflow, scopes in recorded order, depth first."""
    return list(_scope(storage, (), storage.root))


def waiting_for(storage: Storage) -> list[str] | None:
    """The names its unfinished message waits wait for (``"*"``: any), None if there are none."""
    names: set[str] = set()
    for _, node in storage.walk():
        entry = node.entry
        if isinstance(entry, MessageEntry) and not entry.done:
            names.update(entry.names if entry.names is not None else ("*",))
    return sorted(names) if names else None


def fields_of(storage: Storage) -> tuple[Any, Any, ErrorInfo | None]:
    """The input, output and error (``ErrorInfo``) a loaded workflow holds."""
    fields = storage.fields
    error = fields.error
    return (
        None if fields.input is MISSING else fields.input,
        None if fields.output is MISSING else fields.output,
        None if error is None else ErrorInfo(error.type, error.message, error.traceback),
    )


def _scope(storage: Storage, scope: Location, node: Node) -> Iterator[HistoryEntry]:
    for child in node.ordered():
        location = (*scope, child.segment)
        entry = child.entry
        assert entry is not None
        if isinstance(entry, IterationEntry):
            continue  # kept for its rollback handlers; its steps are listed on their own
        yield _entry(storage.names.render(location), entry, child)
        if isinstance(entry, JoinEntry | RaceEntry):
            for branch in entry.branches:
                index = storage.names.by_name.get(branch)
                if index is not None and index in child.children:
                    yield from _scope(storage, (*location, index), child.children[index])
        elif isinstance(entry, LoopEntry):
            for segment in sorted(s for s in child.children if isinstance(s, tuple)):
                yield from _scope(storage, (*location, segment), child.children[segment])


def _entry(path: str, entry: Entry, node: Node) -> HistoryEntry:
    meta = node.meta
    attempts = meta.attempts if meta is not None else 0
    error = meta.error if meta is not None else None
    info = None if error is None else ErrorInfo(error.type, error.message, error.traceback)
    if isinstance(entry, StepEntry):
        if entry.done:
            return HistoryEntry(path, "step", "completed", max(attempts, 1), entry.output)
        status = meta.status if meta is not None and meta.status else "running"
        return HistoryEntry(path, "step", status, attempts, None, info)
    if isinstance(entry, SleepEntry):
        return HistoryEntry(path, "sleep", "completed" if entry.done else "sleeping")
    if isinstance(entry, MessageEntry):
        if entry.done:
            return HistoryEntry(path, "message", "completed", output=entry.payloads)
        return HistoryEntry(path, "message", "waiting")
    if isinstance(entry, RaceEntry):
        if entry.winner is not None:
            return HistoryEntry(path, "race", "completed", output=[entry.winner, entry.value])
        return HistoryEntry(path, "race", "running")
    if isinstance(entry, LoopEntry):
        if entry.done:
            return HistoryEntry(path, "loop", "completed", output=entry.result)
        return HistoryEntry(path, "loop", "running", output=entry.state)
    if isinstance(entry, JoinEntry):
        return HistoryEntry(path, "join", _join_status(entry, node))
    if isinstance(entry, RemovedEntry):
        return HistoryEntry(path, "removed", "removed")
    assert isinstance(entry, CheckpointEntry)
    return HistoryEntry(path, "checkpoint", "completed")


def _join_status(entry: JoinEntry, node: Node) -> str:
    statuses = [child.meta.status for child in node.children.values() if child.meta is not None]
    if len(statuses) == len(entry.branches) and all(s == "completed" for s in statuses):
        return "completed"
    return "failed" if "failed" in statuses else "running"
