"""ctx.join: concurrent branches in their own scopes, all settle, per-branch status, replay."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from engine import (
    CriticalError,
    HistoryDivergedError,
    JoinError,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from engine.storage import Storage
from engine.testing import CountingDriver
from tests.support.workflows import Calls, recorded_history

pytestmark = pytest.mark.anyio


async def statuses(driver: Any, wid: str, join: str = "j") -> dict[str, str]:
    """The persisted status of each branch of ``join`` (a branch never started is pending)."""
    storage = Storage(driver, wid)
    await storage.load()
    [join_node] = [n for loc, n in storage.walk() if storage.names.render(loc) == join]
    assert join_node.entry is not None
    return {
        name: getattr(join_node.children[storage.names.by_name[name]].meta, "status", "pending")
        for name in join_node.entry.branches  # type: ignore[union-attr]
    }


async def test_branches_run_concurrently_in_their_own_scopes(driver: Any, wid: str) -> None:
    a_started = anyio.Event()
    b_started = anyio.Event()

    async def meet(mine: anyio.Event, other: anyio.Event, value: str) -> str:
        mine.set()
        with anyio.fail_after(5):  # sequential branches would never meet
            await other.wait()
        return value

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def a(bctx: WorkflowContext) -> str:
            # The same step name in two branches: each branch is its own scope.
            return await bctx.step("x", lambda: meet(a_started, b_started, "from-a"))

        async def b(bctx: WorkflowContext) -> str:
            return await bctx.step("x", lambda: meet(b_started, a_started, "from-b"))

        return await ctx.join("j", {"a": a, "b": b})

    result = await run_workflow(wid, workflow, None, driver).result()
    assert result.state == WorkflowState.COMPLETED
    assert result.output == {"a": "from-a", "b": "from-b"}
    recorded = await recorded_history(driver, wid)
    assert recorded["j/a/x"].done and recorded["j/b/x"].done  # type: ignore[union-attr]
    assert recorded["j"].branches == ["a", "b"]  # type: ignore[union-attr]
    assert await statuses(driver, wid) == {"a": "completed", "b": "completed"}


async def test_replay_runs_no_step_again_and_writes_nothing(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        def branch(name: str) -> Any:
            async def run(bctx: WorkflowContext) -> list[str]:
                first = await bctx.step("one", calls.fn(f"{name}.one"))
                second = await bctx.step("two", calls.fn(f"{name}.two"))
                return [first, second]

            return run

        joined = await ctx.join("j", {"a": branch("a"), "b": branch("b")})
        await ctx.sleep("later", 3600)
        return joined

    first = await run_workflow(wid, workflow, None, driver).result()
    assert first.state == WorkflowState.SLEEPING
    assert dict(calls.counts) == {"a.one": 1, "a.two": 1, "b.one": 1, "b.two": 1}

    counting = CountingDriver(driver)
    again = await run_workflow(wid, workflow, None, counting).result()
    assert again.state == WorkflowState.SLEEPING
    assert dict(calls.counts) == {"a.one": 1, "a.two": 1, "b.one": 1, "b.two": 1}
    assert counting.calls["batch"] == 0, "a pure replay of a settled join must not write"


async def test_failed_branch_does_not_cancel_siblings(driver: Any, wid: str) -> None:
    calls = Calls()

    def fail(label: str) -> Any:
        def call() -> None:
            calls.counts[label] += 1
            raise CriticalError(f"{label} broke")

        return call

    async def slow() -> str:
        await anyio.sleep(0.05)  # the failing branches are long done by now
        calls.counts["b.slow"] += 1
        return "slow"

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def a(bctx: WorkflowContext) -> Any:
            return await bctx.step("x", fail("a"))

        async def b(bctx: WorkflowContext) -> Any:
            await bctx.step("slow", slow)
            return await bctx.step("after", calls.fn("b.after"))

        async def c(bctx: WorkflowContext) -> Any:
            await bctx.step("ok", calls.fn("c.ok"))
            return await bctx.step("y", fail("c"))

        return await ctx.join("j", {"a": a, "b": b, "c": c})

    with pytest.raises(JoinError) as raised:
        await run_workflow(wid, workflow, None, driver).result()
    error = raised.value
    assert set(error.errors) == {"a", "c"}
    assert isinstance(error.errors["a"], CriticalError) and str(error.errors["a"]) == "a broke"
    assert "a broke" in str(error) and "c broke" in str(error)
    assert calls["b.slow"] == 1 and calls["b.after"] == 1, "the sibling ran to its end"
    assert await statuses(driver, wid) == {"a": "failed", "b": "completed", "c": "failed"}
    handle = run_workflow(wid, workflow, None, driver)
    assert await handle.get_state() == WorkflowState.FAILED

    # A later run raises the recorded failure without running any branch again.
    with pytest.raises(JoinError, match="a broke"):
        await run_workflow(wid, workflow, None, driver).result()
    assert dict(calls.counts) == {"a": 1, "b.slow": 1, "b.after": 1, "c.ok": 1, "c": 1}


async def test_waiting_branch_lets_siblings_finish_then_yields(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def waits(bctx: WorkflowContext) -> Any:
            await bctx.step("before", calls.fn("w.before"))
            [payload] = await bctx.queue.next("go", names=["go"])
            return await bctx.step("after", calls.fn("w.after", payload))

        async def works(bctx: WorkflowContext) -> Any:
            first = await bctx.step("one", calls.fn("k.one"))
            await anyio.sleep(0.01)  # still running while the other branch waits
            return [first, await bctx.step("two", calls.fn("k.two"))]

        return await ctx.join("j", {"waits": waits, "works": works})

    first = await run_workflow(wid, workflow, None, driver).result()
    assert first.state == WorkflowState.SLEEPING and first.wake_at is None
    assert dict(calls.counts) == {"w.before": 1, "k.one": 1, "k.two": 1}
    recorded = await recorded_history(driver, wid)
    assert await statuses(driver, wid) == {"waits": "running", "works": "completed"}
    assert recorded["j/works/two"].done  # type: ignore[union-attr]

    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("go", "payload")
    done = await handle.result()
    assert done.state == WorkflowState.COMPLETED
    assert done.output == {"waits": "payload", "works": ["k.one", "k.two"]}
    # Only the waiting branch went on; the completed one replayed.
    assert dict(calls.counts) == {"w.before": 1, "k.one": 1, "k.two": 1, "w.after": 1}
    assert await statuses(driver, wid) == {"waits": "completed", "works": "completed"}


async def test_yields_with_the_earliest_deadline_of_its_branches(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        def sleeper(seconds: float) -> Any:
            async def run(bctx: WorkflowContext) -> float:
                await bctx.sleep("nap", seconds)
                return seconds

            return run

        return await ctx.join("j", {"long": sleeper(7200), "short": sleeper(3600)})

    before = time.time()
    result = await run_workflow(wid, workflow, None, driver).result()
    assert result.state == WorkflowState.SLEEPING
    assert result.wake_at is not None and before + 3600 <= result.wake_at <= time.time() + 3600


async def test_live_mode_branch_waits_for_a_message(driver: Any, wid: str) -> None:
    calls = Calls()
    worked = anyio.Event()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def waits(bctx: WorkflowContext) -> Any:
            [payload] = await bctx.queue.next("go", names=["go"])
            return payload

        async def works(bctx: WorkflowContext) -> Any:
            value = await bctx.step("one", calls.fn("one"))
            worked.set()
            return value

        return await ctx.join("j", {"waits": waits, "works": works})

    with anyio.fail_after(10):
        async with run_workflow(wid, workflow, None, driver, mode="live") as handle:
            await worked.wait()
            await anyio.sleep(0.02)
            assert await handle.get_state() == WorkflowState.RUNNING
            await handle.message("go", 42)
            result = await handle.result()
    assert result.state == WorkflowState.COMPLETED
    assert result.output == {"waits": 42, "works": "one"}
    assert calls["one"] == 1


async def test_divergence_inside_a_branch_names_the_path(driver: Any, wid: str) -> None:
    async def original(ctx: WorkflowContext, _: Any) -> Any:
        async def a(bctx: WorkflowContext) -> Any:
            await bctx.step("x", lambda: 1)
            return await bctx.step("y", lambda: 2)

        async def b(bctx: WorkflowContext) -> Any:
            return await bctx.step("x", lambda: 3)

        await ctx.join("j", {"a": a, "b": b})
        await ctx.sleep("later", 3600)

    ran_new_code = Calls()

    async def changed(ctx: WorkflowContext, _: Any) -> Any:
        async def a(bctx: WorkflowContext) -> Any:
            await bctx.sleep("x", 1)  # was a step
            return await bctx.step("y", ran_new_code.fn("y"))

        async def b(bctx: WorkflowContext) -> Any:
            return await bctx.step("x", lambda: 3)

        await ctx.join("j", {"a": a, "b": b})
        await ctx.sleep("later", 3600)

    assert (await run_workflow(wid, original, None, driver).result()).state == "sleeping"
    # A divergence is raised as itself, not as a branch failure inside a JoinError: the
    # runner never compensates a workflow whose code no longer matches its history.
    with pytest.raises(HistoryDivergedError) as raised:
        await run_workflow(wid, changed, None, driver).result()
    message = str(raised.value)
    assert "j/a/x" in message and "step 'x'" in message and "sleep 'x'" in message
    assert ran_new_code["y"] == 0


async def test_branch_ending_early_is_a_divergence(driver: Any, wid: str) -> None:
    async def original(ctx: WorkflowContext, _: Any) -> Any:
        async def a(bctx: WorkflowContext) -> Any:
            await bctx.step("x", lambda: 1)
            return await bctx.step("gone", lambda: 2)

        await ctx.join("j", {"a": a})
        await ctx.sleep("later", 3600)

    async def changed(ctx: WorkflowContext, _: Any) -> Any:
        async def a(bctx: WorkflowContext) -> Any:
            return await bctx.step("x", lambda: 1)

        await ctx.join("j", {"a": a})
        await ctx.sleep("later", 3600)

    await run_workflow(wid, original, None, driver).result()
    with pytest.raises(HistoryDivergedError, match="j/a/gone"):
        await run_workflow(wid, changed, None, driver).result()


async def test_changed_branch_set_is_a_divergence(driver: Any, wid: str) -> None:
    def workflow_with(names: list[str]) -> Any:
        async def workflow(ctx: WorkflowContext, _: Any) -> Any:
            async def branch(bctx: WorkflowContext) -> int:
                return 1

            await ctx.join("j", dict.fromkeys(names, branch))
            await ctx.sleep("later", 3600)

        return workflow

    await run_workflow(wid, workflow_with(["a", "b"]), None, driver).result()
    with pytest.raises(HistoryDivergedError, match=r"j.*\['a', 'b'\].*\['a', 'c'\]"):
        await run_workflow(wid, workflow_with(["a", "c"]), None, driver).result()


async def test_bad_branches_are_rejected_at_the_call(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        with pytest.raises(ValueError, match="non-empty dict"):
            ctx.join("j", {})
        with pytest.raises(TypeError, match="'a'"):
            ctx.join("j", {"a": 1})  # type: ignore[dict-item]
        return "checked"

    assert (await run_workflow(wid, workflow, None, driver).result()).output == "checked"
