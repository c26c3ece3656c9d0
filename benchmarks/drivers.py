"""Per-step latency on every store against that store's floor, all in one run.

For each store: a 300-step workflow (each step returns a ~125-byte value) is run and the
time between consecutive steps is taken as the per-step latency (median and p99). The
*floor* of a store is one atomic write of 3 keys with ~125-byte values made directly with
its best raw client: a plyvel ``WriteBatch`` with the driver's default ``sync``, one redis-py
``EVALSHA`` of a 3-key script, one asyncpg multi-row upsert. The engine's own per-step cost
is the same workflow on ``MemoryStore``.

    ratio = step_on_store / (floor + step_on_memory)

1.0 means the driver adds nothing but one atomic write. Targets (issue 4): 1 round trip per
step, ratio <= 1.2 on LevelDB, Redis and Postgres.

    python -m benchmarks.drivers [--steps 300] [--rounds 3]

Needs Redis and PostgreSQL (REDIS_URL, DATABASE_URL; defaults 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

# Run as a script, this file's name would shadow the ``drivers`` package: resolve imports
# from the project root rather than from benchmarks/.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402

from engine import WorkflowContext, run_workflow  # noqa: E402
from engine.testing import CountingDriver  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
VALUE = {"order": "o-000123", "sku": "SKU-000042", "qty": 3, "price": 12.5, "note": "x" * 60}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def step_latencies(driver: Any, steps: int) -> tuple[list[float], float]:
    """Seconds between consecutive steps of one workflow, and batches per step."""
    stamps: list[float] = []

    async def step_fn() -> dict[str, Any]:
        # Async, as the engine's own path is what is measured: a sync body adds a thread
        # hop per step (benchmarks.step_overhead measures that apart).
        stamps.append(time.perf_counter())
        return VALUE

    async def workflow(ctx: WorkflowContext, _: None) -> None:
        for i in range(steps):
            await ctx.step(f"s{i}", step_fn)

    counting = CountingDriver(driver)
    await run_workflow(f"bench-{uuid.uuid4().hex[:8]}", workflow, None, counting).result()
    gaps = [b - a for a, b in pairwise(stamps)]
    # One batch per step; the completion rides in the last step's batch (its owed write).
    return gaps, counting.calls["batch"] / steps


async def timed(write: Callable[[int], Awaitable[None]], rounds: int) -> list[float]:
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        await write(i)
        samples.append(time.perf_counter() - started)
    return samples


def three_values() -> list[tuple[bytes, bytes]]:
    return [(uuid.uuid4().bytes, os.urandom(125)) for _ in range(3)]


# Each store: how to open it, and its floor measured with its raw client.


@asynccontextmanager
async def memory_store() -> AsyncIterator[Any]:
    from drivers.memory import MemoryStore

    yield MemoryStore()


@asynccontextmanager
async def leveldb_store() -> AsyncIterator[Any]:
    from drivers.leveldb import LevelDBStore

    path = tempfile.mkdtemp(prefix="bench-leveldb-")
    try:
        async with LevelDBStore(os.path.join(path, "store")) as store:
            yield store
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def leveldb_floor(rounds: int) -> list[float]:
    import plyvel

    from drivers.leveldb import LevelDBStore

    sync = LevelDBStore.__init__.__kwdefaults__["sync"]  # the driver's default durability
    path = tempfile.mkdtemp(prefix="bench-leveldb-floor-")
    db = plyvel.DB(path, create_if_missing=True)
    try:

        async def write(_: int) -> None:
            with db.write_batch(sync=sync) as batch:
                for key, value in three_values():
                    batch.put(key, value)

        return await timed(write, rounds)
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def redis_store() -> AsyncIterator[Any]:
    from drivers.redis import RedisStore

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    store = await RedisStore.connect(REDIS_URL, namespace=namespace)
    try:
        yield store
    finally:
        client = store._client
        async for key in client.scan_iter(match=f"{namespace}:*"):
            await client.delete(key)
        await store.close()


async def redis_floor(rounds: int) -> list[float]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    script = client.register_script(
        "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end return 0"
    )
    prefix = f"benchfloor{uuid.uuid4().hex[:8]}:"
    await script(keys=["w"], args=["v"])  # load it, so every timed call is one EVALSHA
    try:

        async def write(_: int) -> None:
            pairs = three_values()
            await script(keys=[prefix + k.hex() for k, _ in pairs], args=[v for _, v in pairs])

        return await timed(write, rounds)
    finally:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
        await client.delete("w")
        await client.aclose()


@asynccontextmanager
async def postgres_store() -> AsyncIterator[Any]:
    from drivers.postgres import PostgresStore

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = await PostgresStore.connect(DATABASE_URL, schema=schema)
    try:
        yield store
    finally:
        await store.close()
        import asyncpg

        conn = await asyncpg.connect(DATABASE_URL)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


async def postgres_floor(rounds: int) -> list[float]:
    import asyncpg

    conn = await asyncpg.connect(DATABASE_URL)
    table = f"bench_floor_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE TABLE {table} (k bytea PRIMARY KEY, v bytea NOT NULL)")
    upsert = (
        f"INSERT INTO {table} (k, v) VALUES ($1, $2), ($3, $4), ($5, $6) "
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    )
    try:

        async def write(_: int) -> None:
            args = [item for pair in three_values() for item in pair]
            await conn.execute(upsert, *args)

        return await timed(write, rounds)
    finally:
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()


STORES: dict[str, tuple[Any, Any]] = {
    "leveldb": (leveldb_store, leveldb_floor),
    "redis": (redis_store, redis_floor),
    "postgres": (postgres_store, postgres_floor),
}


async def measure(steps: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    memory: list[float] = []
    per_store: dict[str, dict[str, list[float]]] = {n: {"step": [], "floor": []} for n in STORES}
    batches: dict[str, float] = {}
    # Rounds interleave the stores, so a noisy moment hits all of them alike.
    for _ in range(rounds):
        async with memory_store() as store:
            gaps, _ = await step_latencies(store.driver("m"), steps)
            memory.extend(gaps)
        for name, (open_store, floor) in STORES.items():
            async with open_store() as store:
                gaps, batches[name] = await step_latencies(store.driver("w"), steps)
                per_store[name]["step"].extend(gaps)
            per_store[name]["floor"].extend(await floor(steps))
    memory_median = statistics.median(memory)
    results["memory"] = {"median": memory_median, "p99": percentile(memory, 0.99)}
    for name, samples in per_store.items():
        step_median = statistics.median(samples["step"])
        floor_median = statistics.median(samples["floor"])
        results[name] = {
            "median": step_median,
            "p99": percentile(samples["step"], 0.99),
            "floor": floor_median,
            "floor_p99": percentile(samples["floor"], 0.99),
            "ratio": step_median / (floor_median + memory_median),
            "batches": batches[name],
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = anyio.run(measure, args.steps, args.rounds)
    print(
        f"{args.steps}-step workflow x {args.rounds} rounds; times in microseconds (median / p99)"
    )
    print(f"{'store':<10}{'step':>16}{'floor':>16}{'batches/step':>14}{'ratio':>8}  target")
    mem = results["memory"]
    print(f"{'memory':<10}{mem['median'] * 1e6:>8.1f} /{mem['p99'] * 1e6:>6.1f}")
    ok = True
    for name in STORES:
        r = results[name]
        met = r["ratio"] <= 1.2 and r["batches"] == 1
        ok = ok and met
        print(
            f"{name:<10}{r['median'] * 1e6:>8.1f} /{r['p99'] * 1e6:>6.0f}"
            f"{r['floor'] * 1e6:>8.1f} /{r['floor_p99'] * 1e6:>6.0f}"
            f"{r['batches']:>14.2f}{r['ratio']:>8.2f}  <= 1.2 {'ok' if met else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
