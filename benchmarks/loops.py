"""Does a long loop stay bounded? Keys, memory and time per iteration over 100,000 iterations.

Runs one workflow on ``MemoryDriver``: a loop of N iterations with two steps each,
``commit_interval = history_every = history_keep = 20``. Measures the keys in the store at
the end and at their peak (sampled in every iteration), the growth of the process's peak
RSS during the run, and the time per iteration over the first 1,000 iterations against the
last 1,000. Prints a table; exits 1 when a target is missed.

Targets: keys < 200 (end and peak), peak RSS growth < 50 MB, late/early time ratio <= 1.2.

Run: ``.venv/bin/python -m benchmarks.loops [--quick] [--backend trio]``
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.memory import MemoryDriver
from engine import Loop, LoopResult, WorkflowContext, WorkflowState, run_workflow

WINDOW = 1_000
MAX_KEYS = 200
MAX_RSS_GROWTH_MB = 50.0
MAX_TIME_RATIO = 1.2


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def measure(iterations: int) -> dict[str, Any]:
    driver = MemoryDriver()
    starts: list[float] = []
    key_peak = 0

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        async def body(lctx: WorkflowContext, i: int) -> LoopResult:
            nonlocal key_peak
            if i <= WINDOW or i >= iterations - WINDOW:
                starts.append(time.perf_counter())  # starts[WINDOW]: iteration 1,000
            key_peak = max(key_peak, driver.key_count())
            a = await lctx.step("a", lambda: i)
            b = await lctx.step("b", lambda: a + 1)
            return Loop.break_(b) if i == iterations - 1 else Loop.continue_(i + 1)

        return await ctx.loop(
            "l", body, state=0, commit_interval=20, history_every=20, history_keep=20
        )

    rss_before = _rss_mb()
    started = time.perf_counter()
    result = await run_workflow("bench-loop", workflow, None, driver).result()
    finished = time.perf_counter()
    assert result.state == WorkflowState.COMPLETED and result.output == iterations
    early = (starts[WINDOW] - starts[0]) / WINDOW
    late = (finished - starts[WINDOW + 1]) / WINDOW  # the last window ends with the loop
    return {
        "iterations": iterations,
        "seconds": finished - started,
        "keys_end": driver.key_count(),
        "keys_peak": max(key_peak, driver.key_count()),
        "rss_growth_mb": _rss_mb() - rss_before,
        "early_us": early * 1e6,
        "late_us": late * 1e6,
        "ratio": late / early,
    }


def report(figures: dict[str, Any]) -> bool:
    rows = [
        ("iterations", f"{figures['iterations']:,}", "", True),
        ("total time", f"{figures['seconds']:.2f} s", "", True),
        (
            "keys at the end",
            str(figures["keys_end"]),
            f"< {MAX_KEYS}",
            figures["keys_end"] < MAX_KEYS,
        ),
        (
            "keys at peak",
            str(figures["keys_peak"]),
            f"< {MAX_KEYS}",
            figures["keys_peak"] < MAX_KEYS,
        ),
        (
            "peak RSS growth",
            f"{figures['rss_growth_mb']:.1f} MB",
            f"< {MAX_RSS_GROWTH_MB:.0f} MB",
            figures["rss_growth_mb"] < MAX_RSS_GROWTH_MB,
        ),
        ("time/iteration, first 1,000", f"{figures['early_us']:.1f} us", "", True),
        ("time/iteration, last 1,000", f"{figures['late_us']:.1f} us", "", True),
        (
            "last / first",
            f"{figures['ratio']:.2f}",
            f"<= {MAX_TIME_RATIO}",
            figures["ratio"] <= MAX_TIME_RATIO,
        ),
    ]
    print(f"{'measure':<30} {'value':>14} {'target':>10}  ok")
    for label, value, target, ok in rows:
        print(f"{label:<30} {value:>14} {target:>10}  {'yes' if ok else 'NO'}")
    return all(ok for *_, ok in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 iterations")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    iterations = 10_000 if args.quick else 100_000
    figures = anyio.run(measure, iterations, backend=args.backend)
    sys.exit(0 if report(figures) else 1)


if __name__ == "__main__":
    main()
