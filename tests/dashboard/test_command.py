"""``durable-engine dashboard``: what it says when it cannot serve, and that the dashboard's
libraries stay out of ``import engine``."""

from __future__ import annotations

import socket
import subprocess
import sys

from engine.dashboard.server import store_label
from tests.dashboard.browser import ROOT


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_import_engine_never_imports_the_dashboard_libraries() -> None:
    done = run_python(
        "import sys, engine, engine.cli\n"
        "loaded = {'starlette', 'uvicorn', 'jinja2', 'engine.dashboard'} & set(sys.modules)\n"
        "print(sorted(loaded))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_extra_the_command_names_it() -> None:
    done = run_python(
        "import sys\n"
        "sys.modules['starlette'] = None  # as if the extra were not installed\n"
        "from engine.cli import main\n"
        "sys.exit(main(['dashboard', '--store', 'memory://']))"
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: engine.dashboard needs starlette, uvicorn and jinja2: "
        "pip install 'durable-engine[dashboard]'\n"
    )


def test_a_store_is_required_and_a_busy_port_is_one_line() -> None:
    from engine.cli import main

    assert main(["dashboard"]) == 2
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        command = ["dashboard", "--store", "memory://", "--port", str(port)]
        done = subprocess.run(
            [sys.executable, "-m", "engine", *command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert len(done.stderr.splitlines()) == 1


def test_the_header_never_shows_a_password() -> None:
    assert store_label("postgresql://app:s3cret@db:5432/prod?password=x", "shop") == (
        "postgresql://app:***@db:5432/prod (namespace shop)"
    )
    assert store_label("leveldb:///var/lib/wf", None) == "leveldb:///var/lib/wf"
    assert store_label("memory://", None) == "memory://"
