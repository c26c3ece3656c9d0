"""Storage: one load, one batch per flush, names with their entry, corrupted records."""

from __future__ import annotations

from typing import Any

import pytest

from engine import CorruptedRecordError, WorkflowContext, keys, run_workflow
from engine.keys import Prefix
from engine.records import StepEntry
from engine.storage import Storage
from engine.testing import CountingDriver, FaultyDriver, SimulatedCrash

pytestmark = pytest.mark.anyio


async def _two_steps(ctx: WorkflowContext, _: None) -> None:
    await ctx.step("first-step-name", lambda: 1)
    await ctx.step("second", lambda: 2)


async def test_a_new_name_lands_in_the_same_batch_as_its_entry(driver: Any, wid: str) -> None:
    faulty = FaultyDriver(driver, crash_at=2)  # the first batch lands, the second does not
    with pytest.raises(SimulatedCrash):
        await run_workflow(wid, _two_steps, None, faulty).result()
    names = [v for _, v in await driver.list(keys.prefix_key(Prefix.NAMES))]
    history = await driver.list(keys.prefix_key(Prefix.HISTORY))
    # The first step's name is in the batch with its entry; a name may land before its
    # entry (the second step's is interned when the step is called), never after.
    assert len(history) == 1 and b"first-step-name" in names[0]


async def test_loading_reads_the_namespace_with_one_list(driver: Any, wid: str) -> None:
    await run_workflow(wid, _two_steps, None, driver).result()
    counting = CountingDriver(driver)
    storage = Storage(counting, wid)
    await storage.load()
    assert counting.calls == {"list": 1}
    recorded = storage.root.ordered()
    assert [storage.names.name(n.segment) for n in recorded] == ["first-step-name", "second"]
    assert all(isinstance(n.entry, StepEntry) and n.entry.done for n in recorded)


async def test_loading_from_a_snapshot_reads_nothing(driver: Any, wid: str) -> None:
    await run_workflow(wid, _two_steps, None, driver).result()
    rows = await driver.list(b"")
    counting = CountingDriver(driver)
    storage = Storage(counting, wid)
    await storage.load(rows)
    assert counting.calls == {}
    assert [storage.names.name(n.segment) for n in storage.root.ordered()] == [
        "first-step-name",
        "second",
    ]


async def test_a_key_of_no_known_table_fails_the_load(driver: Any, wid: str) -> None:
    await run_workflow(wid, _two_steps, None, driver).result()
    await driver.set(keys.pack((9, "x")), b"\x01\x00")  # a table a later version might add
    with pytest.raises(CorruptedRecordError, match="not a key this engine writes") as info:
        await run_workflow(wid, _two_steps, None, driver).result()
    assert repr(wid) in str(info.value) and "(9, 'x')" in str(info.value)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [(b"\x07garbage", "format version 7"), (b"\x01\xc1", "damaged record")],
)
async def test_a_corrupted_record_fails_clearly_and_leaves_the_store_untouched(
    driver: Any, wid: str, damage: bytes, fragment: str
) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.queue.next("go")

    await run_workflow(wid, wf, None, driver).result()
    key = (await driver.list(keys.prefix_key(Prefix.HISTORY)))[0][0]  # step "a"
    await driver.set(key, damage)
    before = await driver.list(b"")
    with pytest.raises(CorruptedRecordError) as info:
        await run_workflow(wid, wf, None, driver).result()
    assert repr(wid) in str(info.value) and fragment in str(info.value)
    assert str((int(Prefix.HISTORY), 0)) in str(info.value)  # names the damaged key
    assert await driver.list(b"") == before
