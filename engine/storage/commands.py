"""Reaching a workflow from outside a run: messages, cancel, recover, wake, fields, starts.

Each is a few driver calls whose order matters for crash safety (a message lands before
the alarm that makes it seen; a cancel lands before its alarm is cleared), written here
once for the handle, the starter and the worker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import engine.storage.wire as wire
from engine import keys
from engine.driver import EngineDriver, is_notifier
from engine.errors import CorruptedRecordError
from engine.keys import Field
from engine.records import MISSING, ErrorRecord, Metadata
from engine.state import WorkflowState
from engine.storage.loaded import Storage
from engine.store import bound_store


async def send_message(driver: EngineDriver, workflow_id: str, name: str, data: Any) -> None:
    """Store a message under a fresh key, then make the workflow due and wake live runs.

    The send time orders messages FIFO; the random nonce keeps concurrent senders apart.
    Written before the alarm, so a crash in between leaves a message the next run sees.
    """
    sent_at = time.time()
    what = f"workflow {workflow_id!r} message {name!r}"
    raw = wire.message_bytes(name, data, sent_at, what)
    wire.check_size(raw, getattr(driver, "max_value_bytes", None), what)
    key = keys.message_key(time.time_ns(), random.getrandbits(62))
    store = bound_store(driver)
    if store is not None:  # the message and its alarm in one atomic call
        await store.post_message(workflow_id, key, raw, time.time())
        return
    await driver.batch([(key, raw)])
    await driver.set_alarm(workflow_id, time.time())
    if is_notifier(driver):
        await driver.notify(workflow_id)


async def request_run(driver: EngineDriver, workflow_id: str) -> None:
    """Make the workflow due now (whoever runs the store's alarms runs it)."""
    await driver.set_alarm(workflow_id, time.time())


async def cancel(driver: EngineDriver, workflow_id: str) -> None:
    """Record the state ``cancelled`` and clear the alarm: later runs skip the function.

    Through a store, one atomic call that also revokes the lease of a run in progress
    wherever it runs, so nothing it writes afterwards (its finish included) lands.
    """
    state = [
        (keys.field_key(Field.STATE), wire.value_bytes(WorkflowState.CANCELLED.value, "state"))
    ]
    store = bound_store(driver)
    if store is not None:
        await store.cancel(workflow_id, state)
        return
    await driver.batch(state)
    await driver.clear_alarm(workflow_id)


async def recover(driver: EngineDriver, workflow_id: str) -> None:
    """Make a failed workflow runnable again and make it due.

    With a rollback that failed part-way, the next run retries the remaining handlers (the
    steps were compensated, so they are not run again); otherwise exhausted and failed
    steps get fresh attempts and the workflow error is cleared.
    """
    storage = Storage(driver, workflow_id)
    await storage.load()
    if storage.fields.rollback_error is not None:
        storage.set_rollback_error(None)
        storage.set_state(WorkflowState.ROLLING_BACK)
    else:
        for location, node in storage.walk():
            if node.meta is not None and node.meta.failed:
                storage.record_meta(location, node, Metadata("recovered"))
        storage.set_error(None)
        storage.set_state(WorkflowState.PENDING)
    await storage.flush()
    await request_run(driver, workflow_id)


async def read_state(driver: EngineDriver, workflow_id: str) -> WorkflowState:
    raw = await driver.get(keys.field_key(Field.STATE))
    if raw is None:
        return WorkflowState.PENDING
    what = f"workflow {workflow_id!r} field state"
    try:
        return WorkflowState(wire.parse_string(raw, what))
    except ValueError as exc:
        raise CorruptedRecordError(f"{what}: {exc}") from None


async def read_output(driver: EngineDriver, workflow_id: str) -> Any:
    raw = await driver.get(keys.field_key(Field.OUTPUT))
    return None if raw is None else wire.parse_value(raw, f"workflow {workflow_id!r} output")


async def read_error(driver: EngineDriver, workflow_id: str) -> ErrorRecord | None:
    raw = await driver.get(keys.field_key(Field.ERROR))
    if raw is None:
        return None
    what = f"workflow {workflow_id!r} field error"
    try:
        return wire.parse_error(raw, what)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptedRecordError(f"{what}: {exc}") from None


def start_writes(
    workflow_id: str,
    name: str,
    input: Any,
    max_value_bytes: int | None = None,
    trace: dict[str, str] | None = None,
) -> list[tuple[bytes, bytes]]:
    """What starting a workflow writes into its namespace: its registered name and input,
    and the trace context of the caller when it is traced (its runs continue that trace).

    Encoded (and held to the store's limit) before anything touches the store: an input
    that cannot be stored leaves no trace.
    """
    what = f"workflow {workflow_id!r} input"
    raw_input = wire.value_bytes(input, what)
    wire.check_size(raw_input, max_value_bytes, what)
    writes = [
        (keys.field_key(Field.NAME), wire.value_bytes(name, f"workflow {workflow_id!r} name")),
        (keys.field_key(Field.INPUT), raw_input),
    ]
    if trace is not None:
        writes.append((keys.field_key(Field.TRACE), wire.trace_bytes(trace)))
    return writes


def started_as(rows: Sequence[tuple[bytes, bytes]], workflow_id: str) -> tuple[str | None, Any]:
    """The registered name and input (``MISSING`` when absent) found in a namespace's rows."""
    name: str | None = None
    value: Any = MISSING
    name_key, input_key = keys.field_key(Field.NAME), keys.field_key(Field.INPUT)
    for key, raw in rows:
        if key == name_key:
            what = f"workflow {workflow_id!r} field name"
            try:
                name = wire.parse_string(raw, what)
            except ValueError as exc:
                raise CorruptedRecordError(f"{what}: {exc}") from None
        elif key == input_key:
            value = wire.parse_value(raw, f"workflow {workflow_id!r} input")
    return name, value
