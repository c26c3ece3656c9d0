"""Small helpers shared by workflow tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any


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
