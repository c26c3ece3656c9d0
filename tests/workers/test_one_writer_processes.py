"""One writer across processes: ``run_workflow`` in two processes on one id, and a client
waiting for a workflow a Worker process runs, on Redis and on Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import anyio
import pytest

from engine import Client, WorkflowState
from tests.workers.procs import Backend, WorkerProcess, open_backend

BACKENDS = ("asyncio",)  # the Redis and Postgres clients run on asyncio only
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend_name", ["redis", "postgres"])]


def _run_once(
    backend: Backend, workflow_id: str, spec: dict[str, object]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.workers.run_once",
            backend.url,
            backend.namespace,
            workflow_id,
            json.dumps(spec),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "ENGINE_TEST_EFFECTS": backend.effects_target},
    )


async def test_two_processes_running_one_workflow_execute_each_step_once(
    backend_name: str,
) -> None:
    async with open_backend(backend_name, poll=0.3) as backend:
        wid = f"two-{uuid.uuid4().hex[:8]}"
        spec = {"sleep": 0, "message": False, "work": 1.0}  # each step holds the run ~1 s
        first, second = _run_once(backend, wid, spec), _run_once(backend, wid, spec)
        outs = []
        for process in (first, second):
            stdout, _ = await anyio.to_thread.run_sync(process.communicate, 60)
            assert process.returncode == 0, stdout
            outs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        outcomes = sorted(out["outcome"] for out in outs)
        assert outcomes == ["busy", "completed"], outs
        effects = [e for e in await backend.effects() if e.workflow_id == wid]
        assert sorted(e.step for e in effects) == ["a", "b", "c"]  # every step ran once
        assert len({e.pid for e in effects}) == 1


async def test_a_client_waits_for_a_workflow_a_worker_process_runs(backend_name: str) -> None:
    async with open_backend(backend_name, poll=0.3) as backend:
        client = Client(backend.store)
        wid = f"cl-{uuid.uuid4().hex[:8]}"
        await client.start("mixed", wid, {"sleep": 0, "message": True, "work": 0.02})
        with tempfile.TemporaryDirectory() as logs:
            worker = WorkerProcess("w1", backend, Path(logs), {"poll": 0.3})
            try:
                handle = client.handle(wid)
                with anyio.fail_after(30):
                    while (await handle.get_state()) != WorkflowState.SLEEPING:
                        await anyio.sleep(0.05)
                await handle.message("go", "now")
                result = await handle.result(timeout=30)
            finally:
                await worker.stop()
        assert result.state == WorkflowState.COMPLETED and result.output is not None
        assert result.output["m"] == "now"
        effects = [e for e in await backend.effects() if e.workflow_id == wid]
        assert {e.pid for e in effects} == {worker.pid}  # nothing ran in this process


async def test_cancel_wins_over_a_worker_process_running_the_workflow(backend_name: str) -> None:
    async with open_backend(backend_name, poll=0.3) as backend:
        client = Client(backend.store)
        wid = f"cancel-{uuid.uuid4().hex[:8]}"
        await client.start("mixed", wid, {"sleep": 0, "message": False, "work": 1.5})
        with tempfile.TemporaryDirectory() as logs:
            worker = WorkerProcess("w1", backend, Path(logs), {"poll": 0.3, "heartbeat": 0.3})
            try:
                with anyio.fail_after(30):  # step "a" is under way in the worker process
                    while not [e for e in await backend.effects() if e.workflow_id == wid]:
                        await anyio.sleep(0.05)
                await client.handle(wid).cancel()
                result = await client.handle(wid).result(timeout=10)
                assert result.state == WorkflowState.CANCELLED
                await anyio.sleep(2.5)  # step "a" ends; whatever the worker tries is refused
            finally:
                await worker.stop()
        assert (await client.describe(wid)).state == WorkflowState.CANCELLED
        steps = sorted(e.step for e in await backend.effects() if e.workflow_id == wid)
        assert steps == ["a"], steps  # nothing ran after the cancel
