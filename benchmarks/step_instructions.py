"""Instructions per executed step, counted by callgrind: repeatable on a noisy machine.

Runs one workflow of ``--steps`` async steps on ``MemoryDriver`` (ending in a message wait)
and exits. Count it twice under callgrind, with 1 step and with N; the difference over
N - 1 is one executed step's instructions, start-up and imports cancelling out::

    for n in 1 2000; do
        valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
            python -m benchmarks.step_instructions --steps $n 2>&1 | grep Collected
    done

Set ``PYTHONHASHSEED=0`` (hash randomisation moves the count) and point ``PYTHONPATH`` at
another checkout to compare two versions of the engine in one run. Issue 12 measured
tracing with no provider set this way: 95,664 instructions per step before it, 94,957
after, and repeated counts of one version spread by about 800: no measurable cost.
"""

from __future__ import annotations

import argparse

import anyio

from drivers.memory import MemoryDriver
from engine import WorkflowContext, run_workflow


async def output() -> dict[str, object]:
    return {"i": 1, "s": "x" * 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    steps = parser.parse_args().steps

    async def workflow(ctx: WorkflowContext, _: None) -> None:
        for i in range(steps):
            await ctx.step(f"s{i}", output)
        await ctx.queue.next("wait", names=["go"])

    async def run() -> None:
        await run_workflow("bench", workflow, None, MemoryDriver()).result()

    anyio.run(run)


if __name__ == "__main__":
    main()
