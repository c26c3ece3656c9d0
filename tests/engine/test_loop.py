"""ctx.loop: committed state, trimmed history, crash resume from the last commit, replay."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from drivers.memory import MemoryStore
from engine import (
    HistoryDivergedError,
    Loop,
    LoopResult,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from engine.testing import CountingDriver, FaultyDriver
from tests.support.workflows import Calls, recorded_history

pytestmark = pytest.mark.anyio


def counting_loop(calls: Calls, iterations: int, **options: Any) -> Any:
    """Sums 0..iterations-1 with one step per iteration; logs the state each body sees."""

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, state: dict[str, int]) -> LoopResult:
            calls.counts[f"body@{state['i']}"] += 1
            value = await lctx.step("add", calls.fn(f"add{state['i']}", state["i"]))
            state = {"i": state["i"] + 1, "sum": state["sum"] + value}
            return Loop.break_(state["sum"]) if state["i"] == iterations else Loop.continue_(state)

        return await ctx.loop("l", body, state={"i": 0, "sum": 0}, **options)

    return workflow


async def test_loop_returns_break_value_and_replays(driver: Any, wid: str) -> None:
    calls = Calls()
    inner = counting_loop(calls, 7, commit_interval=3)

    async def workflow(ctx: WorkflowContext, input: Any) -> Any:
        total = await inner(ctx, input)
        await ctx.sleep("later", 3600)
        return total

    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    assert all(calls[f"add{i}"] == 1 for i in range(7))
    before = dict(calls.counts)
    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    assert dict(calls.counts) == before, "a finished loop replays without calling the body"
    assert (await recorded_history(driver, wid))["l"].done is True  # type: ignore[union-attr]


async def test_crash_resumes_from_the_last_committed_state(store: Any, wid: str) -> None:
    iterations = 10
    reference = CountingDriver(store.driver(f"{wid}-reference"))
    result = await run_workflow(
        f"{wid}-reference", counting_loop(Calls(), iterations, commit_interval=3), None, reference
    ).result()
    assert result.output == sum(range(iterations))
    total_writes = reference.writes

    for crash_at in range(1, total_writes + 1):
        run_id = f"{wid}-{crash_at}"
        inner = store.driver(run_id)
        calls = Calls()
        workflow = counting_loop(calls, iterations, commit_interval=3)
        faulty = FaultyDriver(inner, crash_at)
        try:
            await run_workflow(run_id, workflow, None, faulty).result()
        except BaseException as exc:  # a crash may arrive wrapped in a task group's group
            assert faulty.crashed, exc
        else:
            pytest.fail(f"no crash at write {crash_at}")
        landed = await recorded_history(inner, run_id)
        committed = landed["l"].iteration if "l" in landed else 0  # type: ignore[union-attr]
        done_steps = {
            int(path.split("/")[1][1:])
            for path, entry in landed.items()
            if path.endswith("/add") and getattr(entry, "done", False)
        }
        before = dict(calls.counts)

        resumed = await run_workflow(run_id, workflow, None, inner).result()
        assert resumed.output == sum(range(iterations)), crash_at
        for i in range(iterations):
            ran_again = calls[f"add{i}"] - before.get(f"add{i}", 0)
            if i in done_steps:
                assert ran_again == 0, (crash_at, i, "a landed step ran twice")
            # The resumed run starts the body at the committed state, never before it.
            resumed_bodies = calls[f"body@{i}"] - before.get(f"body@{i}", 0)
            assert resumed_bodies == (1 if i >= committed else 0), (crash_at, i, committed)
        assert all(calls[f"add{i}"] >= 1 for i in range(iterations))


async def test_history_is_trimmed_and_keys_stay_bounded(driver: Any, wid: str) -> None:
    samples: list[int] = []

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, i: int) -> LoopResult:
            await lctx.step("a", lambda: i)
            await lctx.step("b", lambda: i * 2)
            if i % 20 == 0:
                samples.append(len(await driver.list(b"")))
            return Loop.break_(i) if i == 299 else Loop.continue_(i + 1)

        return await ctx.loop(
            "l", body, state=0, commit_interval=10, history_every=10, history_keep=10
        )

    result = await run_workflow(wid, workflow, None, driver).result()
    assert result.output == 299
    assert max(samples) <= 50 and samples[-1] <= samples[1] + 2, samples
    paths = await recorded_history(driver, wid)
    kept = sorted(
        int(p.split("/")[1][1:]) for p in paths if p.startswith("l/~") and p.endswith("/a")
    )
    assert kept == list(range(290, 300))
    assert len(await driver.list(b"")) <= 30


async def test_history_keep_beyond_commit_keeps_more_iterations(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, i: int) -> LoopResult:
            await lctx.step("a", lambda: i)
            return Loop.break_(i) if i == 24 else Loop.continue_(i + 1)

        return await ctx.loop(
            "l", body, state=0, commit_interval=5, history_every=10, history_keep=7
        )

    assert (await run_workflow(wid, workflow, None, driver).result()).output == 24
    paths = await recorded_history(driver, wid)
    kept = sorted(int(p.split("/")[1][1:]) for p in paths if p.startswith("l/~"))
    assert kept == list(range(18, 25))


async def test_configuration_that_could_replay_a_trimmed_iteration_is_rejected(
    driver: Any, wid: str
) -> None:
    async def body(lctx: WorkflowContext, state: Any) -> LoopResult:
        return Loop.break_(state)

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        with pytest.raises(ValueError, match="multiple of commit_interval"):
            ctx.loop("l", body, commit_interval=20, history_every=30)
        with pytest.raises(ValueError, match="commit_interval must be an int >= 1"):
            ctx.loop("l", body, commit_interval=0)
        with pytest.raises(ValueError, match="history_keep"):
            ctx.loop("l", body, history_keep=-1)
        # Nothing was recorded by the rejected calls: the name is still free.
        return await ctx.loop("l", body, state="ok", commit_interval=5, history_every=15)

    assert (await run_workflow(wid, workflow, None, driver).result()).output == "ok"


async def test_body_must_return_a_loop_result(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, state: Any) -> Any:
            return state

        return await ctx.loop("l", body, state=1)

    with pytest.raises(TypeError, match="Loop.continue_"):
        await run_workflow(wid, workflow, None, driver).result()


async def test_divergence_inside_an_iteration_names_the_path(driver: Any, wid: str) -> None:
    def version(kind: str) -> Any:
        async def workflow(ctx: WorkflowContext, _: Any) -> Any:
            async def body(lctx: WorkflowContext, i: int) -> LoopResult:
                if i == 3 and kind == "sleep":
                    await lctx.sleep("inner", 0)
                else:
                    await lctx.step("inner", lambda: i)
                if i == 4:
                    await lctx.sleep("wait", 3600)
                return Loop.continue_(i + 1)

            return await ctx.loop("l", body, state=0, commit_interval=100)

        return workflow

    assert (await run_workflow(wid, version("step"), None, driver).result()).state == "sleeping"
    with pytest.raises(HistoryDivergedError, match="l/~3/inner"):
        await run_workflow(wid, version("sleep"), None, driver).result()


async def test_yield_mode_iteration_waits_for_messages(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, seen: list[Any]) -> LoopResult:
            [item] = await lctx.queue.next("item", names=["item"])
            await lctx.step("handle", calls.fn(f"handle-{item}", item))
            seen = [*seen, item]
            return Loop.break_(seen) if item == "stop" else Loop.continue_(seen)

        return await ctx.loop("l", body, state=[], commit_interval=2)

    first = await run_workflow(wid, workflow, None, driver).result()
    assert first.state == WorkflowState.SLEEPING and first.wake_at is None
    for item in ("a", "b", "c"):
        handle = run_workflow(wid, workflow, None, driver)
        await handle.message("item", item)
        assert (await handle.result()).state == WorkflowState.SLEEPING
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("item", "stop")
    done = await handle.result()
    assert done.output == ["a", "b", "c", "stop"]
    assert all(calls[f"handle-{item}"] == 1 for item in ("a", "b", "c", "stop"))


async def _collect_items_live(driver: Any, wid: str) -> Any:
    """A live loop that takes one message per iteration until "stop"; its result."""

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, seen: list[Any]) -> LoopResult:
            [item] = await lctx.queue.next("item", names=["item"])
            seen = [*seen, item]
            return Loop.break_(seen) if item == "stop" else Loop.continue_(seen)

        return await ctx.loop("l", body, state=[], commit_interval=2)

    with anyio.fail_after(10):
        async with run_workflow(wid, workflow, None, driver, mode="live") as handle:
            for item in ("a", "b", "c", "stop"):
                await handle.message("item", item)
                await anyio.sleep(0.01)
            return (await handle.result()).output


async def test_live_mode_iteration_waits_for_messages(driver: Any, wid: str) -> None:
    assert await _collect_items_live(driver, wid) == ["a", "b", "c", "stop"]


async def test_live_mode_messages_are_consumed_once_on_a_slow_store(wid: str) -> None:
    # On a store whose calls take time (like Redis or Postgres), a local send and a
    # wake-up refresh messages at once: each message must still reach exactly one iteration.
    driver = MemoryStore(worker_poll_interval=0.05, latency=0.002).driver(wid)
    assert await _collect_items_live(driver, wid) == ["a", "b", "c", "stop"]
