"""Small helpers shared by workflow tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from engine.records import Entry
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
