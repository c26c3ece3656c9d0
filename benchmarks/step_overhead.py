"""What one step costs the engine, executed and replayed, measured against msgpack itself.

A 2,000-step workflow runs on MemoryDriver (no simulated latency) and ends waiting for a
message, so the second run is a pure replay. Each figure is the median of several rounds,
and the msgpack unit (one pack + unpack of a step's output) is measured in the same run, so
the ratios hold on a noisy machine.

Targets (issue 2): exactly 1 batch per non-ephemeral step; 0 writes on a pure replay; an
executed step <= 15 msgpack round trips; a replayed step <= 6.

    python -m benchmarks.step_overhead [--steps 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import anyio
import msgpack

from drivers.memory import MemoryDriver
from engine import WorkflowContext, WorkflowState, run_workflow
from engine.testing import CountingDriver


def output_of(i: int) -> dict[str, Any]:
    return {"i": i, "sku": f"SKU-{i:06d}", "qty": 3, "ok": True, "price": 12.5}


def make_workflow(steps: int) -> Any:
    async def many_steps(ctx: WorkflowContext, _: None) -> None:
        for i in range(steps):
            await ctx.step(f"step-{i}", lambda i=i: output_of(i))
        await ctx.queue.next("done")

    return many_steps


def msgpack_round_trip_seconds(samples: int = 50000) -> float:
    value = output_of(1234)
    started = time.perf_counter()
    for _ in range(samples):
        msgpack.unpackb(msgpack.packb(value))
    return (time.perf_counter() - started) / samples


async def one_round(steps: int) -> dict[str, float]:
    driver = CountingDriver(MemoryDriver())
    fn = make_workflow(steps)
    started = time.perf_counter()
    first = await run_workflow("bench", fn, None, driver).result()
    executed = time.perf_counter() - started
    assert first.state == WorkflowState.SLEEPING
    exec_calls = dict(driver.calls)
    driver.reset()
    started = time.perf_counter()
    await run_workflow("bench", fn, None, driver).result()
    replayed = time.perf_counter() - started
    return {
        "executed": executed / steps,
        "replayed": replayed / steps,
        "exec_batches": exec_calls.get("batch", 0),
        "replay_writes": driver.writes,
        "replay_calls": sum(driver.calls.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    # Each round is paired with a msgpack measurement taken right around it, so a noisy
    # neighbour slows both sides of a ratio alike.
    rounds = []
    for _ in range(args.rounds):
        before = msgpack_round_trip_seconds()
        figures = anyio.run(one_round, args.steps)
        figures["unit"] = (before + msgpack_round_trip_seconds()) / 2
        rounds.append(figures)
    unit = statistics.median(r["unit"] for r in rounds)
    executed = statistics.median(r["executed"] for r in rounds)
    replayed = statistics.median(r["replayed"] for r in rounds)
    exec_ratio = statistics.median(r["executed"] / r["unit"] for r in rounds)
    replay_ratio = statistics.median(r["replayed"] / r["unit"] for r in rounds)
    batches = rounds[0]["exec_batches"]
    replay_writes = max(r["replay_writes"] for r in rounds)

    # One batch per step, plus the one that records the final message wait as the run yields.
    batches_per_step = (batches - 1) / args.steps
    rows = [
        ("msgpack pack+unpack of one output", f"{unit * 1e6:.2f} us", "1.0", ""),
        ("executed step", f"{executed * 1e6:.1f} us", f"{exec_ratio:.1f}", "<= 15"),
        ("replayed step", f"{replayed * 1e6:.1f} us", f"{replay_ratio:.1f}", "<= 6"),
        ("batches per executed step", f"{batches_per_step:.3f}", "", "== 1"),
        ("writes on the pure replay", f"{replay_writes}", "", "== 0"),
        ("driver calls on the replay", f"{rounds[0]['replay_calls']}", "", "(the load)"),
    ]
    print(f"{args.steps} steps, median of {args.rounds} rounds, MemoryDriver without latency")
    print(f"{'measure':<36}{'value':>14}{'x msgpack':>12}{'target':>10}")
    for name, value, ratio, target in rows:
        print(f"{name:<36}{value:>14}{ratio:>12}{target:>10}")
    ok = (
        exec_ratio <= 15
        and replay_ratio <= 6
        and batches_per_step == 1
        and replay_writes == 0
    )
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
