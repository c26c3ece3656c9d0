"""Durable execution for plain ``async def`` workflows, replayed from key-value history."""

import logging

from engine.client import Client, ClientHandle
from engine.constants import (
    DEFAULT_LOOP_COMMIT_INTERVAL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
    VERSION,
)
from engine.context import WorkflowContext
from engine.describe import HistoryEntry, WorkflowDescription, WorkflowInfo
from engine.driver import EngineDriver
from engine.errors import (
    CorruptedRecordError,
    CriticalError,
    EntryInProgressError,
    EvictedError,
    HistoryDivergedError,
    JoinError,
    LeaseLostError,
    RaceError,
    RollbackCheckpointError,
    RollbackError,
    SerializationError,
    StepExhaustedError,
    StepTimeoutError,
    StorageError,
    WorkflowBusyError,
    WorkflowError,
    WorkflowFailedError,
)
from engine.handle import WorkflowHandle, run_workflow
from engine.ops.branches import RaceResult
from engine.ops.loop import Loop, LoopResult
from engine.ops.rollback import RollbackContext
from engine.run import ErrorEvent
from engine.start import StartedWorkflow, start_workflow
from engine.state import ErrorInfo, WorkflowResult, WorkflowState
from engine.worker import Worker
from engine.worker_events import WorkerStats

__version__ = VERSION

# A library's convention: nothing is printed unless the application configures logging.
logging.getLogger("engine").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_LOOP_COMMIT_INTERVAL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RETRY_BACKOFF_BASE",
    "DEFAULT_RETRY_BACKOFF_MAX",
    "DEFAULT_STEP_TIMEOUT",
    "Client",
    "ClientHandle",
    "CorruptedRecordError",
    "CriticalError",
    "EngineDriver",
    "EntryInProgressError",
    "ErrorEvent",
    "ErrorInfo",
    "EvictedError",
    "HistoryDivergedError",
    "HistoryEntry",
    "JoinError",
    "LeaseLostError",
    "Loop",
    "LoopResult",
    "RaceError",
    "RaceResult",
    "RollbackCheckpointError",
    "RollbackContext",
    "RollbackError",
    "SerializationError",
    "StartedWorkflow",
    "StepExhaustedError",
    "StepTimeoutError",
    "StorageError",
    "Worker",
    "WorkerStats",
    "WorkflowBusyError",
    "WorkflowContext",
    "WorkflowDescription",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowResult",
    "WorkflowState",
    "__version__",
    "run_workflow",
    "start_workflow",
]
