"""``start_workflow``: idempotent per id, one atomic store call, cheap to list by state."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from engine import SerializationError, codec, keys, start_workflow
from engine.keys import Field

pytestmark = pytest.mark.anyio


def _wid() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


async def _field(store: Any, wid: str, field: Field) -> Any:
    raw = await store.driver(wid).get(keys.field_key(field))
    return None if raw is None else codec.decode(raw, "test")


async def test_start_records_name_input_and_makes_due(store: Any) -> None:
    wid = _wid()
    started = await start_workflow(store, "order", wid, {"n": 1})
    assert (started.workflow_id, started.name, started.created) == (wid, "order", True)
    assert await _field(store, wid, Field.NAME) == "order"
    assert await _field(store, wid, Field.INPUT) == {"n": 1}
    assert await store.workflow_info(wid) == ("order", "pending")
    assert wid in await store.list_workflows("pending")
    assert wid in [w for w, _ in await store.due_alarms(now=time.time() + 1)]


async def test_start_twice_is_a_no_op(store: Any) -> None:
    wid = _wid()
    await start_workflow(store, "order", wid, "first")
    again = await start_workflow(store, "refund", wid, "second")
    assert (again.name, again.created) == ("order", False)
    assert await _field(store, wid, Field.INPUT) == "first"
    assert await _field(store, wid, Field.NAME) == "order"
    assert await store.workflow_info(wid) == ("order", "pending")


async def test_a_repeat_leaves_the_alarm_alone(store: Any) -> None:
    wid = _wid()
    await start_workflow(store, "order", wid, 7)
    (due,) = [at for w, at in await store.due_alarms(now=time.time() + 1) if w == wid]
    await start_workflow(store, "order", wid, 7)
    assert (wid, due) in await store.due_alarms(now=time.time() + 1)


async def test_unstorable_input_leaves_no_trace(store: Any) -> None:
    wid = _wid()
    with pytest.raises(SerializationError):
        await start_workflow(store, "order", wid, object())
    assert await store.workflow_info(wid) is None


async def test_list_by_state(store: Any) -> None:
    ids = [_wid() for _ in range(3)]
    for wid in ids:
        await start_workflow(store, "order", wid, None)
    claims = await store.claim_due("test", 30.0, 1000, now=time.time() + 1)
    (claim,) = [c for c in claims if c.workflow_id == ids[0]]
    await store.finish_run(claim, [], "completed", None)
    assert set(ids[1:]) <= set(await store.list_workflows("pending"))
    assert ids[0] in await store.list_workflows("completed")
    assert ids[0] not in await store.list_workflows("pending")
