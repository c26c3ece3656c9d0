"""``durable-engine worker`` as the installed console script: a registry module found in the
current directory, and ``--trace-console`` printing the run's and the steps' spans."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SHOP = textwrap.dedent(
    """
    async def hello(ctx, name):
        greeting = await ctx.step("greet", lambda: f"hello {name}")
        return greeting

    workflows = {"hello": hello}
    """
)


def _script() -> str:
    found = shutil.which("durable-engine", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the durable-engine console script is not installed next to this python")
    return found


def test_the_installed_worker_finds_the_app_in_the_current_directory_and_traces(
    tmp_path: Path,
) -> None:
    (tmp_path / "shop.py").write_text(SHOP)
    store = ["--store", f"leveldb://{tmp_path / 'db'}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = _script()
    started = subprocess.run(
        [script, "start", "hello", "h-1", '"ada"', *store],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    worker = subprocess.Popen(
        [script, "worker", "--app", "shop:workflows", "--trace-console", "--poll", "0.1", *store],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        assert worker.stdout is not None
        while time.monotonic() < deadline:
            line = worker.stdout.readline()
            if not line:
                break
            lines.append(line)
            if '"run_finished"' in line:
                break
        assert any('"run_finished"' in line and '"completed"' in line for line in lines), lines
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert '"name": "workflow hello"' in err and '"name": "step greet"' in err
    assert '"workflow.outcome": "completed"' in err


def test_trace_console_without_the_sdk_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(SHOP)
    blocker = tmp_path / "blocker"
    (blocker / "opentelemetry" / "sdk").mkdir(parents=True)
    (blocker / "opentelemetry" / "sdk" / "__init__.py").write_text("raise ImportError('no')\n")
    (blocker / "opentelemetry" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    done = subprocess.run(
        [
            _script(),
            "worker",
            "--app",
            "shop:workflows",
            "--trace-console",
            "--store",
            f"leveldb://{tmp_path / 'db'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "pip install 'durable-engine[otel]'" in done.stderr
