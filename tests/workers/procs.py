"""Worker processes for the multi-process tests, the backends they share, and the checks.

A ``Backend`` is one shared store (Redis namespace or Postgres schema, fresh per test and
removed afterwards) plus the side-effect log the steps of ``tests.workers.app`` append to.
``WorkerProcess`` runs ``python -m engine worker`` with DEBUG JSON logs in a file.
``check_history`` compares what history holds with the side-effect log and the worker logs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from engine import run_workflow
from engine.records import StepEntry
from engine.storage import Storage
from tests.support.services import DATABASE_URL, REDIS_URL, unique_name, unreachable

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.workers.app:WORKFLOWS"
# Ends of a run in a worker's log; the first three mean "this run's writes were refused".
FENCED = ("fencing_rejected", "run_abandoned", "lease_lost")
RUN_ENDS = (*FENCED, "run_finished", "workflow_failed", "store_error", "worker_error")


@dataclass
class Effect:
    workflow_id: str
    step: str
    pid: int
    nonce: str
    at: float


@dataclass
class Backend:
    name: str
    url: str
    namespace: str
    store: Any
    effects_target: str  # ENGINE_TEST_EFFECTS for the worker processes
    _reader: Any = None

    async def effects(self) -> list[Effect]:
        if self.name == "redis":
            key = self.effects_target.partition("#")[2]
            raw = await self._reader.lrange(key, 0, -1)
            return [Effect(*json.loads(item)) for item in raw]
        rows = await self._reader.fetch(
            f"SELECT workflow_id, step, pid, nonce, at FROM {self.namespace}.effects ORDER BY at"
        )
        return [Effect(*row) for row in rows]

    async def message(self, workflow_id: str, name: str, data: Any) -> None:
        handle = run_workflow(workflow_id, _unused, None, self.store.driver(workflow_id))
        await handle.message(name, data)

    async def history(self, workflow_id: str) -> dict[str, Any]:
        """What history holds: recorded output of every completed step, by location path."""
        storage = Storage(self.store.driver(workflow_id), workflow_id)
        await storage.load()
        return {
            storage.names.render(location): node.entry.output
            for location, node in storage.walk()
            if isinstance(node.entry, StepEntry) and node.entry.done
        }

    async def output(self, workflow_id: str) -> Any:
        return await run_workflow(
            workflow_id, _unused, None, self.store.driver(workflow_id)
        ).get_output()


async def _unused(ctx: Any, value: Any) -> Any:
    raise AssertionError("only used to read and send")


@asynccontextmanager
async def open_backend(name: str, poll: float) -> AsyncIterator[Backend]:
    namespace = unique_name("mp")
    if name == "redis":
        from drivers.redis import RedisStore
        from engine.errors import StorageError
        from tests.support.redis_store import delete_namespace

        try:
            store = await RedisStore.connect(
                REDIS_URL, namespace=namespace, worker_poll_interval=poll
            )
        except StorageError as exc:
            unreachable("Redis", REDIS_URL, exc)
        async with store:
            try:
                yield Backend(
                    name,
                    REDIS_URL,
                    namespace,
                    store,
                    f"{REDIS_URL}#{namespace}:effects",
                    store._client,
                )
            finally:
                await delete_namespace(store)
        return
    from drivers.postgres import PostgresStore
    from tests.support.postgres_store import admin_connection

    admin = await admin_connection()
    try:
        async with await PostgresStore.connect(
            DATABASE_URL, schema=namespace, worker_poll_interval=poll
        ) as pg_store:
            await admin.execute(
                f"CREATE TABLE {namespace}.effects (workflow_id text, step text, pid int,"
                " nonce text, at double precision)"
            )
            yield Backend(
                name,
                DATABASE_URL,
                namespace,
                pg_store,
                f"{DATABASE_URL}#{namespace}.effects",
                admin,
            )
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        await admin.close()


@dataclass
class WorkerProcess:
    """One ``python -m engine worker`` process logging JSON lines to ``log_path``."""

    label: str
    backend: Backend
    log_dir: Path
    options: dict[str, Any]
    process: subprocess.Popen[bytes] = field(init=False)
    killed_at: float | None = None

    def __post_init__(self) -> None:
        self.log_path = self.log_dir / f"{self.label}.log"
        args = [
            sys.executable,
            "-m",
            "engine",
            "worker",
            "--store",
            self.backend.url,
            "--namespace",
            self.backend.namespace,
            "--app",
            APP,
            "--log-level",
            "DEBUG",
        ]
        for option, value in self.options.items():
            args += [f"--{option}", str(value)]
        env = dict(os.environ, ENGINE_TEST_EFFECTS=self.backend.effects_target)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        if signum == signal.SIGKILL:
            self.killed_at = time.time()
        self.process.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label} did not exit within {timeout}s")
            await anyio.sleep(0.05)
        return code

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; must exit 0 (graceful)."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "unparsed", "line": line})
        return out

    def force_kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)


def check_history(
    histories: dict[str, dict[str, Any]], effects: list[Effect], workers: list[WorkerProcess]
) -> dict[str, int]:
    """Every landed step executed exactly once; every other execution is explained; no two
    workers ran one workflow at once. Returns counts for the test to print and assert on."""
    killed = {w.pid for w in workers if w.killed_at is not None}
    fenced: set[tuple[int, str]] = set()
    for worker in workers:
        for event in worker.events():
            if event.get("event") in FENCED:
                fenced.add((worker.pid, event["workflow_id"]))
    per_nonce = Counter(e.nonce for e in effects)
    by_nonce = {e.nonce: e for e in effects}
    landed: set[str] = set()
    for wid, out in histories.items():
        for step in ("a", "b", "c"):
            nonce = out[step]["nonce"]
            assert per_nonce[nonce] == 1, (
                f"{wid}/{step}: landed execution logged {per_nonce[nonce]}x"
            )
            assert by_nonce[nonce].pid == out[step]["pid"]
            landed.add(nonce)
    extras = [e for e in effects if e.nonce not in landed]
    for extra in extras:
        assert extra.workflow_id in histories, f"execution of an unknown workflow: {extra}"
        assert extra.pid in killed or (extra.pid, extra.workflow_id) in fenced, (
            f"{extra.workflow_id}/{extra.step} ran again in pid {extra.pid}, which was neither "
            "killed nor fenced off: a repeat whose first write had landed"
        )
    overlaps = _check_single_runner(workers)
    fencing = sum(1 for w in workers for e in w.events() if e.get("event") == "fencing_rejected")
    return {
        "effects": len(effects),
        "repeats": len(extras),
        "fencing_rejections": fencing,
        "claims": overlaps,
    }


def in_flight(worker: WorkerProcess) -> set[str]:
    """Workflows the worker had claimed and not finished when its log ends."""
    running: set[str] = set()
    for event in worker.events():
        if event.get("event") == "claimed":
            running.add(event["workflow_id"])
        elif event.get("event") in RUN_ENDS:
            running.discard(event.get("workflow_id"))
    return running


def _check_single_runner(workers: list[WorkerProcess]) -> int:
    """From the logs: claim tokens never repeat, and runs whose writes were not refused never
    overlap in time for one workflow. Returns how many claims were checked."""
    runs: dict[str, list[tuple[float, float, str, int]]] = defaultdict(list)
    tokens: dict[str, list[int]] = defaultdict(list)
    for worker in workers:
        open_claims: dict[str, tuple[float, int]] = {}
        end_of_log = worker.killed_at or time.time()
        for event in worker.events():
            kind, wid = event.get("event"), str(event.get("workflow_id"))
            if kind == "claimed":
                if wid in open_claims:  # re-claimed our own expired lease: the old run lost
                    started, token = open_claims[wid]
                    runs[wid].append((started, event["ts"], "lease_lost", token))
                open_claims[wid] = (event["ts"], event["token"])
                tokens[wid].append(event["token"])
            elif kind in RUN_ENDS and wid in open_claims:
                started, token = open_claims.pop(wid)
                runs[wid].append((started, event["ts"], kind, token))
        for wid, (started, token) in open_claims.items():
            assert worker.killed_at is not None, f"{worker.label}: run of {wid} never ended"
            runs[wid].append((started, end_of_log, "killed", token))
    for wid, claimed in tokens.items():
        assert len(claimed) == len(set(claimed)), f"{wid}: a claim token was handed out twice"
    for wid, spans in runs.items():
        clean = sorted(s for s in spans if s[2] not in FENCED)
        for (_, end, kind, token), (start, _, _, next_token) in itertools.pairwise(clean):
            assert end <= start, (
                f"{wid}: run with token {token} ({kind}) overlapped the run with token {next_token}"
            )
    return sum(len(t) for t in tokens.values())
