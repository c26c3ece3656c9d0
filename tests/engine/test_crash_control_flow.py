"""A crash at every single driver write of a workflow mixing join, race, loop and rollback.

For each write k of an uninterrupted run, the workflow runs on ``FaultyDriver(crash_at=k)``
until the simulated crash, then on the plain driver until it settles. It must end exactly
like the uninterrupted run: same output (or error), same history, every step and every
compensation run; a step (or compensation) may run again only when the write recording it
had not landed before the crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine import (
    CriticalError,
    EngineDriver,
    Loop,
    LoopResult,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from engine.records import StepEntry
from engine.storage import Storage
from engine.testing import CountingDriver, FaultyDriver
from tests.support.workflows import completion_order

pytestmark = pytest.mark.anyio


@dataclass
class World:
    """Side effects of every run, tagged with the run that caused them."""

    run: int = 0
    effects: list[tuple[int, str]] = field(default_factory=list)
    compensations: list[tuple[int, str]] = field(default_factory=list)

    def effect(self, key: str) -> Callable[[], str]:
        def call() -> str:
            self.effects.append((self.run, key))
            return key

        return call

    def decline(self) -> None:
        self.effects.append((self.run, "charge"))
        raise CriticalError("declined")

    async def undo(self, rctx: Any, output: str) -> None:
        self.compensations.append((self.run, output))


def mixed(world: World) -> Any:
    async def workflow(ctx: WorkflowContext, input: dict[str, Any]) -> Any:
        await ctx.rollback_checkpoint("cp")
        reserved = await ctx.step("reserve", world.effect("reserve"), rollback=world.undo)

        async def gated(bctx: WorkflowContext) -> Any:
            first = await bctx.step("x1", world.effect("j/x/x1"), rollback=world.undo)
            [go] = await bctx.queue.next("wait", names=["go"])
            return [first, go, await bctx.step("x2", world.effect("j/x/x2"))]

        async def looping(bctx: WorkflowContext) -> Any:
            async def body(lctx: WorkflowContext, i: int) -> LoopResult:
                await lctx.step("s", world.effect(f"j/y/l/~{i}/s"), rollback=world.undo)
                return Loop.break_(i) if i == 4 else Loop.continue_(i + 1)

            return await bctx.loop(
                "l", body, state=0, commit_interval=2, history_every=2, history_keep=10
            )

        joined = await ctx.join("j", {"x": gated, "y": looping})

        async def work(rctx: WorkflowContext) -> Any:
            first = await rctx.step("w1", world.effect("r/work/w1"), rollback=world.undo)
            return [first, await rctx.step("w2", world.effect("r/work/w2"))]

        async def slow(rctx: WorkflowContext) -> Any:
            await rctx.sleep("t", 3600)
            return "slow"

        raced = await ctx.race("r", {"work": work, "slow": slow})

        async def tail(lctx: WorkflowContext, i: int) -> LoopResult:
            await lctx.step("t", world.effect(f"tail/~{i}/t"), rollback=world.undo)
            return Loop.break_(i) if i == 2 else Loop.continue_(i + 1)

        # Keeps one iteration: the compensations of trimmed ones are never run.
        last = await ctx.loop("tail", tail, state=0, commit_interval=1, history_keep=1)
        if input["fail"]:
            await ctx.step("charge", world.decline, max_retries=0)
        return {"reserved": reserved, "joined": joined, "raced": list(raced), "last": last}

    return workflow


async def landed(driver: EngineDriver, wid: str) -> tuple[set[str], set[str], dict[str, Any]]:
    """Steps recorded as done, compensations recorded as done, and the history by path."""
    storage = Storage(driver, wid)
    await storage.load()
    steps: set[str] = set()
    undone: set[str] = set()
    tree: dict[str, Any] = {}
    for location, node in storage.walk():
        path = storage.names.render(location)
        entry = node.entry
        if isinstance(entry, StepEntry):
            tree[path] = ("step", entry.output)
            if entry.done:
                steps.add(path)
        elif entry is not None:
            tree[path] = (entry.kind, getattr(entry, "done", None))
        if node.meta is not None and node.meta.compensated:
            undone.add(path)
            tree[f"{path} (compensated)"] = True
    return steps, undone, tree


@dataclass
class Outcome:
    result: Any
    world: World
    history: dict[str, Any]
    violations: list[str]


async def drive(run_driver: EngineDriver, inner: EngineDriver, wid: str, fail: bool) -> Outcome:
    """Run until the workflow settles: crashes switch to ``inner``, waits get their message."""
    world = World()
    workflow = mixed(world)
    step_landed: dict[str, int] = {}
    undo_landed: dict[str, int] = {}
    sent = False
    result: Any = None
    for run in range(12):
        world.run = run
        settled = False
        try:
            outcome = await run_workflow(wid, workflow, {"fail": fail}, run_driver).result()
        except BaseException as exc:  # a crash may arrive wrapped in a task group's group
            if isinstance(run_driver, FaultyDriver) and run_driver.crashed:
                run_driver = inner
            elif isinstance(exc, CriticalError):
                result, settled = ("failed", type(exc).__name__, str(exc)), True
            else:
                raise
        else:
            if outcome.state == WorkflowState.COMPLETED:
                result, settled = ("completed", outcome.output), True
            else:
                assert outcome.state == WorkflowState.SLEEPING and outcome.wake_at is None
                assert not sent, "the workflow waits again after its message was sent"
                await run_workflow(wid, workflow, None, inner).message("go", "go!")
                sent = True
        steps, undone, history = await landed(inner, wid)
        for path in steps:
            step_landed.setdefault(path, run)
        for path in undone:
            undo_landed.setdefault(path, run)
        if settled:
            break
    else:
        pytest.fail("the workflow never settled")
    state = await run_workflow(wid, workflow, None, inner).get_state()
    assert state == (WorkflowState.FAILED if fail else WorkflowState.COMPLETED)
    violations = [
        f"step {key} ran in run {run} after landing in run {step_landed[key]}"
        for run, key in world.effects
        if key in step_landed and step_landed[key] < run
    ] + [
        f"compensation {key} ran in run {run} after landing in run {undo_landed[key]}"
        for run, key in world.compensations
        if key in undo_landed and undo_landed[key] < run
    ]
    return Outcome(result, world, history, violations)


@pytest.mark.parametrize("fail", [False, True], ids=["completes", "rolls-back"])
async def test_crash_at_every_write(store: Any, wid: str, fail: bool) -> None:
    reference_inner = store.driver(f"{wid}-reference")
    counting = CountingDriver(reference_inner)
    reference = await drive(counting, reference_inner, f"{wid}-reference", fail)
    assert not reference.violations
    expected_effects = {key for _, key in reference.world.effects}
    expected_compensations = [key for _, key in reference.world.compensations]
    if fail:
        assert reference.result == ("failed", "CriticalError", "declined")
        # Reverse completion order (sync step bodies run in threads, so the order their
        # effects happen in may differ from the order their records were taken in), the
        # trimmed iterations of "tail" left out.
        done_order = await completion_order(reference_inner, f"{wid}-reference")
        compensable = [k for k in done_order if k not in ("j/x/x2", "r/work/w2")]
        assert expected_compensations == list(reversed(compensable))
        assert not {"tail/~0/t", "tail/~1/t"} & set(expected_compensations)
    else:
        assert reference.result[0] == "completed"
        assert reference.result[1]["raced"] == ["work", ["r/work/w1", "r/work/w2"]]
        assert expected_compensations == []
    total_writes = counting.writes
    assert total_writes > 15  # enough writes to crash between every kind of operation

    for crash_at in range(1, total_writes + 1):
        run_id = f"{wid}-{crash_at}"
        inner = store.driver(run_id)
        faulty = FaultyDriver(inner, crash_at)
        outcome = await drive(faulty, inner, run_id, fail)
        where = f"crash at write {crash_at} of {total_writes}"
        assert faulty.crashed, where
        assert outcome.result == reference.result, where
        assert outcome.history == reference.history, where
        assert not outcome.violations, (where, outcome.violations)
        assert {key for _, key in outcome.world.effects} == expected_effects, where
        compensations = [key for _, key in outcome.world.compensations]
        assert sorted(set(compensations)) == sorted(expected_compensations), where
        # Only a crash can repeat a compensation, and there is one crash per case.
        assert len(compensations) - len(set(compensations)) <= 1, (where, compensations)
