"""Run every code block of one documentation page, in order, in this process.

``python -m tests.docs.run_page PAGE`` with the page's working directory as the current
directory. Each page runs in a process of its own, so what a page sets up for the whole
process (a global tracer provider, a logging configuration) cannot leak into another page
or into the rest of the test suite. The conventions are in ``tests.docs.blocks``.

Exit status 0 when every block ran as it must; otherwise 1, with ``PAGE:LINE: what went
wrong`` and the details (a traceback, a command's output) on stderr.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tests.docs.blocks import (
    RETRY_SECONDS,
    Block,
    console_commands,
    output_matches,
    read_blocks,
)

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 60.0
READY_SECONDS = 15.0
STOP_SECONDS = 15.0


class BlockFailed(Exception):
    """Raised when a block did not run as its page says it does."""

    def __init__(self, block: Block, message: str, line: int | None = None) -> None:
        super().__init__(f"{block.page}:{line or block.line}: {block.lang} block: {message}")


class Session:
    """One page's terminal session and Python namespace."""

    def __init__(self, page: Path) -> None:
        self.page = page
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.background: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
        self._env_file = Path(tempfile.mkstemp(prefix="docs-env-")[1])
        sys.path.insert(0, os.getcwd())

    # Python

    def python(self, block: Block) -> None:
        if block.title:
            Path(block.title).write_text(block.code, encoding="utf-8")
        # Padded so the traceback's line numbers are the page's own.
        source = "\n" * (block.line - 1) + block.code
        code = compile(
            source, str(self.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        printed = io.StringIO()

        async def in_the_loop() -> None:
            # Inside the running loop even without an ``await``, as in ``python -m asyncio``
            # (``asyncio.create_task`` works at the top level).
            result = eval(code, self.namespace)
            if inspect.iscoroutine(result):
                await result

        with contextlib.redirect_stdout(printed):
            self.loop.run_until_complete(in_the_loop())
        if block.expected is not None:
            actual = printed.getvalue().rstrip("\n").split("\n") if printed.getvalue() else []
            if not output_matches(list(block.expected), actual):
                raise BlockFailed(
                    block,
                    "printed:\n"
                    + "\n".join(actual)
                    + "\nbut the page shows:\n"
                    + "\n".join(block.expected),
                )

    # Shell

    def _script(self, body: str) -> str:
        # Every script starts from where the last one left off (exports, cd) and records
        # where it ends, as one terminal session would.
        # (``set -e`` ends a failing script before the record: the page fails there anyway.)
        return (
            f"set -euo pipefail\n{body}\n"
            f'export -p > "{self._env_file}"; printf "cd %q\\n" "$PWD" >> "{self._env_file}"\n'
        )

    def _run(self, body: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", self._script(body)],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=dict(os.environ),
        )
        self._load_session()
        return done

    def _load_session(self) -> None:
        """Take over the environment and directory the last script ended with."""
        text = self._env_file.read_text()
        if not text:
            return
        dumped = subprocess.run(
            ["bash", "-c", f'source "{self._env_file}" 2>/dev/null; env -0; printf "\\0%s" "$PWD"'],
            capture_output=True,
            check=True,
            env={},
        ).stdout.decode()
        *pairs, cwd = dumped.split("\0")
        env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        for name in ("PWD", "OLDPWD", "SHLVL", "_"):
            env.pop(name, None)
        os.environ.clear()
        os.environ.update(env)
        if cwd and cwd != os.getcwd():
            os.chdir(cwd)
            sys.path.insert(0, cwd)

    def bash(self, block: Block) -> None:
        if block.marker == "background":
            self._start_background(block)
            return
        done = self._run(block.code)
        if done.returncode != 0:
            raise BlockFailed(
                block, f"exit status {done.returncode}\n{done.stdout}{done.stderr}".rstrip()
            )

    def console(self, block: Block) -> None:
        commands = console_commands(block)
        deadline = time.monotonic() + (RETRY_SECONDS if block.marker == "retry" else 0.0)
        while True:
            try:
                for command in commands:
                    done = self._run("{\n" + command.text + "\n} 2>&1")
                    actual = done.stdout.rstrip("\n").split("\n") if done.stdout.strip() else []
                    if done.returncode != 0:
                        raise BlockFailed(
                            block,
                            f"$ {command.text}\nexit status {done.returncode}\n{done.stdout}",
                            command.line,
                        )
                    if not output_matches(command.expected, actual):
                        raise BlockFailed(
                            block,
                            f"$ {command.text}\nexpected:\n"
                            + "\n".join(command.expected)
                            + "\ngot:\n"
                            + "\n".join(actual),
                            command.line,
                        )
                return
            except BlockFailed:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)

    def _start_background(self, block: Block) -> None:
        log = Path(tempfile.mkstemp(prefix="docs-background-", suffix=".log")[1])
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {block.code.strip()}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
            )
        self.background.append((block, process, log))
        # Ready once it says something (a worker logs worker_started, a server that it
        # listens), as a reader waits for the first line before typing on.
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BlockFailed(
                    block, f"exited with {process.returncode} at once:\n{log.read_text()}"
                )
            if log.stat().st_size:
                time.sleep(0.2)
                return
            time.sleep(0.05)
        raise BlockFailed(block, f"printed nothing in {READY_SECONDS}s")

    def stop_background(self) -> list[str]:
        """SIGTERM every background command; the problems, as messages."""
        problems = []
        for block, process, log in self.background:
            if process.poll() is not None:
                problems.append(
                    f"{block.where}: background command exited early with "
                    f"{process.returncode}:\n{log.read_text()}"
                )
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                problems.append(f"{block.where}: still running {STOP_SECONDS}s after SIGTERM")
                continue
            if process.returncode != 0:
                problems.append(
                    f"{block.where}: exited with {process.returncode} on SIGTERM:\n"
                    f"{log.read_text()}"
                )
        self.background.clear()
        return problems

    def close(self) -> None:
        try:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
            self._env_file.unlink(missing_ok=True)


def run(page: Path) -> list[str]:
    """Run the page's blocks; the problems found, as messages (empty: all good)."""
    session = Session(page)
    problems: list[str] = []
    try:
        for block in read_blocks(page, ROOT):
            if not block.executed:
                continue
            try:
                getattr(session, block.lang)(block)
            except BlockFailed as exc:
                problems.append(str(exc))
                break
            except BaseException:
                problems.append(
                    f"{block.where}: python block raised\n{traceback.format_exc()}".rstrip()
                )
                break
    finally:
        problems.extend(session.stop_background())
        session.close()
    return problems


def main() -> int:
    page = Path(sys.argv[1]).resolve()
    problems = run(page)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
