"""The handle: outcomes, async with, evict, cancel, wake, reading state from outside."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from engine import EvictedError, WorkflowContext, WorkflowState, run_workflow
from tests.support.workflows import Calls

pytestmark = pytest.mark.anyio


async def test_state_and_output_read_from_outside(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, n: int) -> int:
        return await ctx.step("double", lambda: n * 2)

    handle = run_workflow(wid, wf, 21, driver)
    assert await handle.get_state() == WorkflowState.PENDING
    assert await handle.get_output() is None and await handle.get_error() is None
    assert (await handle.result()).output == 42
    assert await handle.get_state() == WorkflowState.COMPLETED
    assert await handle.get_output() == 42
    assert (await handle.result()).output == 42  # a second call waits for (returns) the same run


async def test_a_completed_workflow_returns_its_output_without_running(
    driver: Any, wid: str
) -> None:
    calls = Calls()

    async def wf(ctx: WorkflowContext, _: None) -> str:
        calls.counts["body"] += 1
        return "out"

    await run_workflow(wid, wf, None, driver).result()
    again = await run_workflow(wid, wf, None, driver).result()
    assert again.state == WorkflowState.COMPLETED and again.output == "out"
    assert calls["body"] == 1


async def test_the_stored_input_wins_over_a_later_argument(driver: Any, wid: str) -> None:
    seen: list[Any] = []

    async def wf(ctx: WorkflowContext, order: Any) -> None:
        seen.append(order)
        await ctx.queue.next("go")

    await run_workflow(wid, wf, ("o-1", 5), driver).result()
    await run_workflow(wid, wf, "something else", driver).result()
    assert seen == [("o-1", 5), ("o-1", 5)]


async def test_async_with_runs_in_the_background(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> Any:
        [answer] = await ctx.queue.next("answer")
        return answer

    async with run_workflow(wid, wf, None, driver, mode="live") as handle:
        await handle.message("answer", "yes")
    assert (await handle.result()).output == "yes"


async def test_evict_lets_the_running_step_finish_and_keep_its_output(
    driver: Any, wid: str
) -> None:
    calls = Calls()
    started = anyio.Event()

    async def slow_charge() -> str:
        calls.counts["charge"] += 1
        started.set()
        await anyio.sleep(0.2)
        return "charged"

    async def wf(ctx: WorkflowContext, _: None) -> str:
        charged = await ctx.step("charge", slow_charge)
        await ctx.step("ship", calls.fn("ship"))
        return charged

    async with run_workflow(wid, wf, None, driver) as handle:
        await started.wait()
        handle.evict()
    result = await handle.result()
    assert result.evicted and result.state == WorkflowState.RUNNING
    assert calls.counts == {"charge": 1}
    resumed = await run_workflow(wid, wf, None, driver).result()
    assert resumed.output == "charged" and calls.counts == {"charge": 1, "ship": 1}


async def test_evict_wakes_a_live_run_waiting_in_memory(driver: Any, wid: str) -> None:
    seen: list[bool] = []

    async def wf(ctx: WorkflowContext, _: None) -> None:
        try:
            await ctx.sleep("long", 60)
        finally:
            seen.append(ctx.is_evicted() and ctx.aborted.is_set())

    async with run_workflow(wid, wf, None, driver, mode="live") as handle:
        await anyio.sleep(0.05)
        with anyio.fail_after(2):
            handle.evict()
            result = await handle.result()
    assert result.evicted and seen == [True]


def test_evicted_error_is_not_an_exception() -> None:
    assert issubclass(EvictedError, BaseException) and not issubclass(EvictedError, Exception)


async def test_cancel_is_permanent(store: Any, driver: Any, wid: str) -> None:
    calls = Calls()

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("a", calls.fn("a"))
        await ctx.sleep("long", 60)
        await ctx.step("b", calls.fn("b"))

    handle = run_workflow(wid, wf, None, driver)
    assert (await handle.result()).state == WorkflowState.SLEEPING
    await handle.cancel()
    assert await handle.get_state() == WorkflowState.CANCELLED
    assert wid not in {w for w, _ in await store.due_alarms(now=time.time() + 3600)}
    later = await run_workflow(wid, wf, None, driver).result()
    assert later.state == WorkflowState.CANCELLED and calls.counts == {"a": 1}


async def test_cancel_stops_a_live_run(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.queue.next("never")

    async with run_workflow(wid, wf, None, driver, mode="live") as handle:
        await anyio.sleep(0.05)
        with anyio.fail_after(2):
            await handle.cancel()
            result = await handle.result()
    assert result.state == WorkflowState.CANCELLED
    assert await handle.get_state() == WorkflowState.CANCELLED


async def test_wake_in_yield_mode_sets_an_alarm_for_now(store: Any, driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.queue.next("never")

    handle = run_workflow(wid, wf, None, driver)
    await handle.result()
    before = time.time()
    await handle.wake()
    due = dict(await store.due_alarms(now=time.time() + 0.01))
    assert before <= due[wid] <= time.time()


async def test_a_failure_inside_async_with_is_not_lost(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        raise LookupError("no such customer")

    with pytest.raises(LookupError, match="no such customer"):
        async with run_workflow(wid, wf, None, driver):
            pass


@pytest.mark.parametrize(
    ("args", "error"),
    [(("", "fn"), ValueError), (("w", "not callable"), TypeError)],
)
def test_run_workflow_checks_its_arguments(args: tuple[str, Any], error: type[Exception]) -> None:
    from drivers.memory import MemoryDriver

    workflow_id, fn = args
    with pytest.raises(error):
        run_workflow(workflow_id, fn if fn != "fn" else (lambda c, i: None), None, MemoryDriver())
    with pytest.raises(ValueError, match="mode must be"):
        run_workflow("w", lambda c, i: None, None, MemoryDriver(), mode="turbo")  # type: ignore[arg-type]


async def test_completion_clears_an_alarm_only_when_one_can_exist(
    store: Any, driver: Any, wid: str
) -> None:
    from engine.testing import CountingDriver

    async def wf(ctx: WorkflowContext, _: None) -> int:
        return await ctx.step("only", lambda: 1)

    fresh = CountingDriver(driver)
    assert (await run_workflow(wid, wf, None, fresh).result()).output == 1
    assert fresh.calls["clear_alarm"] == 0  # a first run that never waited armed nothing

    async def waits(ctx: WorkflowContext, _: None) -> Any:
        return await ctx.queue.next("go")

    other = f"{wid}-msg"
    counting = CountingDriver(store.driver(other))
    handle = run_workflow(other, waits, None, counting)
    await handle.message("go", "now")  # sets an alarm for now
    assert (await handle.result()).output == ["now"]
    assert counting.calls["clear_alarm"] == 1
    assert other not in {w for w, _ in await store.due_alarms(now=time.time() + 60)}


async def test_an_unserializable_input_fails_before_anything_is_written(
    driver: Any, wid: str
) -> None:
    from engine import SerializationError

    async def wf(ctx: WorkflowContext, order: Any) -> None:
        raise AssertionError("must not run")

    with pytest.raises(SerializationError, match=rf"workflow '{wid}' input cannot be stored.*set"):
        await run_workflow(wid, wf, {"skus": {1, 2}}, driver).result()
    assert await driver.list(b"") == []


async def test_an_unserializable_output_fails_the_workflow_clearly(driver: Any, wid: str) -> None:
    from engine import SerializationError

    async def wf(ctx: WorkflowContext, _: None) -> Any:
        await ctx.step("ok", lambda: 1)
        return {"when": time}  # a module object

    handle = run_workflow(wid, wf, None, driver)
    with pytest.raises(SerializationError, match=rf"workflow '{wid}' output cannot be stored"):
        await handle.result()
    assert await handle.get_state() == WorkflowState.FAILED
    assert await handle.get_output() is None
