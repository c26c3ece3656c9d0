"""Small helpers shared by workflow tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from engine.records import Entry, StepEntry
from engine.storage import Storage


class Calls:
    """Counts how many times each step function really ran (replay must not call it)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def fn(self, name: str, value: Any = None) -> Callable[[], Any]:
        def call() -> Any:
            self.counts[name] += 1
            return name if value is None else value

        return call

    def __getitem__(self, name: str) -> int:
        return self.counts[name]


async def recorded_history(driver: Any, workflow_id: str) -> dict[str, Entry | None]:
    """Every location that holds an entry or metadata, by rendered path (``j/a/x``): its
    entry (None for a location with metadata only)."""
    storage = Storage(driver, workflow_id)
    await storage.load()
    return {
        storage.names.render(location): node.entry
        for location, node in storage.walk()
        if node.entry is not None or node.meta is not None
    }


async def completion_order(driver: Any, workflow_id: str) -> list[str]:
    """The paths of the compensable steps whose history is kept, in the order they completed
    (sync step bodies run in threads, so the order of their effects may differ)."""
    storage = Storage(driver, workflow_id)
    await storage.load()
    done = [
        (node.entry.seq, storage.names.render(location))
        for location, node in storage.walk()
        if isinstance(node.entry, StepEntry) and node.entry.done and node.entry.seq is not None
    ]
    return [path for _, path in sorted(done)]
