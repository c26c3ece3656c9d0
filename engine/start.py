"""``start_workflow``: record a workflow's name and input and make it due, once per id.

One atomic store call (``WorkerStore.create_workflow``) adds the workflow to the index,
writes the workflow's name and input into its namespace and sets its alarm for now, so
a crash leaves either nothing (a retry starts it) or a workflow any worker can run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine.storage import commands
from engine.store import Lease, WorkerStore, check_workflow_id
from engine.tracing import current_carrier


@dataclass(frozen=True)
class StartedWorkflow:
    """What ``start_workflow`` knows about the workflow; ``created`` is False for a repeat."""

    workflow_id: str
    name: str
    created: bool


async def start_workflow(
    store: WorkerStore, name: str, workflow_id: str, input: Any
) -> StartedWorkflow:
    """Record ``name`` and ``input`` for ``workflow_id`` and make it due now.

    Idempotent per ``workflow_id``: a repeated call changes nothing and returns the
    existing workflow's registered name (its input stays the first one).
    """
    started, _ = await create(store, name, workflow_id, input)
    return started


async def create(
    store: WorkerStore,
    name: str,
    workflow_id: str,
    input: Any,
    owner: str | None = None,
    lease: float = 0.0,
) -> tuple[StartedWorkflow, Lease | None]:
    """``start_workflow``, optionally claiming the new workflow for ``owner`` (eager start)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"workflow {workflow_id!r}: name must be a non-empty string")
    check_workflow_id(workflow_id, store)
    writes = commands.start_writes(
        workflow_id, name, input, getattr(store, "max_value_bytes", None), current_carrier()
    )
    made = await store.create_workflow(workflow_id, name, writes, time.time(), owner, lease)
    return StartedWorkflow(workflow_id, made.name, made.created), made.lease
