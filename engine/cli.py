"""``python -m engine worker``: run a Worker in its own process, logging JSON lines.

The store is chosen by URL scheme in ``_STORES``, the one place that knows the stores, and
its module is imported by name only when asked for, so ``engine`` never imports ``drivers``
(nor their client libraries) up front. Each store's ``from_url`` says what its URL holds and
what ``--namespace`` means for it (the Redis key prefix, the Postgres schema; memory and
LevelDB have none).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio

from engine.constants import (
    DEFAULT_HEARTBEAT,
    DEFAULT_LEASE,
    DEFAULT_WORKER_CONCURRENCY,
    DEFAULT_WORKER_POLL_INTERVAL,
)
from engine.errors import StorageError
from engine.runner import WorkflowFn
from engine.store import WorkerStore
from engine.worker import Worker

# URL scheme -> "module:Class" of a store with ``async from_url``. Adding a store is one line.
_STORES = {
    "redis": "drivers.redis:RedisStore",
    "rediss": "drivers.redis:RedisStore",
    "postgresql": "drivers.postgres:PostgresStore",
    "postgres": "drivers.postgres:PostgresStore",
    "leveldb": "drivers.leveldb:LevelDBStore",
    "memory": "drivers.memory:MemoryStore",
}


@asynccontextmanager
async def open_store(
    url: str,
    *,
    namespace: str | None = None,
    worker_poll_interval: float = DEFAULT_WORKER_POLL_INTERVAL,
) -> AsyncIterator[WorkerStore]:
    """Open the store a URL names and close it on exit.

    ``namespace`` is the Redis key prefix or the Postgres schema (each driver's default
    when None); the other stores have none and refuse one.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _STORES:
        known = ", ".join(f"{s}://" for s in _STORES)
        raise ValueError(f"unknown store URL scheme in {url!r}; expected one of {known}")
    module_name, _, class_name = _STORES[scheme].partition(":")
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    store: WorkerStore = await cls.from_url(
        url, namespace=namespace, worker_poll_interval=worker_poll_interval
    )
    try:
        yield store
    finally:
        await store.close()


def load_registry(spec: str) -> Mapping[str, WorkflowFn]:
    """Import ``module:attribute`` and check it is a dict of workflow name -> function."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--app must look like module:registry, got {spec!r}")
    registry: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        registry = getattr(registry, part)
    if not isinstance(registry, Mapping) or not all(
        isinstance(name, str) and callable(fn) for name, fn in registry.items()
    ):
        raise TypeError(f"{spec} must be a dict of workflow name -> async function")
    return registry


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, workflow_id, worker, then the details."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "event": event or "log",
            "workflow_id": getattr(record, "workflow_id", None),
            "worker": getattr(record, "worker", None),
        }
        fields = getattr(record, "fields", None)
        if event is None:
            line["logger"] = record.name
            line["message"] = record.getMessage()
        elif isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="claim and run due workflows until SIGTERM")
    worker.add_argument("--store", required=True, help="redis://, postgresql://, leveldb:///path")
    worker.add_argument("--app", required=True, help="module:registry, a dict name -> fn")
    worker.add_argument("--concurrency", type=int, default=DEFAULT_WORKER_CONCURRENCY)
    worker.add_argument("--lease", type=float, default=DEFAULT_LEASE, help="seconds")
    worker.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT, help="seconds")
    worker.add_argument("--namespace", help="Redis key prefix / Postgres schema")
    worker.add_argument(
        "--poll",
        type=float,
        default=DEFAULT_WORKER_POLL_INTERVAL,
        help="seconds between polls; shorter sleeps wait in memory",
    )
    worker.add_argument("--log-level", default="INFO")
    return parser


async def _serve(args: argparse.Namespace, registry: Mapping[str, WorkflowFn]) -> None:
    async with open_store(
        args.store, namespace=args.namespace, worker_poll_interval=args.poll
    ) as store:
        worker = Worker(
            store, registry, args.concurrency, args.lease, args.heartbeat, handle_signals=True
        )
        await worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engine``; returns the process exit code."""
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    log = logging.getLogger("engine.cli")
    try:
        registry = load_registry(args.app)
        anyio.run(_serve, args, registry)
    except (ValueError, TypeError, ImportError, AttributeError, StorageError) as exc:
        log.error("worker could not run: %s: %s", type(exc).__name__, exc)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
