"""Opening a store by URL: ``_STORES`` is the one place that knows the stores.

A store's module is imported by name only when asked for, so ``engine`` never imports
``drivers`` (nor their client libraries) up front. Each store's ``from_url`` says what its
URL holds and what ``namespace`` means for it (the Redis key prefix, the Postgres schema;
memory and LevelDB have none).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from engine.constants import DEFAULT_WORKER_POLL_INTERVAL
from engine.runner import WorkflowFn
from engine.store import WorkerStore

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
    if os.getcwd() not in sys.path and "" not in sys.path:
        # As ``python -m`` would: the user's module in the current directory is found
        # (a console script's path starts at its own bin directory).
        sys.path.insert(0, os.getcwd())
    registry: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        registry = getattr(registry, part)
    if not isinstance(registry, Mapping) or not all(
        isinstance(name, str) and callable(fn) for name, fn in registry.items()
    ):
        raise TypeError(f"{spec} must be a dict of workflow name -> async function")
    return registry
