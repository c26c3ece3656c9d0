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
    """Raised by step code to fail the step at once, without retries.

    On later runs the recorded failure is raised again as ``CriticalError``; a subclass of
    your own comes back as ``WorkflowFailedError`` (catch ``WorkflowError`` to match both).
    """


class RollbackError(WorkflowError):
    """Raised by step code to stop the workflow and run its rollback handlers, no retries.

    Like any error that escapes the workflow function, it fails the workflow, which runs
    the rollback handlers of its completed steps, newest first.
    """


class RollbackCheckpointError(WorkflowError):
    """Raised when a step registers a rollback handler and no checkpoint precedes it."""


class StepExhaustedError(WorkflowError):
    """Raised when a step failed on every one of its ``1 + max_retries`` attempts.

    Names the workflow, the step's path, the number of attempts and the last error, which
    is also its ``__cause__`` on the run where the last attempt failed.
    """


class StepTimeoutError(CriticalError):
    """Raised when one attempt of a step ran longer than its ``timeout``; not retried."""


class _BranchErrors(WorkflowError):
    def __init__(self, message: str, errors: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.errors = errors


class JoinError(_BranchErrors):
    """Raised when one or more branches of a join failed; ``errors`` maps branch to error.

    Raised once every branch settled. ``errors`` is empty when a later run raises the
    recorded failure again.
    """


class RaceError(_BranchErrors):
    """Raised when every branch of a race failed; ``errors`` maps branch to error.

    ``errors`` is empty when a later run raises the recorded failure again.
    """


class HistoryDivergedError(WorkflowError):
    """Raised when the code asks for a different operation than history holds there.

    Also raised for a name used twice in one scope, and when a scope ends before every
    operation it recorded was asked for again (use ``ctx.removed`` for a deleted one). The
    message names the path, what history holds and what the code asked for. Not a failure:
    the run writes nothing and the workflow resumes under code that matches its history.
    """


class EntryInProgressError(WorkflowError):
    """Raised when an operation starts before the previous one in its scope was awaited."""


class WorkflowBusyError(WorkflowError):
    """Raised when a run starts while the workflow runs elsewhere (its lease is held, or
    another run on the same bare driver is going on); nothing ran and nothing was written."""


class WorkflowFailedError(WorkflowError):
    """Raised when a run meets a workflow that failed on an earlier run.

    Carries what was recorded: the original type name, message and traceback text. Engine
    errors come back as their own type instead; this stands for any other exception.

    Attributes:
        type_name: the original exception's type name, e.g. ``"LookupError"``.
        message: ``str()`` of the original exception.
        traceback: its formatted traceback, as text.
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
    """Raised when a driver call failed; names the store and the operation.

    Never recorded as the workflow's failure: the run stops writing, and the next run
    resumes from what landed.

    Attributes:
        store: the store's label, e.g. ``"postgres store"``.
        operation: the operation that failed, e.g. ``"batch"``.
    """

    def __init__(self, store: str, operation: str, cause: BaseException | None = None) -> None:
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        super().__init__(f"{store} {operation} failed{detail}")
        self.store = store
        self.operation = operation


class LeaseLostError(StorageError):
    """Raised when a worker writes a workflow whose lease it no longer holds."""


class EvictedError(BaseException):
    """Raised inside the workflow at its next operation after ``evict()`` or ``cancel()``.

    A ``BaseException``, so an ``except Exception`` in workflow code cannot swallow it; let
    it pass. The run records where it stands and ends (``evicted``, or ``cancelled``).
    """


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
