"""The workflow whose recorded history is kept in ``order_v1.json``.

Regenerate the dump only when the stored format changes on purpose (and say so in the
commit): ``python -m tests.golden.order_workflow``. Every later version of the engine must
replay the committed dump unchanged; that is the point of keeping it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from engine import Loop, WorkflowContext, WorkflowState, run_workflow

DUMP = Path(__file__).with_name("order_v1.json")
WORKFLOW_ID = "golden-order"


async def order(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    """Every kind of operation once; ends waiting for a "confirm" message."""
    await ctx.rollback_checkpoint("checkpoint")
    charge = await ctx.step("charge", lambda: {"order": order_id, "cents": 4200}, rollback=refund)
    await ctx.sleep("cool-off", 0)
    [address] = await ctx.queue.next("address", names=["address"])
    parts = await ctx.join(
        "pack",
        {
            "box": lambda b: b.step("box", lambda: ("box", 1)),
            "label": lambda b: b.step("label", lambda: f"label:{address}"),
        },
    )
    fastest = await ctx.race(
        "carrier",
        {"ups": lambda b: b.step("quote", lambda: 7), "slow": lambda b: b.sleep("wait", 3600)},
    )

    async def count(lctx: WorkflowContext, n: int) -> Any:
        await lctx.step("tick", lambda: n)
        return Loop.break_(n) if n >= 4 else Loop.continue_(n + 1)

    ticks = await ctx.loop("ticks", count, state=0, commit_interval=2)
    await ctx.removed("old-audit", "step")
    [confirmed] = await ctx.queue.next("confirm", names=["confirm"])
    return {
        "charge": charge,
        "parts": parts,
        "carrier": list(fastest),
        "ticks": ticks,
        "confirmed": confirmed,
    }


async def refund(rctx: Any, charge: dict[str, Any]) -> None:
    """Compensation for "charge"; never runs in the golden tests (the workflow succeeds)."""


async def record() -> None:
    from drivers.memory import MemoryDriver

    driver = MemoryDriver()
    handle = run_workflow(WORKFLOW_ID, order, "o-77", driver)
    await handle.message("address", "Main St 1")
    result = await handle.result()
    assert result.state == WorkflowState.SLEEPING, result
    dump = [[key.hex(), value.hex()] for key, value in await driver.list(b"")]
    DUMP.write_text("[\n" + ",\n".join(json.dumps(record) for record in dump) + "\n]\n")
    print(f"wrote {len(dump)} records to {DUMP}")


if __name__ == "__main__":
    anyio.run(record)
