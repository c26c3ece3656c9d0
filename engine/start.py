"""``start_workflow``: record a workflow's name and input and make it due, once per id.

Crash-safe order, so a crash between any two writes leaves something a retry can finish:

1. ``register_workflow`` creates the index row only if absent (the idempotency key);
2. ``Field.NAME`` and ``Field.INPUT`` go into the workflow's namespace in one batch;
3. the alarm is set for now, which is what makes a worker pick the workflow up.

A worker only runs a workflow whose input is stored, so a start that crashed after step 1
is never run with a missing input; calling ``start_workflow`` again repairs it. A repeat
that finds the workflow still ``pending`` in the index sets the alarm again (a start that
crashed after step 2 left none); at worst that costs one extra replay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine import codec, keys
from engine.keys import Field
from engine.state import WorkflowState
from engine.store import WorkerStore


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
    existing workflow's registered name (its input stays the first one), unless the first
    call crashed before the input was stored, in which case this call completes it.
    """
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"workflow {workflow_id!r}: name must be a non-empty string")
    # Encode before touching the store: an input that cannot be stored must leave no trace.
    encoded_input = codec.encode(input, f"workflow {workflow_id!r} input")
    created = await store.register_workflow(workflow_id, name, WorkflowState.PENDING.value)
    driver = store.driver(workflow_id)
    if not created:
        info = await store.workflow_info(workflow_id)
        name = info[0] if info is not None and info[0] else name
        if await driver.get(keys.field_key(Field.INPUT)) is not None:
            if info is not None and info[1] == WorkflowState.PENDING.value:
                await driver.set_alarm(workflow_id, time.time())
            return StartedWorkflow(workflow_id, name, created=False)
    await driver.batch(
        [
            (keys.field_key(Field.NAME), codec.encode(name, f"workflow {workflow_id!r} name")),
            (keys.field_key(Field.INPUT), encoded_input),
        ]
    )
    await driver.set_alarm(workflow_id, time.time())
    return StartedWorkflow(workflow_id, name, created=created)
