"""ctx.queue.next: FIFO, names, count, timeout, exactly-once consumption, live wake-ups."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from engine import Loop, WorkflowContext, WorkflowState, keys, run_workflow
from engine.keys import Prefix

pytestmark = pytest.mark.anyio


async def _message_keys(driver: Any) -> list[bytes]:
    return [k for k, _ in await driver.list(keys.prefix_key(Prefix.MESSAGES))]


async def test_messages_sent_before_the_first_run_arrive_fifo(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        first = await ctx.queue.next("two", count=2)
        second = await ctx.queue.next("one")
        return [first, second]

    handle = run_workflow(wid, wf, None, driver)
    for payload in ["m1", ("m2", b"\x00"), {"m": 3}]:
        await handle.message("item", payload)
    result = await handle.result()
    assert result.output == [["m1", ("m2", b"\x00")], [{"m": 3}]]
    assert await _message_keys(driver) == []


async def test_only_named_messages_are_taken_and_others_stay(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        return await ctx.queue.next("paid", names=["payment-ok", "payment-late"])

    handle = run_workflow(wid, wf, None, driver)
    await handle.message("shipping", "s1")
    await handle.message("payment-late", "p1")
    result = await handle.result()
    assert result.output == ["p1"]
    assert len(await _message_keys(driver)) == 1  # "shipping" is still there for later


async def test_a_count_waits_until_enough_messages_arrived(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        return await ctx.queue.next("batch", names=["item"], count=3)

    handle = run_workflow(wid, wf, None, driver)
    await handle.message("item", 1)
    await handle.message("item", 2)
    first = await handle.result()
    assert first.state == WorkflowState.SLEEPING and first.wake_at is None
    assert len(await _message_keys(driver)) == 2  # not consumed until the wait is satisfied
    second = run_workflow(wid, wf, None, driver)
    await second.message("item", 3)
    assert (await second.result()).output == [1, 2, 3]


async def test_a_short_timeout_returns_what_arrived(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        none = await ctx.queue.next("none", names=["other"], timeout=0.01)
        some = await ctx.queue.next("some", count=5, timeout=0.01)
        return [none, some]

    handle = run_workflow(wid, wf, None, driver)
    await handle.message("x", "only")
    assert (await handle.result()).output == [[], ["only"]]


async def test_a_long_timeout_yields_until_its_deadline(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        return await ctx.queue.next("reply", timeout=0.3)

    before = time.time()
    first = await run_workflow(wid, wf, None, driver).result()
    assert first.state == WorkflowState.SLEEPING and first.wake_at is not None
    assert 0.29 <= first.wake_at - before < 1.0
    await anyio.sleep(first.wake_at - time.time() + 0.01)
    assert (await run_workflow(wid, wf, None, driver).result()).output == []


async def test_a_message_arriving_during_a_yield_mode_run_is_seen(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        await ctx.step("notify-partner", partner)
        return await ctx.queue.next("answer")

    handle = run_workflow(wid, wf, None, driver)

    async def partner() -> None:
        await handle.message("answer", 42)  # the partner answers while the run goes on

    assert (await handle.result()).output == [42]


async def test_live_mode_is_woken_by_a_message(store: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        return await ctx.queue.next("approval", names=["approved"])

    async with run_workflow(wid, wf, None, store.driver(wid), mode="live") as handle:
        await anyio.sleep(0.1)
        assert await handle.get_state() in (WorkflowState.RUNNING, WorkflowState.PENDING)
        # Sent through another driver of the same store, as another process would.
        other = run_workflow(wid, wf, None, store.driver(wid))
        await other.message("approved", "by-alice")
        with anyio.fail_after(5):
            result = await handle.result()
    assert result.output == ["by-alice"]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"count": 0}, "count must be an int >= 1"),
        ({"count": 1.5}, "count must be an int >= 1"),
        ({"names": []}, "names must be None or a non-empty list"),
        ({"names": "approved"}, "names must be None or a non-empty list"),
        ({"timeout": -1}, "timeout must be None or a finite number"),
    ],
)
async def test_bad_arguments_are_rejected(
    driver: Any, wid: str, options: dict[str, Any], fragment: str
) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.queue.next("wait", **options)

    with pytest.raises(ValueError, match=rf"{wid}.*queue.next 'wait': {fragment}"):
        await run_workflow(wid, wf, None, driver).result()


async def test_a_sleeping_result_says_which_messages_it_waits_for(store: Any, wid: str) -> None:
    driver = store.driver(wid)

    async def named(ctx: WorkflowContext, _: None) -> None:
        await ctx.queue.next("w", names=["shipped", "cancelled"])

    result = await run_workflow(wid, named, None, driver).result()
    assert result.waiting_for_messages == ["cancelled", "shipped"] and result.wake_at is None

    async def branches(ctx: WorkflowContext, _: None) -> None:
        async def any_name(b: WorkflowContext) -> None:
            await b.queue.next("w")

        async def one_name(b: WorkflowContext) -> None:
            await b.queue.next("w", names=["approve"])

        async def sleeps(b: WorkflowContext) -> None:
            await b.sleep("s", 3600)

        await ctx.join("j", {"a": any_name, "b": one_name, "c": sleeps})

    result = await run_workflow(f"{wid}-j", branches, None, store.driver(f"{wid}-j")).result()
    assert result.waiting_for_messages == ["*", "approve"] and result.wake_at is not None

    async def loop_body(ctx: WorkflowContext, _: None) -> None:
        async def body(it: WorkflowContext, state: Any) -> Any:
            await it.queue.next("m", names=["tick"])
            return Loop.continue_(state)

        await ctx.loop("l", body)

    result = await run_workflow(f"{wid}-l", loop_body, None, store.driver(f"{wid}-l")).result()
    assert result.waiting_for_messages == ["tick"]

    async def only_sleeps(ctx: WorkflowContext, _: None) -> None:
        await ctx.sleep("s", 3600)

    result = await run_workflow(f"{wid}-s", only_sleeps, None, store.driver(f"{wid}-s")).result()
    assert result.waiting_for_messages is None and result.wake_at is not None
