"""An order workflow that crashes half-way and resumes where it stopped.

Runs on the embedded default store (LevelDB in a local directory, no server):

    python examples/demo.py

1. A child process starts the workflow; it reserves stock, charges the card, then dies
   hard (``os._exit``, as a kill -9 would) in the middle of the "ship" step.
2. A second process runs the same workflow again: reserve and charge are replayed from
   history (not executed again), ship runs, the workflow sleeps past its alarm, notifies.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from drivers.leveldb import LevelDBStore
from engine import WorkflowContext, WorkflowState, run_workflow

CRASH_FLAG = "--crash-in-ship"


def effect(label: str, value: Any = None) -> Any:
    """A side effect that says which process ran it."""

    def run() -> Any:
        print(f"  [pid {os.getpid()}] {label}", flush=True)
        return value if value is not None else label

    return run


async def order(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    stock = await ctx.step("reserve-stock", effect(f"reserving stock for {order_id}", ["sku-1"]))
    charge = await ctx.step("charge-card", effect("charging the card", {"amount": 42.0}))

    def ship() -> str:
        if CRASH_FLAG in sys.argv:
            print(f"  [pid {os.getpid()}] shipping... and the process dies here", flush=True)
            os._exit(137)
        return effect("shipping the parcel", "TRACK-456")()

    tracking = await ctx.step("ship", ship)
    await ctx.sleep("cool-off", 1.5)  # longer than the poll interval: the run yields
    await ctx.step("notify", effect(f"emailing the customer about {tracking}"))
    return {"stock": stock, "charge": charge, "tracking": tracking}


async def run_until_done(path: str) -> None:
    async with LevelDBStore(path, worker_poll_interval=1.0) as store:
        while True:
            driver = store.driver("order-123")
            result = await run_workflow("order-123", order, "order-123", driver).result()
            if result.state == WorkflowState.COMPLETED:
                print(f"  completed: {result.output}")
                return
            assert result.wake_at is not None
            wait = max(0.0, result.wake_at - time.time())
            print(f"  {result.state.value}: the run yielded; its alarm is due in {wait:.1f}s")
            await anyio.sleep(wait)
            print("  the alarm is due: running the workflow again")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="store directory (default: a fresh temporary one)")
    parser.add_argument(CRASH_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.data and getattr(args, "crash_in_ship", False):
        anyio.run(run_until_done, args.data)  # the child: dies inside "ship"
        return
    data = args.data or str(Path(tempfile.mkdtemp(prefix="durable-demo-")) / "store")
    print(f"store: {data}\n1) first process: runs until it crashes")
    child = subprocess.run([sys.executable, __file__, "--data", data, CRASH_FLAG], check=False)
    print(f"  the first process exited with code {child.returncode} (killed mid-step)")
    print("2) this process: resumes from history")
    anyio.run(run_until_done, data)
    print("reserve-stock and charge-card ran once, in the first process; nothing was lost.")


if __name__ == "__main__":
    main()
