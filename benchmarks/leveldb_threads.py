"""Does moving a plyvel call to a worker thread pay? Direct call vs ``anyio.to_thread``.

Measures, on one event loop, the latency seen by the awaiting task of small reads (``get``,
a 20-key prefix scan) and of small batches written with ``sync=True`` (fsync) and
``sync=False``, each called directly on the loop and through ``anyio.to_thread.run_sync``.
A direct call blocks the loop for its whole latency (every other task waits); a threaded one
blocks it only for the hand-off. The last case runs 20 tasks writing ``sync=True`` batches at
once: threaded writers let LevelDB group their fsyncs. Prints median and p99 in microseconds.

Run: ``.venv/bin/python -m benchmarks.leveldb_threads [--backend trio] [--rounds 2000]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import plyvel


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _measure(
    call: Callable[[], Any], rounds: int, threaded: bool, yield_each: bool = False
) -> list[float]:
    samples: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        if threaded:
            await anyio.to_thread.run_sync(call)
        else:
            call()
        samples.append((time.perf_counter() - started) * 1e6)
        if yield_each:  # a workflow awaits something else between two flushes
            await anyio.lowlevel.checkpoint()
    return samples


async def _watch_loop(gaps: list[float]) -> None:
    """Record how late a task that only yields gets back control: the loop's stall time."""
    last = time.perf_counter()
    while True:
        await anyio.sleep(0)
        now = time.perf_counter()
        gaps.append((now - last) * 1e6)
        last = now


async def _main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as path:
        db = plyvel.DB(path, create_if_missing=True)
        value = b"x" * 200
        with db.write_batch() as batch:
            for wid in range(200):
                for index in range(20):
                    batch.put(b"w%04d/h%03d" % (wid, index), value)

        def get() -> Any:
            return db.get(b"w0100/h010")

        def scan() -> Any:
            return list(db.iterator(prefix=b"w0100/"))

        counter = iter(range(10**9))

        def write(sync: bool) -> Callable[[], None]:
            def run() -> None:
                n = next(counter)
                with db.write_batch(sync=sync) as batch:
                    for index in range(5):
                        batch.put(b"b%08d/%d" % (n, index), value)

            return run

        cases = {
            "get": get,
            "list 20 keys": scan,
            "batch 5 sync=False": write(False),
            "batch 5 sync=True": write(True),
        }
        print(f"{'operation':<22}{'mode':<10}{'median us':>12}{'p99 us':>12}")
        for label, call in cases.items():
            n = rounds if "sync=True" not in label else max(200, rounds // 5)
            await _measure(call, 50, threaded=False)  # warm up caches and the thread pool
            await _measure(call, 50, threaded=True)
            for threaded in (False, True):
                samples = await _measure(call, n, threaded)
                mode = "thread" if threaded else "direct"
                print(
                    f"{label:<22}{mode:<10}{statistics.median(samples):>12.1f}"
                    f"{_percentile(samples, 0.99):>12.1f}"
                )
        for threaded in (False, True):
            per_task = max(20, rounds // 50)
            gaps: list[float] = []
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                group.start_soon(_watch_loop, gaps)
                async with anyio.create_task_group() as writers:
                    for _ in range(20):
                        writers.start_soon(_measure, write(True), per_task, threaded, True)
                group.cancel_scope.cancel()
            elapsed = time.perf_counter() - started
            mode = "thread" if threaded else "direct"
            print(
                f"20 tasks x {per_task} sync=True batches, {mode}: "
                f"{20 * per_task / elapsed:,.0f}/s, loop stall p99 "
                f"{_percentile(gaps, 0.99):.0f} us, max {max(gaps):.0f} us"
            )
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    print(f"backend={args.backend} rounds={args.rounds}")
    anyio.run(_main, args.rounds, backend=args.backend)


if __name__ == "__main__":
    main()
