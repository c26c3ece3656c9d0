"""A crash at every single driver write: the next runs resume to the uninterrupted output.

The workflow has 5 steps, a sleep long enough to yield, and 2 message waits. For each k the
first process "dies" at its k-th write (``FaultyDriver``: that write and every later one
never reach the store); fresh runs on the plain driver then take it to completion. A step
whose write landed before the crash must never run again; a step whose write had not
landed may run once more (that is the at-least-once edge of any step); every message is
consumed exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import pytest

from engine import WorkflowContext, WorkflowState, keys, run_workflow
from engine.keys import Prefix
from engine.records import StepEntry
from engine.storage import Storage
from engine.testing import CountingDriver, FaultyDriver, SimulatedCrash

pytestmark = pytest.mark.anyio

STEPS = ["reserve", "charge", "pack", "ship", "notify"]


def make_workflow(log: Counter[str]) -> Any:
    def effect(name: str, value: Any) -> Any:
        def call() -> Any:
            log[name] += 1
            return value

        return call

    async def order(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
        reserved = await ctx.step("reserve", effect("reserve", [order_id, 2]))
        charged = await ctx.step("charge", effect("charge", {"amount": 40, "id": (order_id, 1)}))
        [address] = await ctx.queue.next("address", names=["address"])
        await ctx.sleep("cool-off", 0.08)  # longer than the poll interval: the run yields
        packed = await ctx.step("pack", effect("pack", f"box-for-{address}"))
        [carrier] = await ctx.queue.next("carrier", names=["carrier"])
        shipped = await ctx.step("ship", effect("ship", carrier))
        await ctx.step("notify", effect("notify", None))
        return {"r": reserved, "c": charged, "p": packed, "s": shipped}

    return order


EXPECTED = {"r": ["o-1", 2], "c": {"amount": 40, "id": ("o-1", 1)}, "p": "box-for-home", "s": "ups"}


async def _send_messages(driver: Any, wid: str) -> None:
    handle = run_workflow(wid, make_workflow(Counter()), "o-1", driver)
    await handle.message("address", "home")
    await handle.message("carrier", "ups")


async def _run_to_completion(driver: Any, wid: str, log: Counter[str]) -> Any:
    for _ in range(20):
        result = await run_workflow(wid, make_workflow(log), "o-1", driver).result()
        if result.state == WorkflowState.COMPLETED:
            return result
        assert result.state == WorkflowState.SLEEPING and result.wake_at is not None
        await anyio.sleep(max(0.0, result.wake_at - time.time()) + 0.005)
    raise AssertionError("the workflow did not complete in 20 runs")


async def _landed_steps(driver: Any, wid: str) -> set[str]:
    storage = Storage(driver, wid)
    await storage.load()
    return {
        storage.names.name(node.segment)
        for node in storage.root.ordered()
        if isinstance(node.entry, StepEntry) and node.entry.done
    }


async def test_uninterrupted_reference_run(store: Any, wid: str) -> None:
    driver = store.driver(wid)
    await _send_messages(driver, wid)
    log: Counter[str] = Counter()
    assert (await _run_to_completion(driver, wid, log)).output == EXPECTED
    assert log == Counter(dict.fromkeys(STEPS, 1))


async def test_a_crash_at_any_write_resumes_to_the_same_output(store: Any, wid: str) -> None:
    reference = store.driver(f"{wid}-reference")
    await _send_messages(reference, f"{wid}-reference")
    counting = CountingDriver(reference)
    await _run_to_completion(counting, f"{wid}-reference", Counter())
    total_writes = counting.writes
    assert total_writes >= 7  # 5 steps, yields, completion: every kind of write is crossed

    for k in range(1, total_writes + 1):
        case = f"{wid}-k{k}"
        driver = store.driver(case)
        await _send_messages(driver, case)
        log: Counter[str] = Counter()
        faulty = FaultyDriver(driver, crash_at=k)
        with pytest.raises(SimulatedCrash):
            for _ in range(20):
                result = await run_workflow(case, make_workflow(log), "o-1", faulty).result()
                if result.state == WorkflowState.COMPLETED:
                    break
                await anyio.sleep(max(0.0, (result.wake_at or 0) - time.time()) + 0.005)
        landed = await _landed_steps(driver, case)
        before_resume = Counter(log)

        result = await _run_to_completion(driver, case, log)

        assert result.output == EXPECTED, f"k={k}"
        for step in STEPS:
            if step in landed:
                assert log[step] == 1, f"k={k}: {step} landed before the crash yet ran again"
            else:
                assert log[step] - before_resume[step] == 1, f"k={k}: {step} after resume"
        assert await driver.list(keys.prefix_key(Prefix.MESSAGES)) == [], f"k={k}"
