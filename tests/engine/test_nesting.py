"""Control flow inside control flow: loops in branches, joins and races in iterations."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from engine import (
    CriticalError,
    HistoryDivergedError,
    Loop,
    LoopResult,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from tests.support.workflows import Calls, completion_order

pytestmark = pytest.mark.anyio


async def test_loop_inside_a_join_branch(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def counter(bctx: WorkflowContext) -> Any:
            async def body(lctx: WorkflowContext, i: int) -> LoopResult:
                await lctx.step("s", calls.fn(f"s{i}", i))
                return Loop.break_(i) if i == 6 else Loop.continue_(i + 1)

            return await bctx.loop("l", body, state=0, commit_interval=2, history_keep=2)

        async def waiter(bctx: WorkflowContext) -> Any:
            [payload] = await bctx.queue.next("go", names=["go"])
            return payload

        return await ctx.join("j", {"counter": counter, "waiter": waiter})

    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    assert all(calls[f"s{i}"] == 1 for i in range(7))
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("go", "went")
    result = await handle.result()
    assert result.output == {"counter": 6, "waiter": "went"}
    assert all(calls[f"s{i}"] == 1 for i in range(7)), "the finished loop replayed"


async def test_join_inside_loop_iterations(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, total: int) -> LoopResult:
            i = total // 3

            async def a(bctx: WorkflowContext) -> Any:
                return await bctx.step("x", calls.fn(f"a{i}", 1))

            async def b(bctx: WorkflowContext) -> Any:
                return await bctx.step("x", calls.fn(f"b{i}", 2))

            parts = await lctx.join("j", {"a": a, "b": b})
            total += parts["a"] + parts["b"]
            return Loop.break_(total) if i == 4 else Loop.continue_(total)

        total = await ctx.loop("l", body, state=0, commit_interval=2, history_keep=2)
        await ctx.sleep("later", 3600)
        return total

    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    counts = dict(calls.counts)
    assert counts == {f"{n}{i}": 1 for n in "ab" for i in range(5)}
    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    assert dict(calls.counts) == counts


async def test_divergence_in_a_branch_of_an_iteration_names_the_path(driver: Any, wid: str) -> None:
    def version(kind: str) -> Any:
        async def workflow(ctx: WorkflowContext, _: Any) -> Any:
            async def body(lctx: WorkflowContext, i: int) -> LoopResult:
                async def a(bctx: WorkflowContext) -> Any:
                    if i == 1 and kind == "sleep":
                        await bctx.sleep("x", 0)
                    else:
                        await bctx.step("x", lambda: i)
                    if i == 2:
                        await bctx.queue.next("never")

                await lctx.join("j", {"a": a})
                return Loop.continue_(i + 1)

            await ctx.loop("l", body, state=0, commit_interval=10)

        return workflow

    assert (await run_workflow(wid, version("step"), None, driver).result()).state == "sleeping"
    with pytest.raises(HistoryDivergedError, match="l/~1/j/a/x"):
        await run_workflow(wid, version("sleep"), None, driver).result()


async def test_race_inside_a_loop_yields_on_the_earliest_deadline(driver: Any, wid: str) -> None:
    calls = Calls()
    timeout = 0.15

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, winners: list[str]) -> LoopResult:
            i = len(winners)

            async def work(rctx: WorkflowContext) -> Any:
                if i == 2:
                    await rctx.queue.next("never", names=["never"])
                return await rctx.step("w", calls.fn(f"w{i}"))

            async def slow(rctx: WorkflowContext) -> Any:
                await rctx.sleep("t", timeout)
                return "timeout"

            result = await lctx.race("r", {"work": work, "slow": slow})
            winners = [*winners, result.winner]
            return Loop.break_(winners) if i == 4 else Loop.continue_(winners)

        return await ctx.loop("l", body, state=[], commit_interval=2)

    started = time.time()
    first = await run_workflow(wid, workflow, None, driver).result()
    assert first.state == WorkflowState.SLEEPING and first.wake_at is not None
    assert started + timeout <= first.wake_at <= time.time() + timeout
    await anyio.sleep(max(0.0, first.wake_at - time.time()) + 0.01)
    done = await run_workflow(wid, workflow, None, driver).result()
    assert done.output == ["work", "work", "slow", "work", "work"]
    assert dict(calls.counts) == {"w0": 1, "w1": 1, "w3": 1, "w4": 1}


async def test_race_inside_a_join_branch_in_live_mode(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def racing(bctx: WorkflowContext) -> Any:
            async def reply(rctx: WorkflowContext) -> Any:
                [payload] = await rctx.queue.next("reply", names=["reply"])
                return payload

            async def deadline(rctx: WorkflowContext) -> Any:
                await rctx.sleep("t", 0.2)
                return "too late"

            return list(await bctx.race("r", {"reply": reply, "deadline": deadline}))

        async def steady(bctx: WorkflowContext) -> Any:
            return await bctx.step("s", calls.fn("s"))

        return await ctx.join("j", {"racing": racing, "steady": steady})

    with anyio.fail_after(10):
        result = await run_workflow(wid, workflow, None, driver, mode="live").result()
    assert result.output == {"racing": ["deadline", "too late"], "steady": "s"}
    again = await run_workflow(wid, workflow, None, driver).result()
    assert again.output == result.output and calls["s"] == 1


async def test_race_inside_a_join_branch_replays_the_winner(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def racing(bctx: WorkflowContext) -> Any:
            async def fast(rctx: WorkflowContext) -> Any:
                return await rctx.step("f", calls.fn("f"))

            async def slow(rctx: WorkflowContext) -> Any:
                calls.counts["slow.branch"] += 1
                await rctx.sleep("t", 3600)

            return list(await bctx.race("r", {"fast": fast, "slow": slow}))

        async def waiter(bctx: WorkflowContext) -> Any:
            return await bctx.queue.next("go", names=["go"])

        return await ctx.join("j", {"racing": racing, "waiter": waiter})

    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("go", 1)
    result = await handle.result()
    assert result.output == {"racing": ["fast", "f"], "waiter": [1]}
    assert dict(calls.counts) == {"f": 1, "slow.branch": 1}


async def test_compensations_inside_branches_and_iterations(driver: Any, wid: str) -> None:
    done: list[str] = []
    undone: list[str] = []

    def do(key: str) -> Any:
        def call() -> str:
            done.append(key)
            return key

        return call

    async def undo(rctx: Any, output: str) -> None:
        undone.append(output)

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.rollback_checkpoint("cp")

        async def looping(bctx: WorkflowContext) -> Any:
            async def body(lctx: WorkflowContext, i: int) -> LoopResult:
                await lctx.step("s", do(f"j/looping/l/~{i}/s"), rollback=undo)
                return Loop.break_(i) if i == 3 else Loop.continue_(i + 1)

            return await bctx.loop("l", body, state=0, commit_interval=2, history_keep=10)

        async def gated(bctx: WorkflowContext) -> Any:
            await bctx.step("g", do("j/gated/g"), rollback=undo)
            return await bctx.queue.next("go", names=["go"])

        await ctx.join("j", {"looping": looping, "gated": gated})

        async def outer(lctx: WorkflowContext, i: int) -> LoopResult:
            async def a(bctx: WorkflowContext) -> Any:
                return await bctx.step("x", do(f"m/~{i}/j/a/x"), rollback=undo)

            async def b(bctx: WorkflowContext) -> Any:
                return await bctx.step("x", do(f"m/~{i}/j/b/x"), rollback=undo)

            await lctx.join("j", {"a": a, "b": b})
            return Loop.break_(i) if i == 2 else Loop.continue_(i + 1)

        await ctx.loop("m", outer, state=0, commit_interval=1, history_keep=5)

        def decline() -> None:
            raise CriticalError("declined")

        await ctx.step("charge", decline)

    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("go", None)
    with pytest.raises(CriticalError, match="declined"):
        await handle.result()
    assert len(done) == 11
    # Newest first by completion (the order of their effects may differ: sync bodies run
    # in threads, and two branches' can overlap).
    assert undone == list(reversed(await completion_order(driver, wid)))
    assert sorted(undone) == sorted(done)
