"""A history recorded by an earlier version must replay unchanged; a changed workflow diverges.

``tests/golden/order_v1.json`` is a store dump of ``tests/golden/order_workflow.py`` waiting
for its last message; it touches every kind of operation. The format version byte makes any
deliberate change of the stored format visible here first.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import HistoryDivergedError, WorkflowContext, WorkflowState, run_workflow
from engine.testing import CountingDriver
from tests.golden import order_workflow
from tests.golden.order_workflow import order

pytestmark = pytest.mark.anyio

EXPECTED = {
    "charge": {"order": "o-77", "cents": 4200},
    "parts": {"box": ("box", 1), "label": "label:Main St 1"},
    "carrier": ["ups", 7],
    "ticks": 4,
    "confirmed": "yes",
}


async def _restore(driver: Any) -> None:
    records = json.loads(order_workflow.DUMP.read_text())
    await driver.batch([(bytes.fromhex(key), bytes.fromhex(value)) for key, value in records])


async def test_the_recorded_history_replays_without_writing(driver: Any, wid: str) -> None:
    await _restore(driver)
    counting = CountingDriver(driver)
    waiting = await run_workflow(wid, order, "ignored", counting).result()
    assert waiting.state == WorkflowState.SLEEPING
    assert counting.writes == 0  # every operation matched its record; nothing ran again

    handle = run_workflow(wid, order, "ignored", counting)
    await handle.message("confirm", "yes")
    counting.reset()
    done = await handle.result()
    assert done.state == WorkflowState.COMPLETED and done.output == EXPECTED
    assert counting.calls["batch"] == 1  # the last wait, the output and the state, together


async def renamed_step(ctx: WorkflowContext, order_id: str) -> Any:
    await ctx.rollback_checkpoint("checkpoint")
    await ctx.step("charge-card", lambda: {"order": order_id})


async def renamed_in_branch(ctx: WorkflowContext, order_id: str) -> Any:
    await ctx.rollback_checkpoint("checkpoint")
    await ctx.step("charge", lambda: {"order": order_id})
    await ctx.sleep("cool-off", 0)
    await ctx.queue.next("address", names=["address"])
    await ctx.join(
        "pack",
        {
            "box": lambda b: b.step("crate", lambda: 1),
            "label": lambda b: b.step("label", lambda: 2),
        },
    )


@pytest.mark.parametrize(
    ("workflow", "path", "held", "asked"),
    [
        (renamed_step, "charge-card", "step 'charge'", "step 'charge-card'"),
        (renamed_in_branch, "pack/box/crate", "step 'box'", "step 'crate'"),
    ],
)
async def test_a_changed_workflow_diverges_on_the_recorded_history(
    driver: Any, wid: str, workflow: Any, path: str, held: str, asked: str
) -> None:
    await _restore(driver)
    with pytest.raises(HistoryDivergedError) as info:
        await run_workflow(wid, workflow, "ignored", driver).result()
    message = str(info.value)
    assert f"at {path}:" in message and f"history holds {held}" in message
    assert f"the code asked for {asked}" in message
