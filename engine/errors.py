"""Every error the engine raises, and the internal signals that suspend a run.

User-facing errors derive from ``WorkflowError``. The signals that stop a run (a sleep that
must yield, a message that has not arrived, an eviction) derive from ``BaseException`` so an
``except Exception`` in workflow code cannot swallow them, the way anyio's cancellation works.
"""

from __future__ import annotations

from engine.records import ErrorRecord


class WorkflowError(Exception):
    """Raised for any error the engine reports; the root of the engine's error types."""


class CriticalError(WorkflowError):
    """Raised by step code to fail the step at once, without retries."""


class RollbackError(WorkflowError):
    """Raised by step code to stop the workflow and run its rollback handlers, no retries."""


class RollbackCheckpointError(WorkflowError):
    """Raised when a step registers a rollback handler and no checkpoint precedes it."""


class StepExhaustedError(WorkflowError):
    """Raised when a step failed on every one of its ``1 + max_retries`` attempts."""


class StepTimeoutError(CriticalError):
    """Raised when one attempt of a step ran longer than its ``timeout``; not retried."""


class _BranchErrors(WorkflowError):
    def __init__(self, message: str, errors: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.errors = errors


class JoinError(_BranchErrors):
    """Raised when one or more branches of a join failed; ``errors`` maps branch to error."""


class RaceError(_BranchErrors):
    """Raised when every branch of a race failed; ``errors`` maps branch to error."""


class HistoryDivergedError(WorkflowError):
    """Raised when the code asks for a different operation than history holds there."""


class EntryInProgressError(WorkflowError):
    """Raised when an operation starts before the previous one in its scope was awaited."""


class WorkflowBusyError(WorkflowError):
    """Raised when a run starts while the workflow runs elsewhere (its lease is held, or
    another run on the same bare driver is going on); nothing ran and nothing was written."""


class WorkflowFailedError(WorkflowError):
    """Raised when a run meets a workflow that failed on an earlier run.

    Carries what was recorded: the original type name, message and traceback text.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class SerializationError(WorkflowError):
    """Raised when a value cannot be stored: not msgpack data, or too large for the store."""


class CorruptedRecordError(WorkflowError):
    """Raised when a stored record cannot be read: damaged bytes, an unknown format version,
    or a record of the wrong type or shape. Names the workflow and the record; a run that
    meets one writes nothing and never records it as the workflow's failure."""


class StorageError(WorkflowError):
    """Raised when a driver call failed; names the store and the operation."""

    def __init__(self, store: str, operation: str, cause: BaseException | None = None) -> None:
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        super().__init__(f"{store} {operation} failed{detail}")
        self.store = store
        self.operation = operation


class LeaseLostError(StorageError):
    """Raised when a worker writes a workflow whose lease it no longer holds."""


class EvictedError(BaseException):
    """Raised inside the workflow at its next operation after ``evict()`` or ``cancel()``."""


class SuspendSignal(BaseException):
    """Raised at every waiting operation when the whole run must yield (yield mode)."""


def single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside ``group`` (a task group wraps even a lone KeyboardInterrupt or
    crash), so callers see the exception itself; a real group of several stays a group."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]  # type: ignore[assignment]
    return group


def error_record(exc: BaseException) -> ErrorRecord:
    """What is stored about an error: its type name, message and traceback text."""
    import traceback

    return ErrorRecord(
        type(exc).__name__,
        type(exc).__module__,
        str(exc),
        "".join(traceback.format_exception(exc)),
    )


def rebuild_error(record: ErrorRecord) -> WorkflowError:
    """The error a later run raises for a recorded one.

    An engine error comes back as its own type; anything else as ``WorkflowFailedError``
    carrying the recorded type name, message and traceback.
    """
    cls = _ENGINE_ERRORS.get(record.type) if record.module == __name__ else None
    if cls is None or cls is WorkflowFailedError or issubclass(cls, StorageError):
        return WorkflowFailedError(record.type, record.message, record.traceback)
    error = cls(record.message, {}) if issubclass(cls, _BranchErrors) else cls(record.message)
    error.recorded_traceback = record.traceback  # type: ignore[attr-defined]
    return error


_ENGINE_ERRORS: dict[str, type[WorkflowError]] = {
    cls.__name__: cls
    for cls in (
        WorkflowError,
        CriticalError,
        RollbackError,
        RollbackCheckpointError,
        StepExhaustedError,
        StepTimeoutError,
        JoinError,
        RaceError,
        HistoryDivergedError,
        EntryInProgressError,
        WorkflowFailedError,
        WorkflowBusyError,
        SerializationError,
        CorruptedRecordError,
        StorageError,
        LeaseLostError,
    )
}
