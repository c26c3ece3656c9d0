"""Workers: workflows/s with 1, 2 and 4 worker processes, against DBOS Transact.

Workload: 3-step workflows (``tests.workers.app:three``; DBOS: the same three steps as
``@DBOS.step`` functions). For each configuration, N workflows are enqueued from this process
(32 at a time), then K worker processes are started and the clock runs from the first worker
ready until the last workflow completed (from the workers' logs / DBOS's status table).
Every configuration gets a fresh Redis namespace / Postgres schema / SQLite file, removed
afterwards. ``--repeat`` rounds run every configuration in turn; each reports its median.

Latency: one workflow started and run to completion, median of ``--latency-runs``: ours
through ``start_workflow`` + an in-process ``Worker``, through that worker's eager
``Worker.start_workflow``, and through ``run_workflow(...).result()`` directly; DBOS through
``DBOS.start_workflow_async(...)`` + ``get_result()`` (its direct, in-process path).

Run (Redis on REDIS_URL, PostgreSQL on DATABASE_URL; DBOS is optional: ``pip install dbos``):

    .venv/bin/python -m benchmarks.workers [--workflows 1000] [--processes 1,2,4]
        [--concurrency 20] [--repeat 3] [--dbos-poll 0.05] [--skip-dbos]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, benchmarks/drivers.py (the script directory is on sys.path) would shadow
# the drivers package, so the project root replaces the script directory.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ENQUEUERS = 32


# Our engine


def _spawn_ours(url: str, namespace: str, concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "engine", "worker", "--store", url, "--namespace", namespace,
        "--app", "tests.workers.app:WORKFLOWS", "--concurrency", str(concurrency),
        "--log-level", "INFO",
    ]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def _wait_for_line(log: Path, needle: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while needle not in (log.read_text() if log.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
        await asyncio.sleep(0.02)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _open_ours(kind: str, namespace: str) -> Any:
    from engine.cli import open_store

    url = REDIS_URL if kind == "redis" else DATABASE_URL
    return url, open_store(url, namespace=namespace)


async def _drop(kind: str, store: Any, namespace: str) -> None:
    if kind == "redis":
        from tests.support.redis_store import delete_namespace

        await delete_namespace(store)
    else:
        import asyncpg

        conn = await asyncpg.connect(DATABASE_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        await conn.close()


async def ours_throughput(kind: str, processes: int, n: int, concurrency: int) -> float:
    """Enqueue n workflows, then start the workers: clock from the first worker_started to
    the last run_finished in their logs (process start-up and enqueueing not counted)."""
    from engine import start_workflow

    namespace = f"bench_{uuid.uuid4().hex[:10]}"
    url, opener = await _open_ours(kind, namespace)
    async with opener as store:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            await _in_parallel(
                [f"b-{i}" for i in range(n)], lambda w: start_workflow(store, "three", w, 1)
            )
            with tempfile.TemporaryDirectory() as tmp:
                logs = [Path(tmp) / f"w{i}.log" for i in range(processes)]
                for log in logs:
                    procs.append(_spawn_ours(url, namespace, concurrency, log))
                while len(await store.list_workflows("completed", limit=n + 1)) < n:
                    await asyncio.sleep(0.1)
                events = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
        finally:
            _stop(procs)
            await _drop(kind, store, namespace)
    started = min(e["ts"] for e in events if e["event"] == "worker_started")
    finished = max(e["ts"] for e in events if e["event"] == "run_finished")
    return n / (finished - started)


async def _in_parallel(items: list[str], call: Any) -> None:
    queue = list(reversed(items))

    async def drain() -> None:
        while queue:
            await call(queue.pop())

    await asyncio.gather(*(drain() for _ in range(ENQUEUERS)))


async def ours_latency(kind: str, runs: int) -> dict[str, float]:
    """Median seconds from start to completion of one three-step workflow, three ways:
        ``start_workflow`` then a Worker in this process woken by the store; the same worker's
        eager ``Worker.start_workflow``; and a direct ``run_workflow().result()``. Completion is
        read off the worker's own counter, checked every loop turn, so watching costs the store
    nothing and adds no timer granularity."""
    import anyio

    from engine import Worker, run_workflow, start_workflow
    from tests.workers.app import WORKFLOWS, three

    namespace = f"bench_{uuid.uuid4().hex[:10]}"
    _, opener = await _open_ours(kind, namespace)
    times: dict[str, list[float]] = {"start_workflow + Worker": [], "Worker.start_workflow": []}
    async with opener as store:
        try:
            worker = Worker(store, WORKFLOWS, handle_signals=False)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await asyncio.sleep(0.2)
                for i in range(runs + 3):
                    for way, start in (
                        ("start_workflow + Worker", start_workflow),
                        ("Worker.start_workflow", _eager(worker)),
                    ):
                        done = worker.stats.completed + 1
                        started = time.perf_counter()
                        await start(store, "three", f"lat-{way[0]}-{i}", 1)
                        while worker.stats.completed < done:
                            # Every loop turn: a timed sleep this short becomes an epoll
                            # timeout rounded up to 1 ms whenever the loop is otherwise idle.
                            await asyncio.sleep(0)
                        times[way].append(time.perf_counter() - started)
                worker.stop()
            times["run_workflow().result()"] = []
            for i in range(runs + 3):
                wid = f"direct-{i}"
                started = time.perf_counter()
                result = await run_workflow(wid, three, 1, store.driver(wid)).result()
                times["run_workflow().result()"].append(time.perf_counter() - started)
                assert result.output == 3
        finally:
            await _drop(kind, store, namespace)
    return {way: statistics.median(samples[3:]) for way, samples in times.items()}


def _eager(worker: Any) -> Any:
    async def start(_store: Any, name: str, workflow_id: str, input: Any) -> Any:
        return await worker.start_workflow(name, workflow_id, input)

    return start


# DBOS Transact


def _dbos_setup(url: str, schema: str) -> Any:
    from dbos import DBOS

    DBOS(
        config={
            "name": "bench",
            "system_database_url": url,
            "dbos_system_schema": schema,
            "log_level": "WARNING",
            "executor_id": f"bench-{os.getpid()}",  # one per process, or they fight over work
        }
    )

    @DBOS.step()
    async def one(n: int) -> int:
        return n + 1

    @DBOS.step()
    async def two(n: int) -> int:
        return n * 2

    @DBOS.step()
    async def three(n: int) -> int:
        return n - 1

    @DBOS.workflow(name="three")
    async def workflow(n: int) -> int:
        a = await one(n)
        b = await two(a)
        return await three(b)

    return DBOS, workflow


def dbos_setup(url: str, schema: str, concurrency: int, poll: float) -> None:
    """Create DBOS's schema and its (database-backed) queue; run nothing."""
    dbos, _ = _dbos_setup(url, schema)
    dbos.launch()
    dbos.register_queue(
        "bench", worker_concurrency=concurrency, polling_interval_sec=poll,
        on_conflict="always_update",
    )  # fmt: skip
    dbos.destroy()


def dbos_worker(url: str, schema: str) -> None:
    """A DBOS process that runs queued workflows until SIGTERM."""
    import signal

    dbos, _ = _dbos_setup(url, schema)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    dbos.launch()
    print(f"ready {time.time()!r}", flush=True)
    signal.sigwait({signal.SIGTERM})
    dbos.destroy()


def dbos_latency(url: str, schema: str, runs: int) -> None:
    async def main() -> None:
        dbos, workflow = _dbos_setup(url, schema)
        dbos.launch()
        times = []
        for i in range(runs + 3):
            started = time.perf_counter()
            handle = await dbos.start_workflow_async(workflow, i)
            assert await handle.get_result() == (i + 1) * 2 - 1
            times.append(time.perf_counter() - started)
        dbos.destroy()
        print(json.dumps(statistics.median(times[3:])), flush=True)

    asyncio.run(main())


def _dbos_target(kind: str, tmp: str) -> tuple[str, str]:
    schema = f"bench_dbos_{uuid.uuid4().hex[:8]}"
    if kind == "postgres":
        return DATABASE_URL, schema
    return f"sqlite:///{tmp}/dbos.sqlite", schema


def _self(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


_DONE = "SELECT count(*), max(updated_at) FROM {t} WHERE status = 'SUCCESS'"


async def _dbos_completed(kind: str, url: str, schema: str) -> tuple[int, float]:
    """How many workflows succeeded, and when the last one did (epoch seconds)."""
    if kind == "postgres":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow(_DONE.format(t=f'"{schema}".workflow_status'))
        finally:
            await conn.close()
    else:

        def read() -> Any:
            with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30) as conn:
                return conn.execute(_DONE.format(t="workflow_status")).fetchone()

        row = await asyncio.to_thread(read)
    return int(row[0]), (row[1] or 0) / 1000


async def _drop_dbos(kind: str, url: str, schema: str) -> None:
    if kind == "postgres":
        import asyncpg

        conn = await asyncpg.connect(url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def dbos_throughput(
    kind: str, processes: int, n: int, concurrency: int, poll: float
) -> float:
    """Same method as ours: enqueue first (DBOSClient), then start the DBOS processes; clock
    from the first one ready to the last workflow's completion time in DBOS's table."""
    from dbos import DBOSClient

    with tempfile.TemporaryDirectory() as tmp:
        url, schema = _dbos_target(kind, tmp)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            setup = ["dbos-setup", url, schema, str(concurrency), str(poll)]
            subprocess.run(_self(*setup), check=True, cwd=ROOT, timeout=120)
            client = DBOSClient(system_database_url=url, dbos_system_schema=schema)
            options: Any = {"queue_name": "bench", "workflow_name": "three"}
            await _in_parallel(
                [f"d-{i}" for i in range(n)],
                lambda wid: client.enqueue_async({**options, "workflow_id": wid}, 1),
            )
            client.destroy()
            args = ["dbos-worker", url, schema]
            ready: list[float] = []
            for _ in range(processes):
                procs.append(subprocess.Popen(_self(*args), stdout=subprocess.PIPE, cwd=ROOT))
            for proc in procs:
                line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
                if not line.startswith(b"ready "):
                    raise RuntimeError(f"DBOS worker did not start: {line!r}")
                ready.append(float(line.split()[1]))
            while (done := await _dbos_completed(kind, url, schema))[0] < n:
                await asyncio.sleep(0.1)
        finally:
            _stop(procs)
            await _drop_dbos(kind, url, schema)
    return n / (done[1] - min(ready))


async def dbos_latency_of(kind: str, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url, schema = _dbos_target(kind, tmp)
        try:
            out = await asyncio.to_thread(
                subprocess.run,
                _self("dbos-latency", url, schema, str(runs)),
                check=True, capture_output=True, cwd=ROOT, timeout=300,
            )  # fmt: skip
            return float(json.loads(out.stdout.decode().strip().splitlines()[-1]))
        finally:
            await _drop_dbos(kind, url, schema)


# Report


async def bench(args: argparse.Namespace) -> None:
    counts = [int(p) for p in args.processes.split(",")]
    n, c = args.workflows, args.concurrency
    # Rounds interleave the configurations, so a noisy spell of this shared machine falls
    # on all of them rather than on one; each configuration reports its median.
    rates: dict[tuple[str, int], list[float]] = {}
    for round_ in range(1, args.repeat + 1):
        for kind in ("redis", "postgres"):
            for k in counts:
                rate = await ours_throughput(kind, k, n, c)
                rates.setdefault((f"engine on {kind}", k), []).append(rate)
                print(
                    f"round {round_}: engine on {kind:8} {k} proc x {c}: {rate:8.1f} /s", flush=True
                )
        if not args.skip_dbos:
            for kind in ("postgres", "sqlite"):
                for k in counts if kind == "postgres" else [1]:
                    rate = await dbos_throughput(kind, k, n, c, args.dbos_poll)
                    rates.setdefault((f"DBOS on {kind}", k), []).append(rate)
                    print(
                        f"round {round_}: DBOS on {kind:10} {k} proc x {c}: {rate:8.1f} /s",
                        flush=True,
                    )
    latency: dict[str, float] = {}
    for kind in ("redis", "postgres"):
        for way, seconds in (await ours_latency(kind, args.latency_runs)).items():
            latency[f"engine on {kind}: {way}"] = seconds
    if not args.skip_dbos:
        for kind in ("postgres", "sqlite"):
            latency[f"DBOS on {kind}: start_workflow + get_result"] = await dbos_latency_of(
                kind, args.latency_runs
            )
    _print_report(rates, latency, n, c, args)


def _print_report(
    rates: dict[tuple[str, int], list[float]],
    latency: dict[str, float],
    n: int,
    c: int,
    args: argparse.Namespace,
) -> None:
    rate = {key: statistics.median(samples) for key, samples in rates.items()}
    print(f"\nThroughput: {n} three-step workflows, concurrency {c} per process", end="")
    print(f" (DBOS queue polling {args.dbos_poll}s), median of {args.repeat}\n")
    print(f"{'system':22} {'procs':>5} {'workflows/s':>12} {'vs 1 proc':>10}  rounds")
    for (name, k), r in rate.items():
        base = rate.get((name, 1))
        scale = f"{r / base:9.2f}x" if base else ""
        each = ", ".join(f"{x:.0f}" for x in rates[(name, k)])
        print(f"{name:22} {k:5d} {r:12.1f} {scale:>10}  {each}")
    print("\nLatency: one workflow started and run to completion (median)\n")
    for name, seconds in latency.items():
        print(f"{name:52} {seconds * 1000:8.2f} ms")
    print("\nTargets")
    redis1, redis2 = rates.get(("engine on redis", 1)), rates.get(("engine on redis", 2))
    if redis1 and redis2:
        each = ", ".join(f"{b / a:.2f}x" for a, b in zip(redis1, redis2, strict=True))
        ratio = rate[("engine on redis", 2)] / rate[("engine on redis", 1)]
        print(
            f"  redis 1->2 processes: {ratio:.2f}x of the medians, {each} by round (target >= 1.6x)"
        )
    for k in sorted({k for _, k in rates}):
        ours, theirs = rate.get(("engine on postgres", k)), rate.get(("DBOS on postgres", k))
        if ours and theirs:
            print(f"  postgres, {k} proc: engine / DBOS = {ours / theirs:.2f}x (target >= 3x)")
    dbos_lat = latency.get("DBOS on postgres: start_workflow + get_result")
    if dbos_lat:
        for name in _WAYS:
            ours_lat = latency[f"engine on postgres: {name}"]
            print(
                f"  latency on postgres, {name}: {ours_lat / dbos_lat:.2f} of DBOS (target <= 0.20)"
            )


_WAYS = ("start_workflow + Worker", "Worker.start_workflow", "run_workflow().result()")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "dbos-worker":
        dbos_worker(*sys.argv[2:4])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "dbos-setup":
        url, schema, concurrency, poll = sys.argv[2:6]
        dbos_setup(url, schema, int(concurrency), float(poll))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "dbos-latency":
        url, schema, runs = sys.argv[2:5]
        dbos_latency(url, schema, int(runs))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="throughput rounds (median)")
    parser.add_argument("--dbos-poll", type=float, default=0.05, help="DBOS queue polling (s)")
    parser.add_argument("--skip-dbos", action="store_true")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
