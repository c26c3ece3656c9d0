"""Which PostgreSQL client for the driver? asyncpg against psycopg 3 (async) on our hot path.

The engine's write path is one atomic batch per flush: here 3 keys with ~125-byte bytea
values, upserted in one statement (CTE over ``unnest`` arrays, one round trip). Its read path
is a prefix scan: here ~20 rows of one workflow in key order. Both clients use prepared
statements and binary transfer, one connection each, interleaved in rounds so drift in the
server hits both alike. Prints median and p99 in microseconds and the psycopg/asyncpg ratio.

Run: ``.venv/bin/python -m benchmarks.postgres_clients [--dsn URL] [--rounds 2000]``
(``DATABASE_URL`` is the default DSN; a scratch schema is created and dropped.)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg

SCHEMA = f"bench_clients_{uuid.uuid4().hex[:8]}"
DDL = f"""
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.kv (
    workflow_id text COLLATE "C" NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (workflow_id, key));
"""
BATCH = """
WITH up AS (
    INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT {wid}, k, v FROM unnest({keys}::bytea[], {values}::bytea[]) AS t(k, v)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value),
del AS (DELETE FROM {s}.kv WHERE workflow_id = {wid} AND key = ANY({deleted}::bytea[]))
SELECT 1
"""
LIST = (
    "SELECT key, value FROM {s}.kv WHERE workflow_id = {wid} AND key >= {lo} AND key < {hi}"
    " ORDER BY key"
)

ASYNCPG = {"s": SCHEMA, "wid": "$1", "keys": "$2", "values": "$3", "deleted": "$4"}
ASYNCPG |= {"lo": "$2", "hi": "$3"}
PSYCOPG = {name: f"%({name})s" for name in ASYNCPG} | {"s": SCHEMA}
WID = "order-123"
VALUE = bytes(range(125))


def _batch_args(round_: int) -> dict[str, Any]:
    keys = [b"\x02\x15" + bytes([i]) + round_.to_bytes(4, "big") for i in range(3)]
    return {"wid": WID, "keys": keys, "values": [VALUE] * 3, "deleted": []}


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _time(call: Callable[[], Awaitable[Any]], samples: list[float]) -> None:
    started = time.perf_counter()
    await call()
    samples.append((time.perf_counter() - started) * 1e6)


async def main(dsn: str, rounds: int) -> None:
    admin = await asyncpg.connect(dsn)
    await admin.execute(DDL)
    try:
        # ~20 rows under one prefix (b"\x03"), between other keys of the same workflow.
        await admin.executemany(
            f"INSERT INTO {SCHEMA}.kv VALUES ($1, $2, $3)",
            [(WID, p + bytes([i]), VALUE) for p in (b"\x01", b"\x03", b"\x04") for i in range(20)],
        )
        apg = await asyncpg.connect(dsn)
        pg = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        apg_batch, apg_list = BATCH.format(**ASYNCPG), LIST.format(**ASYNCPG)
        pg_batch, pg_list = BATCH.format(**PSYCOPG), LIST.format(**PSYCOPG)
        list_args = {"wid": WID, "lo": b"\x03", "hi": b"\x04"}
        pg_cur = pg.cursor(binary=True)

        async def apg_write(i: int) -> None:
            await apg.fetchval(apg_batch, *_batch_args(i).values())

        async def apg_read() -> None:
            rows = await apg.fetch(apg_list, *list_args.values())
            assert len(rows) == 20

        async def pg_write(i: int) -> None:
            await pg_cur.execute(pg_batch, _batch_args(i), prepare=True)

        async def pg_read() -> None:
            await pg_cur.execute(pg_list, list_args, prepare=True)
            rows = await pg_cur.fetchall()
            assert len(rows) == 20 and isinstance(rows[0][0], bytes)

        results: dict[str, list[float]] = {
            name: [] for name in ("asyncpg batch", "psycopg batch", "asyncpg list", "psycopg list")
        }
        warmup = max(50, rounds // 10)
        for i in range(warmup + rounds):
            sink = {k: ([] if i < warmup else v) for k, v in results.items()}
            await _time(functools.partial(apg_write, i), sink["asyncpg batch"])
            await _time(functools.partial(pg_write, i), sink["psycopg batch"])
            await _time(apg_read, sink["asyncpg list"])
            await _time(pg_read, sink["psycopg list"])
        await apg.close()
        await pg.close()
    finally:
        await admin.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        await admin.close()

    print(f"{rounds} rounds, one connection per client, microseconds per op")
    print(f"{'case':<16}{'median':>10}{'p99':>10}")
    for name, samples in results.items():
        print(f"{name:<16}{statistics.median(samples):>10.0f}{_percentile(samples, 0.99):>10.0f}")
    for op in ("batch", "list"):
        a, p = results[f"asyncpg {op}"], results[f"psycopg {op}"]
        print(
            f"psycopg/asyncpg {op}: median x{statistics.median(p) / statistics.median(a):.2f}, "
            f"p99 x{_percentile(p, 0.99) / _percentile(a, 0.99):.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.rounds))
