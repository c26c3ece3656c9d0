"""``python -m engine`` (the ``durable-engine`` commands) run as real processes, end to end,
on every store that several processes can share one after another: LevelDB, Redis, Postgres.

A workflow with history is run in the test process first (LevelDB: the store is closed
before any command runs, since one process owns the directory); the commands then start,
list, show, message, cancel and recover workflows in the same store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import CriticalError, run_workflow
from engine.cli import open_store
from engine.errors import StorageError
from tests.support.services import DATABASE_URL, REDIS_URL, unique_name, unreachable

ROOT = Path(__file__).resolve().parents[2]
FAILED_ID = "cli-failed"
PENDING_ID = "cli-pending"


@dataclass
class Target:
    name: str
    url: str
    namespace: str | None

    def options(self) -> list[str]:
        namespace = [] if self.namespace is None else ["--namespace", self.namespace]
        return ["--store", self.url, *namespace]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One ``python -m engine`` process; its stdout, stderr and exit code."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = cli(*args, env=env)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert done.stderr == ""
    return done.stdout


def fails(*args: str, env: dict[str, str] | None = None) -> str:
    """A command that must fail with one line on stderr and nothing on stdout."""
    done = cli(*args, env=env)
    assert done.returncode != 0, (args, done.stdout)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


async def _failing(ctx: Any, value: Any) -> Any:
    await ctx.step("a", lambda: value)
    await ctx.join("j", {"x": lambda branch: branch.step("s", lambda: 2)})

    def decline() -> None:
        raise CriticalError("card declined")

    await ctx.step("charge", decline)


async def _seed(target: Target) -> None:
    """Run a workflow that records history and fails, in this process, then close."""
    try:
        async with open_store(target.url, namespace=target.namespace) as store:
            with pytest.raises(CriticalError, match="card declined"):
                await run_workflow(FAILED_ID, _failing, 7, store.driver(FAILED_ID)).result()
    except (StorageError, OSError) as exc:
        unreachable(target.name, target.url, exc)


async def _clean(target: Target) -> None:
    if target.name == "redis":
        from tests.support.redis_store import delete_namespace

        async with open_store(target.url, namespace=target.namespace) as store:
            await delete_namespace(store)  # type: ignore[arg-type]
    elif target.name == "postgres":
        from tests.support.postgres_store import admin_connection

        admin = await admin_connection()
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{target.namespace}" CASCADE')
        finally:
            await admin.close()


@pytest.fixture(params=["leveldb", "redis", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    name = request.param
    if name == "leveldb":
        chosen = Target(name, f"leveldb://{tmp_path / 'db'}", None)
    elif name == "redis":
        chosen = Target(name, REDIS_URL, unique_name("cli"))
    else:
        chosen = Target(name, DATABASE_URL, unique_name("cli"))
    anyio.run(_seed, chosen)
    try:
        yield chosen
    finally:
        anyio.run(_clean, chosen)


def test_commands_on_a_shared_store(target: Target) -> None:
    store = target.options()

    created = json.loads(ok("start", "nobody-serves", PENDING_ID, '{"n": 1}', *store, "--json"))
    assert created == {"workflow_id": PENDING_ID, "name": "nobody-serves", "created": True}

    listed = json.loads(ok("list", *store, "--json"))
    by_id = {row["workflow_id"]: row for row in listed}
    assert by_id[PENDING_ID]["state"] == "pending"
    assert by_id[PENDING_ID]["name"] == "nobody-serves"
    assert isinstance(by_id[PENDING_ID]["updated_at"], float)
    lines = ok("list", "--state", "pending", *store).splitlines()
    assert lines[0].split() == ["id", "name", "state", "wake", "at", "updated", "at"]
    assert lines[1].split()[:3] == [PENDING_ID, "nobody-serves", "pending"]
    assert len(lines) == 2

    shown = json.loads(ok("show", FAILED_ID, *store, "--json"))
    assert shown["state"] == "failed" and shown["input"] == 7
    assert shown["error"]["message"] == "card declined"
    history = {entry["path"]: entry for entry in shown["history"]}
    assert history["a"] == {
        "path": "a",
        "kind": "step",
        "status": "completed",
        "attempts": 1,
        "output": 7,
        "error": None,
    }
    assert history["j/x/s"]["output"] == 2
    assert history["charge"]["status"] == "failed"
    human = ok("show", FAILED_ID, *store)
    assert "card declined" in human and "\x1b[" not in human  # no colours off a terminal
    tree = human[human.index("history") :].splitlines()
    assert tree[1].endswith("a  step completed  attempts=1  -> 7"), human
    assert any(line.endswith("j  join completed") for line in tree), human
    nested = [line for line in tree if "s  step completed" in line]
    assert len(nested) == 1 and nested[0].index("s  step") > tree[1].index("a  step"), human

    sent = ok("message", PENDING_ID, "ship", '{"track": "T-1"}', *store)
    assert sent == f"message: {PENDING_ID!r} is now pending\n"
    assert json.loads(ok("recover", FAILED_ID, *store, "--json"))["state"] != "failed"
    by_env = {"DURABLE_STORE": target.url, "DURABLE_NAMESPACE": target.namespace or ""}
    ok("cancel", PENDING_ID, env=by_env)
    assert json.loads(ok("show", PENDING_ID, *store, "--json"))["state"] == "cancelled"

    assert fails("show", "no-such-id", *store) == "error: no workflow 'no-such-id' in this store"


def test_errors_are_one_line(tmp_path: Path) -> None:
    env = {"DURABLE_STORE": f"leveldb://{tmp_path / 'db'}"}
    assert "not valid JSON" in fails("start", "w", "id-1", "{oops", env=env)
    assert "no store given" in fails("list")
    assert "unknown store URL scheme" in fails("list", "--store", "ftp://x")
