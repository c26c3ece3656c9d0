"""What a worker reports: its counters, and one structured log record per event.

Every record carries ``event``, ``workflow_id`` and ``worker`` as attributes (``extra``)
and its details as ``fields``, so ``engine.cli`` can print each as one JSON object per line,
while a plain logging setup still gets a readable line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("engine.worker")


@dataclass
class WorkerStats:
    """Counters of what one worker did since it started (read them in tests and metrics)."""

    claimed: int = 0
    completed: int = 0
    suspended: int = 0
    evicted: int = 0
    failed: int = 0
    leases_lost: int = 0  # a heartbeat found the lease gone: the run was evicted at once
    fencing_rejections: int = 0  # the store refused a write: the run was abandoned
    unknown: int = 0  # no registered function (or no stored input): left untouched
    corrupted: int = 0  # a stored record could not be read: left untouched, held off
    diverged: int = 0  # the code did not match history: left as it was, tried again later
    store_errors: int = 0


class EventLog:
    """Logs one worker's events on the ``engine.worker`` logger."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def log(self, level: int, event: str, workflow_id: str | None = None, **fields: Any) -> None:
        if not logger.isEnabledFor(level):
            return
        for key, value in fields.items():
            if isinstance(value, BaseException):
                fields[key] = f"{type(value).__name__}: {value}"
        details = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        logger.log(
            level,
            "%s %s %s",
            event,
            workflow_id or "-",
            details,
            extra={
                "event": event,
                "workflow_id": workflow_id,
                "worker": self.worker_id,
                "fields": fields,
            },
        )
