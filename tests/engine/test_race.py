"""ctx.race: the first branch to complete wins and is persisted, the others are cancelled."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from drivers.memory import MemoryDriver
from engine import (
    CriticalError,
    HistoryDivergedError,
    RaceError,
    RaceResult,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from tests.support.workflows import Calls, recorded_history

pytestmark = pytest.mark.anyio

TIMEOUT = 0.2  # above every test store's poll interval (0.05): a sleep this long yields


def work_or_timeout(calls: Calls, seconds: float = TIMEOUT) -> Any:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def work(bctx: WorkflowContext) -> Any:
            await bctx.step("before", calls.fn("work.before"))
            [payload] = await bctx.queue.next("reply", names=["reply"])
            return await bctx.step("after", calls.fn("work.after", payload))

        async def timeout(bctx: WorkflowContext) -> str:
            calls.counts["timeout.branch"] += 1
            await bctx.sleep("wait", seconds)
            return "timed out"

        winner, value = await ctx.race("r", {"work": work, "timeout": timeout})
        return [winner, value]

    return workflow


async def test_first_to_complete_wins_and_losers_are_cancelled(driver: Any, wid: str) -> None:
    slow_started = anyio.Event()
    seen_cancelled: list[str] = []
    calls = Calls()

    async def hang() -> None:
        slow_started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            seen_cancelled.append("slow.hang")
            raise

    async def fast_step() -> str:
        await slow_started.wait()
        return "fast"

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def slow(bctx: WorkflowContext) -> Any:
            await bctx.step("first", calls.fn("slow.first"))
            await bctx.step("hang", hang)
            return "slow"

        async def fast(bctx: WorkflowContext) -> Any:
            return await bctx.step("only", fast_step)

        result = await ctx.race("r", {"slow": slow, "fast": fast})
        assert isinstance(result, RaceResult)
        return [result.winner, result.value]

    with anyio.fail_after(10):
        result = await run_workflow(wid, workflow, None, driver).result()
    assert result.state == WorkflowState.COMPLETED and result.output == ["fast", "fast"]
    assert seen_cancelled == ["slow.hang"], "the loser saw anyio's cancellation"
    recorded = await recorded_history(driver, wid)
    assert recorded["r"].winner == "fast"  # type: ignore[union-attr]
    assert "r/fast/only" in recorded
    assert not [path for path in recorded if path.startswith("r/slow")], recorded


async def test_failing_branch_does_not_win(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def bad(bctx: WorkflowContext) -> Any:
            def boom() -> None:
                raise CriticalError("bad branch")

            return await bctx.step("x", boom)

        async def good(bctx: WorkflowContext) -> Any:
            await bctx.step("x", lambda: anyio.sleep(0.05))
            return "good"

        return list(await ctx.race("r", {"bad": bad, "good": good}))

    result = await run_workflow(wid, workflow, None, driver).result()
    assert result.output == ["good", "good"]


async def test_every_branch_failing_raises_race_error(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        def failing(label: str) -> Any:
            async def branch(bctx: WorkflowContext) -> Any:
                def boom() -> None:
                    raise CriticalError(f"{label} failed")

                return await bctx.step("x", boom)

            return branch

        return await ctx.race("r", {"a": failing("a"), "b": failing("b")})

    with pytest.raises(RaceError) as raised:
        await run_workflow(wid, workflow, None, driver).result()
    assert set(raised.value.errors) == {"a", "b"}
    assert all(isinstance(e, CriticalError) for e in raised.value.errors.values())
    assert "a failed" in str(raised.value) and "b failed" in str(raised.value)
    handle = run_workflow(wid, workflow, None, driver)
    assert await handle.get_state() == WorkflowState.FAILED
    with pytest.raises(RaceError):
        await handle.result()


async def test_replay_returns_recorded_winner_without_running_branches(
    driver: Any, wid: str
) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def a(bctx: WorkflowContext) -> Any:
            calls.counts["a.branch"] += 1
            return await bctx.step("x", calls.fn("a.x", {"n": 1}))

        async def b(bctx: WorkflowContext) -> Any:
            calls.counts["b.branch"] += 1
            await bctx.sleep("nap", 3600)
            return "b"

        result = await ctx.race("r", {"a": a, "b": b})
        await ctx.sleep("later", 3600)
        return list(result)

    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    assert dict(calls.counts) == {"a.branch": 1, "a.x": 1, "b.branch": 1}
    for _ in range(2):
        result = await run_workflow(wid, workflow, None, driver).result()
        assert result.state == WorkflowState.SLEEPING
    assert dict(calls.counts) == {"a.branch": 1, "a.x": 1, "b.branch": 1}


async def test_yield_mode_timeout_wins(driver: Any, wid: str) -> None:
    calls = Calls()
    workflow = work_or_timeout(calls)
    started = time.time()
    first = await run_workflow(wid, workflow, None, driver).result()
    assert first.state == WorkflowState.SLEEPING
    assert first.wake_at is not None
    assert started + TIMEOUT <= first.wake_at <= time.time() + TIMEOUT, "earliest deadline"
    assert "r/work/before" in await recorded_history(driver, wid)

    # Waking early changes nothing: the sleep is not cut short.
    again = await run_workflow(wid, workflow, None, driver).result()
    assert again.state == WorkflowState.SLEEPING and again.wake_at == first.wake_at

    await anyio.sleep(max(0.0, first.wake_at - time.time()) + 0.01)
    done = await run_workflow(wid, workflow, None, driver).result()
    assert done.output == ["timeout", "timed out"]
    recorded = await recorded_history(driver, wid)
    assert not [path for path in recorded if path.startswith("r/work")], recorded
    assert calls["work.before"] == 1 and calls["work.after"] == 0

    # A message arriving after the race was decided changes nothing.
    await run_workflow(wid, workflow, None, driver).message("reply", "late")
    assert (await run_workflow(wid, workflow, None, driver).result()).output == done.output


async def test_yield_mode_work_wins(driver: Any, wid: str) -> None:
    calls = Calls()
    workflow = work_or_timeout(calls, seconds=3600)
    first = await run_workflow(wid, workflow, None, driver).result()
    assert first.state == WorkflowState.SLEEPING
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("reply", "ok")
    done = await handle.result()
    assert done.output == ["work", "ok"]
    assert calls["work.before"] == 1 and calls["work.after"] == 1
    assert calls["timeout.branch"] == 2
    recorded = await recorded_history(driver, wid)
    assert not [path for path in recorded if path.startswith("r/timeout")], recorded
    # Replay: the recorded winner, no branch runs.
    replayed = await run_workflow(wid, workflow, None, driver).result()
    assert replayed.output == ["work", "ok"] and calls["timeout.branch"] == 2


async def test_live_mode_timeout_wins(driver: Any, wid: str) -> None:
    calls = Calls()
    started = time.monotonic()
    with anyio.fail_after(10):
        result = await run_workflow(wid, work_or_timeout(calls), None, driver, mode="live").result()
    assert result.output == ["timeout", "timed out"]
    assert time.monotonic() - started >= TIMEOUT
    assert calls["timeout.branch"] == 1, "live mode never left memory"


async def test_live_mode_work_wins_on_message(driver: Any, wid: str) -> None:
    calls = Calls()
    with anyio.fail_after(10):
        async with run_workflow(
            wid, work_or_timeout(calls, seconds=3600), None, driver, mode="live"
        ) as handle:
            while calls["work.before"] == 0:
                await anyio.sleep(0.01)
            await handle.message("reply", "ok")
            result = await handle.result()
    assert result.output == ["work", "ok"]


async def test_parked_loser_does_not_suspend_the_run_after_the_race(driver: Any, wid: str) -> None:
    # The winner finishes while the loser is parked on a long sleep: until the loser's
    # cancellation is delivered, every task of the run looks parked. The run must not yield
    # on the loser's deadline because of that.
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def work(bctx: WorkflowContext) -> Any:
            return await bctx.step("w", lambda: "done")

        async def timeout(bctx: WorkflowContext) -> Any:
            await bctx.sleep("t", 3600)
            return "timeout"

        for round_ in range(5):
            result = await ctx.race(f"r{round_}", {"work": work, "timeout": timeout})
            assert result.winner == "work"
            await ctx.sleep(f"short{round_}", 0.001)  # waits in memory
        return "finished"

    result = await run_workflow(wid, workflow, None, driver).result()
    assert result.state == WorkflowState.COMPLETED, result
    assert result.output == "finished"


async def test_divergence_inside_a_branch_names_the_path(driver: Any, wid: str) -> None:
    def version(kind: str) -> Any:
        async def workflow(ctx: WorkflowContext, _: Any) -> Any:
            async def work(bctx: WorkflowContext) -> Any:
                if kind == "step":
                    await bctx.step("x", lambda: 1)
                else:
                    await bctx.queue.next("x")
                await bctx.sleep("wait", 3600)

            async def other(bctx: WorkflowContext) -> Any:
                await bctx.sleep("wait", 3600)

            return await ctx.race("r", {"work": work, "other": other})

        return workflow

    assert (await run_workflow(wid, version("step"), None, driver).result()).state == "sleeping"
    # The other branch could still win once its sleep ends, but a divergence is not a
    # failing branch: it fails the race at once.
    with anyio.fail_after(10), pytest.raises(HistoryDivergedError, match="r/work/x"):
        await run_workflow(wid, version("message"), None, driver).result()


class _SlowBatchAfter:
    """Memory driver whose batches take ``delay`` seconds once ``armed`` is set."""

    def __init__(self, inner: MemoryDriver, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.armed = False
        self.worker_poll_interval = inner.worker_poll_interval

    async def batch(self, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        if self.armed:
            await anyio.sleep(self.delay)
        await self.inner.batch(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_loser_cancelled_while_flushing_leaves_storage_usable(wid: str) -> None:
    # The race is decided while a loser's batch is in flight: that batch must finish (or
    # whether it landed is unknown) and the run must go on writing.
    driver = _SlowBatchAfter(MemoryDriver(worker_poll_interval=0.05), delay=0.2)
    winner_flushed = anyio.Event()

    async def on_history_updated(_: str) -> None:
        if driver.armed and not winner_flushed.is_set():
            winner_flushed.set()
            await anyio.sleep(0.05)  # the loser starts its (slow) batch meanwhile

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def winner(bctx: WorkflowContext) -> Any:
            await bctx.step("warmup", lambda: None)
            driver.armed = True
            return await bctx.step("win", lambda: "won")

        async def loser(bctx: WorkflowContext) -> Any:
            await bctx.step("wait", winner_flushed.wait)
            return "lost"

        result = await ctx.race("r", {"winner": winner, "loser": loser})
        driver.armed = False
        return [*result, await ctx.step("after", lambda: "after")]

    with anyio.fail_after(10):
        result = await run_workflow(
            wid, workflow, None, driver, on_history_updated=on_history_updated
        ).result()
    assert result.output == ["winner", "won", "after"]
