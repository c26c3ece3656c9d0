"""Damaged records: every family x every kind of damage, on every store.

A record the engine cannot read (damaged bytes, an unknown format version, the wrong type
or shape) fails the run with ``CorruptedRecordError`` naming the workflow, the record's
family and where it is, before any code of the workflow runs; nothing is written, the
workflow is not marked failed, and other workflows on the store are unaffected. Repairing
the record lets the workflow carry on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from engine import CorruptedRecordError, WorkflowContext, WorkflowState, codec, keys, run_workflow
from engine.keys import Field, Prefix

pytestmark = pytest.mark.anyio


def make_workflow(calls: Counter[str]) -> Any:
    async def workflow(ctx: WorkflowContext, _: None) -> str:
        calls["body"] += 1
        await ctx.step("a", lambda: 1)
        await ctx.join("j", {"x": lambda b: b.step("s", lambda: 2)})
        [go] = await ctx.queue.next("wait", names=["go"])
        return str(go)

    return workflow


# family -> (the key to damage, what the error names besides the workflow)
async def _target(driver: Any, family: str) -> tuple[bytes, str]:
    async def first(prefix: Prefix) -> bytes:
        return (await driver.list(keys.prefix_key(prefix)))[0][0]

    if family == "name":
        return await first(Prefix.NAMES), "name at key (1, 0)"
    if family == "history entry":
        return await first(Prefix.HISTORY), "history entry at a (key (2, 0))"
    if family == "metadata":
        return await first(Prefix.METADATA), "metadata at j/x (key (3, 1, 2))"
    if family == "message":
        return await first(Prefix.MESSAGES), "message at key (4, "
    return keys.field_key(Field.STATE), "field at key (5, 1)"


WRONG_TYPE = {
    "name": 7,
    "history entry": [1, 2],
    "metadata": "x",
    "message": 3.5,
    "field": 1,
}
WRONG_SHAPE = {
    "name": "",
    "history entry": {"k": "step", "p": 0, "d": "yes"},
    "metadata": {"st": "bogus"},
    "message": {"n": "other"},
    "field": "exploded",
}
DAMAGES: dict[str, Callable[[str, bytes], bytes]] = {
    "truncated": lambda _, raw: raw[: len(raw) // 2],
    "flipped byte": lambda _, raw: raw[:1] + bytes([raw[1] ^ 0xFF]) + raw[2:],
    "unknown format version": lambda _, raw: b"\x09" + raw[1:],
    "empty": lambda _, raw: b"",
    "wrong type": lambda family, _: codec.encode(WRONG_TYPE[family], "test"),
    "wrong shape": lambda family, _: codec.encode(WRONG_SHAPE[family], "test"),
}
FAMILIES = ["name", "history entry", "metadata", "message", "field"]


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("family", FAMILIES)
async def test_a_damaged_record_fails_the_run_before_anything_runs_or_is_written(
    store: Any, wid: str, family: str, damage: str
) -> None:
    calls: Counter[str] = Counter()
    workflow = make_workflow(calls)
    driver = store.driver(wid)
    handle = run_workflow(wid, workflow, None, driver)
    assert (await handle.result()).state == WorkflowState.SLEEPING
    await handle.message("other", "not for this wait")
    key, names = await _target(driver, family)
    good = await driver.get(key)
    assert good is not None
    await driver.set(key, DAMAGES[damage](family, good))
    before = await driver.list(b"")
    calls.clear()

    with pytest.raises(CorruptedRecordError) as info:
        await run_workflow(wid, workflow, None, driver).result()

    message = str(info.value)
    assert f"workflow {wid!r} {names}" in message, message
    assert calls["body"] == 0  # no code of the workflow ran
    assert await driver.list(b"") == before  # nothing written: no state, error, name
    # Another workflow on the same store is unaffected.
    other = run_workflow(f"{wid}-other", workflow, None, store.driver(f"{wid}-other"))
    await other.message("go", "yes")
    assert (await other.result()).output == "yes"
    # Repaired, the workflow carries on where it was: it was never marked failed.
    await driver.set(key, good)
    calls.clear()
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("go", "now")
    done = await handle.result()
    assert (done.state, done.output) == (WorkflowState.COMPLETED, "now")
    assert calls["body"] == 1 and await handle.get_error() is None


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"k": "teleport", "p": 0}, "unknown entry kind 'teleport'"),
        ({"k": "step", "p": -1, "d": True, "o": 1}, "p must be an int >= 0"),
        ({"k": "step", "p": 0, "d": True}, "missing field 'o'"),
        ({"k": "sleep", "p": 0, "w": "soon", "d": False}, "w must be a number"),
        ({"k": "message", "p": 0, "dl": None, "d": True, "m": "x"}, "m must be a list"),
        ({"k": "join", "p": 0, "b": ["a", 1]}, "b must be a list of names"),
        ({"k": "race", "p": 0, "b": ["a"], "w": "z", "o": b"\x01\x01"}, "winner 'z'"),
        ({"k": "loop", "p": 0, "i": 1, "d": False, "st": 5}, "st must be an encoded record"),
        ({"k": "removed", "p": 0, "ot": "checkpoint"}, "ot must be one of"),
    ],
)
async def test_each_entry_kind_checks_its_own_shape(
    driver: Any, wid: str, entry: dict[str, Any], reason: str
) -> None:
    calls: Counter[str] = Counter()
    workflow = make_workflow(calls)
    await run_workflow(wid, workflow, None, driver).result()
    key = (await driver.list(keys.prefix_key(Prefix.HISTORY)))[0][0]
    await driver.set(key, codec.encode(entry, "test"))
    calls.clear()
    with pytest.raises(CorruptedRecordError, match=reason) as info:
        await run_workflow(wid, workflow, None, driver).result()
    assert "history entry at a" in str(info.value) and calls["body"] == 0


async def test_a_failed_step_without_its_error_is_corrupted(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("a", lambda: 1)

    await run_workflow(wid, workflow, None, driver).result()
    history = keys.prefix_key(Prefix.HISTORY)
    location = (await driver.list(history))[0][0][len(history) :]
    meta_key = keys.prefix_key(Prefix.METADATA) + location
    await driver.set(meta_key, codec.encode({"st": "exhausted", "a": 4}, "test"))
    with pytest.raises(CorruptedRecordError, match="exhausted with no error"):
        await run_workflow(wid, workflow, None, driver).result()


async def test_a_location_naming_no_stored_name_is_corrupted(driver: Any, wid: str) -> None:
    calls: Counter[str] = Counter()
    workflow = make_workflow(calls)
    await run_workflow(wid, workflow, None, driver).result()
    await driver.set(keys.history_key((99,)), codec.encode({"k": "checkpoint", "p": 9}, "t"))
    with pytest.raises(CorruptedRecordError, match="name that is not stored"):
        await run_workflow(wid, workflow, None, driver).result()
