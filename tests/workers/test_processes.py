"""Several ``python -m engine worker`` processes sharing one Redis or Postgres store.

Real processes, real signals: one worker is SIGKILLed mid-run, one SIGTERMed and
restarted, and a paused one (SIGSTOP past its lease) must not write when it resumes. The
side-effect log the steps append to is compared with what history holds.
"""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import start_workflow
from tests.workers.procs import (
    Backend,
    WorkerProcess,
    check_history,
    in_flight,
    open_backend,
    wait_for,
)

BACKENDS = ("asyncio",)  # the Redis and Postgres clients run on asyncio only
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend_name", ["redis", "postgres"])]

LEASE, HEARTBEAT, POLL = 1.5, 0.3, 0.3
WORKER_OPTIONS = {"lease": LEASE, "heartbeat": HEARTBEAT, "poll": POLL, "concurrency": 10}


def _spec(i: int) -> dict[str, Any]:
    # Sleeps of 0.1 s wait in memory (shorter than POLL); 0.5 s and 1 s yield to an alarm.
    return {
        "sleep": (0, 0.1, 0.5, 1.0)[i % 4],
        "message": i % 3 == 0,
        "work": 0.02 + (i % 5) * 0.02,
    }


async def _completed(backend: Backend, ids: list[str]) -> bool:
    done = set(await backend.store.list_workflows("completed", limit=10_000))
    return done >= set(ids)


async def _diagnose(backend: Backend, ids: list[str], workers: list[WorkerProcess]) -> str:
    """Why workflows did not complete: index state, alarm, and what the workers logged."""
    done = set(await backend.store.list_workflows("completed", limit=10_000))
    alarms = dict(await backend.store.due_alarms(now=time.time() + 3600, limit=10_000))
    lines = []
    for wid in [w for w in ids if w not in done][:10]:
        info = await backend.store.workflow_info(wid)
        lines.append(f"{wid}: index={info} alarm={alarms.get(wid)}")
        for worker in workers:
            for event in worker.events():
                if event.get("workflow_id") == wid:
                    lines.append(f"   {worker.label}: {event}")
    return "\n".join(lines)


async def _histories(backend: Backend, ids: list[str], specs: dict[str, Any]) -> dict[str, Any]:
    """Each workflow's step outputs as history holds them, checked against its output."""
    histories = {}
    for wid in ids:
        out = await backend.output(wid)
        history = await backend.history(wid)
        for step in ("a", "b", "c"):
            assert out[step]["v"] == f"{wid}/{step}"
            assert history[step] == out[step]
        if specs[wid]["message"]:
            assert out["m"] == f"go-{wid}"
        else:
            assert "m" not in out
        histories[wid] = history
    return histories


async def test_kill_and_restart_workers(backend_name: str) -> None:
    """200 workflows on three workers: SIGKILL one, SIGTERM and restart another."""
    with tempfile.TemporaryDirectory(prefix="engine-workers-") as tmp:
        async with open_backend(backend_name, POLL) as backend:
            ids = [f"mp-{i:03d}" for i in range(200)]
            specs = {wid: _spec(i) for i, wid in enumerate(ids)}
            for wid in ids:
                await start_workflow(backend.store, "mixed", wid, specs[wid])
            waiting = [wid for wid in ids if specs[wid]["message"]]
            workers = [WorkerProcess(f"w{i}", backend, Path(tmp), WORKER_OPTIONS) for i in range(3)]
            try:
                victim, stopped = workers[0], workers[1]

                async def victim_busy() -> bool:
                    return any(e.pid == victim.pid for e in await backend.effects())

                await wait_for(victim_busy, 20, "the first worker to run a step")
                for wid in waiting[: len(waiting) // 2]:
                    await backend.message(wid, "go", f"go-{wid}")
                await anyio.sleep(0.3)
                victim.signal(signal.SIGKILL)
                await anyio.sleep(0.3)
                started = time.monotonic()
                assert await stopped.stop(timeout=LEASE + 5) == 0
                assert time.monotonic() - started < LEASE + 5
                workers.append(WorkerProcess("w1-restarted", backend, Path(tmp), WORKER_OPTIONS))
                for wid in waiting[len(waiting) // 2 :]:
                    await backend.message(wid, "go", f"go-{wid}")
                try:
                    await wait_for(lambda: _completed(backend, ids), 45, "every workflow")
                except AssertionError as exc:
                    raise AssertionError(
                        f"{exc}\n{await _diagnose(backend, ids, workers)}"
                    ) from None
                for worker in workers[2:]:
                    assert await worker.stop() == 0
            finally:
                for worker in workers:
                    worker.force_kill()
            histories = await _histories(backend, ids, specs)
            counts = check_history(histories, await backend.effects(), workers)
            print(f"\n{backend_name}: {counts}")
            # The killed worker was mid-run; others took those workflows over (all completed).
            assert in_flight(victim)
            assert not in_flight(stopped)  # the graceful stop ended every run it had
            assert counts["repeats"] <= WORKER_OPTIONS["concurrency"]


async def test_paused_worker_cannot_write(backend_name: str) -> None:
    """SIGSTOP a worker mid-step past its lease; after SIGCONT its writes are refused."""
    options = {**WORKER_OPTIONS, "lease": 1.0, "heartbeat": 0.2, "concurrency": 4}
    with tempfile.TemporaryDirectory(prefix="engine-workers-") as tmp:
        async with open_backend(backend_name, POLL) as backend:
            ids = [f"pause-{i}" for i in range(6)]
            specs = {wid: {"sleep": 0, "message": False, "work": 0.4} for wid in ids}
            workers = [WorkerProcess(f"w{i}", backend, Path(tmp), options) for i in range(2)]
            try:
                await anyio.sleep(0.5)  # both are up, so both claim some
                for wid in ids:
                    await start_workflow(backend.store, "mixed", wid, specs[wid])

                async def first_effect() -> bool:
                    return bool(await backend.effects())

                await wait_for(first_effect, 20, "a step to start")
                first = (await backend.effects())[0]
                paused = next(w for w in workers if w.pid == first.pid)
                paused.signal(signal.SIGSTOP)
                await wait_for(lambda: _completed(backend, ids), 30, "the takeover")
                paused.signal(signal.SIGCONT)

                async def refused() -> bool:
                    return any(e.get("event") == "fencing_rejected" for e in paused.events())

                await wait_for(refused, 10, "the paused worker's write to be refused")
                for worker in workers:
                    assert await worker.stop() == 0
            finally:
                for worker in workers:
                    worker.force_kill()
            histories = await _histories(backend, ids, specs)
            counts = check_history(histories, await backend.effects(), workers)
            print(f"\n{backend_name}: {counts}")
            assert counts["fencing_rejections"] >= 1
            assert counts["repeats"] >= 1
            # The step the paused worker was running when it stopped never landed.
            landed = {out["nonce"] for h in histories.values() for out in h.values()}
            assert first.nonce not in landed
