"""What does fanning out cost? A join of 100 branches of 3 steps against 300 sequential steps.

Both workflows run 300 steps on ``MemoryDriver`` behind a ``CountingDriver``. A join's
branches record their status beside their steps, and that must ride along with the steps'
own flushes rather than add writes. Prints time, driver writes and writes per step for
each; exits 1 when a target is missed.

Targets: writes per step of the join equal to the sequential run's (within 2%), and the
join's time at most 1.5x the sequential time (best of ``--repeat`` runs).

Run: ``.venv/bin/python -m benchmarks.fanout [--quick] [--repeat 5] [--backend trio]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.memory import MemoryDriver
from engine import WorkflowContext, WorkflowState, run_workflow
from engine.testing import CountingDriver

STEPS_PER_BRANCH = 3
MAX_TIME_RATIO = 1.5
WRITES_TOLERANCE = 0.02

Workflow = Callable[[WorkflowContext, Any], Awaitable[Any]]


def fanout(branches: int) -> Workflow:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        def branch(b: int) -> Callable[[WorkflowContext], Awaitable[int]]:
            async def run(bctx: WorkflowContext) -> int:
                total = 0
                for s in range(STEPS_PER_BRANCH):
                    total += await bctx.step(f"s{s}", lambda s=s: b * 10 + s)
                return total

            return run

        joined = await ctx.join("fan", {f"b{b}": branch(b) for b in range(branches)})
        return sum(joined.values())

    return workflow


def sequential(branches: int) -> Workflow:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        total = 0
        for b in range(branches):
            for s in range(STEPS_PER_BRANCH):
                total += await ctx.step(f"b{b}s{s}", lambda b=b, s=s: b * 10 + s)
        return total

    return workflow


async def measure(workflow: Workflow, label: str, repeat: int) -> dict[str, Any]:
    best = float("inf")
    writes = 0
    output = None
    for attempt in range(repeat):
        driver = CountingDriver(MemoryDriver())
        started = time.perf_counter()
        result = await run_workflow(f"bench-{label}-{attempt}", workflow, None, driver).result()
        best = min(best, time.perf_counter() - started)
        assert result.state == WorkflowState.COMPLETED
        writes, output = driver.writes, result.output
    return {"label": label, "seconds": best, "writes": writes, "output": output}


async def run_all(branches: int, repeat: int) -> tuple[dict[str, Any], dict[str, Any]]:
    seq = await measure(sequential(branches), "sequential", repeat)
    fan = await measure(fanout(branches), "join", repeat)
    assert seq["output"] == fan["output"]
    return seq, fan


def report(seq: dict[str, Any], fan: dict[str, Any], steps: int) -> bool:
    seq_wps = seq["writes"] / steps
    fan_wps = fan["writes"] / steps
    time_ratio = fan["seconds"] / seq["seconds"]
    writes_ok = abs(fan_wps - seq_wps) <= WRITES_TOLERANCE * seq_wps
    time_ok = time_ratio <= MAX_TIME_RATIO
    print(f"{'workflow':<24} {'steps':>6} {'time':>10} {'writes':>7} {'writes/step':>12}")
    for figures in (seq, fan):
        print(
            f"{figures['label']:<24} {steps:>6} {figures['seconds'] * 1e3:>8.1f}ms "
            f"{figures['writes']:>7} {figures['writes'] / steps:>12.3f}"
        )
    print(
        f"\njoin / sequential: time {time_ratio:.2f} (target <= {MAX_TIME_RATIO}) "
        f"{'ok' if time_ok else 'MISSED'}; writes per step {fan_wps / seq_wps:.3f} "
        f"(target 1.00 +/- {WRITES_TOLERANCE:.2f}) {'ok' if writes_ok else 'MISSED'}"
    )
    return writes_ok and time_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 branches instead of 100")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; the best counts")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    branches = 20 if args.quick else 100
    seq, fan = anyio.run(run_all, branches, args.repeat, backend=args.backend)
    sys.exit(0 if report(seq, fan, branches * STEPS_PER_BRANCH) else 1)


if __name__ == "__main__":
    main()
