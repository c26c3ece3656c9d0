"""ctx.sleep / ctx.sleep_until: in memory when short, by alarm when long, in both modes."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import pytest

from engine import WorkflowContext, WorkflowState, run_workflow
from tests.support.workflows import Calls

pytestmark = pytest.mark.anyio

# The store fixtures use worker_poll_interval=0.05: shorter sleeps wait in memory.


async def test_a_short_sleep_waits_in_memory(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> str:
        await ctx.sleep("nap", 0.02)
        return "awake"

    started = time.monotonic()
    result = await run_workflow(wid, wf, None, driver).result()
    assert result.output == "awake" and time.monotonic() - started >= 0.02


async def test_a_long_sleep_yields_with_an_alarm_and_resumes_after_it(
    store: Any, driver: Any, wid: str
) -> None:
    calls = Calls()

    async def wf(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("before", calls.fn("before"))
        await ctx.sleep("wait", 0.3)
        return await ctx.step("after", calls.fn("after"))

    before = time.time()
    first = await run_workflow(wid, wf, None, driver).result()
    assert first.state == WorkflowState.SLEEPING and first.wake_at is not None
    assert 0.29 <= first.wake_at - before < 1.0
    assert (wid, first.wake_at) in await store.due_alarms(now=first.wake_at + 0.001)
    assert wid not in {w for w, _ in await store.due_alarms(now=first.wake_at - 0.01)}
    early = await run_workflow(wid, wf, None, driver).result()
    assert early.state == WorkflowState.SLEEPING and early.wake_at == first.wake_at
    await anyio.sleep(max(0.0, first.wake_at - time.time()) + 0.01)
    done = await run_workflow(wid, wf, None, driver).result()
    assert done.output == "after" and calls.counts == {"before": 1, "after": 1}
    assert wid not in {w for w, _ in await store.due_alarms(now=time.time() + 100)}


async def test_sleep_until_uses_the_exact_timestamp(driver: Any, wid: str) -> None:
    target = time.time() + 60

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.sleep_until("past", time.time() - 10)
        await ctx.sleep_until("future", target)

    result = await run_workflow(wid, wf, None, driver).result()
    assert result.state == WorkflowState.SLEEPING and result.wake_at == target


async def test_live_mode_sleeps_in_memory_until_the_end(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> str:
        await ctx.sleep("wait", 0.2)
        return "done"

    started = time.monotonic()
    result = await run_workflow(wid, wf, None, driver, mode="live").result()
    assert result.output == "done" and time.monotonic() - started >= 0.2


async def test_wake_does_not_cut_a_live_sleep_short(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> str:
        await ctx.sleep("wait", 0.25)
        return "done"

    started = time.monotonic()
    async with run_workflow(wid, wf, None, driver, mode="live") as handle:
        await anyio.sleep(0.05)
        await handle.wake()
        result = await handle.result()
    assert result.output == "done" and time.monotonic() - started >= 0.25


async def test_user_code_cannot_swallow_the_yield_signal(driver: Any, wid: str) -> None:
    swallowed = []

    async def wf(ctx: WorkflowContext, _: None) -> str:
        try:
            await ctx.sleep("long", 30)
        except Exception as exc:  # what careless workflow code does
            swallowed.append(exc)
        return "went on"

    result = await run_workflow(wid, wf, None, driver).result()
    assert result.state == WorkflowState.SLEEPING and swallowed == []


@pytest.mark.parametrize("seconds", [-1, math.nan, math.inf, "5", True])
async def test_bad_durations_are_rejected(driver: Any, wid: str, seconds: Any) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.sleep("nap", seconds)

    with pytest.raises(ValueError, match=rf"{wid}.*sleep 'nap'.*seconds must be"):
        await run_workflow(wid, wf, None, driver).result()


async def test_a_bad_timestamp_is_rejected(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.sleep_until("later", math.nan)

    with pytest.raises(ValueError, match="sleep 'later': timestamp must be"):
        await run_workflow(wid, wf, None, driver).result()
