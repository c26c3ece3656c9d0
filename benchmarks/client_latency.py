"""How soon a client sees a workflow's end: ``client.handle(id).result()`` after completion.

A Worker in this process runs three-step workflows one at a time; a client handle waits for
each. The latency is from the moment the Worker's ``finish_run`` returned (the completion
landed) to the moment ``result()`` returned, so it is what the store's notification and the
client's reads cost, not the run. Target (issue 11): median under 5 ms on Redis and Postgres.

    python -m benchmarks.client_latency [--workflows 200]

Needs Redis and PostgreSQL (REDIS_URL, DATABASE_URL; defaults 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from engine import Client, Worker, WorkflowContext

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def three(ctx: WorkflowContext, n: int) -> int:
    a = await ctx.step("one", lambda: n + 1)
    b = await ctx.step("two", lambda: a * 2)
    return await ctx.step("three", lambda: b - 1)


@asynccontextmanager
async def open_store(name: str) -> AsyncIterator[Any]:
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    if name == "redis":
        from drivers.redis import RedisStore

        store = await RedisStore.connect(REDIS_URL, namespace=namespace, worker_poll_interval=0.2)
        async with store:
            try:
                yield store
            finally:
                from tests.support.redis_store import delete_namespace

                await delete_namespace(store)
        return
    import asyncpg

    from drivers.postgres import PostgresStore

    try:
        async with await PostgresStore.connect(
            DATABASE_URL, schema=namespace, worker_poll_interval=0.2
        ) as store:
            yield store
    finally:
        admin = await asyncpg.connect(DATABASE_URL)
        await admin.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        await admin.close()


async def latencies(name: str, workflows: int) -> list[float]:
    async with open_store(name) as store:
        finished: dict[str, float] = {}
        finish_run = store.finish_run

        async def timed_finish(lease: Any, *args: Any) -> None:
            await finish_run(lease, *args)
            finished[lease.workflow_id] = time.perf_counter()

        store.finish_run = timed_finish
        client = Client(store)
        worker = Worker(store, {"three": three}, concurrency=4, handle_signals=False)
        samples: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            for i in range(workflows):
                wid = f"latency-{i}-{uuid.uuid4().hex[:6]}"
                handle = client.handle(wid)
                async with anyio.create_task_group() as waiting:
                    results: list[float] = []

                    async def wait(handle: Any = handle, results: list[float] = results) -> None:
                        await handle.result(timeout=30)
                        results.append(time.perf_counter())

                    waiting.start_soon(wait)
                    await anyio.sleep(0.005)  # the client listens before the start
                    await client.start("three", wid, i)
                samples.append(results[0] - finished[wid])
            worker.stop()
        return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=200)
    args = parser.parse_args()
    ok = True
    print(f"{args.workflows} workflows per store; ms from finish_run landing to result()")
    print(f"{'store':<10}{'median':>10}{'p90':>10}{'p99':>10}{'target':>10}")
    for name in ("redis", "postgres"):
        samples = sorted(s * 1000 for s in anyio.run(latencies, name, args.workflows))
        median = statistics.median(samples)
        p90 = samples[int(0.9 * (len(samples) - 1))]
        p99 = samples[int(0.99 * (len(samples) - 1))]
        met = median < 5.0
        ok = ok and met
        verdict = "ok" if met else "MISSED"
        print(f"{name:<10}{median:>10.2f}{p90:>10.2f}{p99:>10.2f}{'< 5':>10} {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
