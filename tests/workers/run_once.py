"""A process that runs one workflow with ``run_workflow`` on a shared store, then prints
how it went as one JSON line: ``python -m tests.workers.run_once URL NAMESPACE ID SPEC``.

Used by the one-writer tests: two of these at once on one id, or one beside a Worker.
"""

from __future__ import annotations

import json
import sys

import anyio

from engine import WorkflowBusyError, run_workflow
from engine.cli import open_store
from tests.workers.app import mixed


async def main(url: str, namespace: str, workflow_id: str, spec: str) -> None:
    async with open_store(url, namespace=namespace, worker_poll_interval=0.3) as store:
        try:
            result = await run_workflow(
                workflow_id, mixed, json.loads(spec), store.driver(workflow_id)
            ).result()
        except WorkflowBusyError as exc:
            print(json.dumps({"outcome": "busy", "error": str(exc)}), flush=True)
            return
        print(json.dumps({"outcome": result.state.value}), flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:5])
