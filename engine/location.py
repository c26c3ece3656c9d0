"""Locations: where an operation sits in the workflow, as a path of interned names.

A location is a tuple of segments: a name index (``int``) for a named operation or branch,
or a loop-iteration marker, the 1-tuple ``(iteration,)``. Names are interned to small ints
so keys stay short however long the user's names are; storage persists a new name in the
same batch as the entry that introduced it.
"""

from __future__ import annotations

from engine.keys import Location

ROOT: Location = ()


class NameRegistry:
    """Names interned to indices (storage writes a new name's record with its entry)."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self.by_name: dict[str, int] = {}  # read directly on the hot path (``Storage.intern``)

    def __len__(self) -> int:
        return len(self._names)

    def load(self, index: int, name: str) -> None:
        if index == len(self._names):
            self._names.append(name)  # names are listed in index order: the usual case
        else:
            self._names.extend([""] * (index + 1 - len(self._names)))
            self._names[index] = name
        self.by_name[name] = index

    def add(self, name: str) -> int:
        """Give a new name the next index."""
        index = len(self._names)
        self._names.append(name)
        self.by_name[name] = index
        return index

    def name(self, index: int) -> str:
        return self._names[index] if index < len(self._names) else f"<unknown name #{index}>"

    def render(self, location: Location) -> str:
        """``outer/~3/inner`` for humans: names joined by ``/``, iterations as ``~n``."""
        parts = [
            f"~{segment[0]}" if isinstance(segment, tuple) else self.name(segment)
            for segment in location
        ]
        return "/".join(parts) or "<workflow>"
