"""Stored values as text a page can hold: pretty, cut short, and never a crash.

A workflow's input, output and step outputs can be anything msgpack holds (megabytes of
text, bytes, maps keyed by tuples, a hundred levels of nesting). The page shows a readable
head of each and says when it was cut; the whole value stays in the store (``show --json``).
Rendering stops as soon as the budget is spent, so a huge value costs no more than a small
one, and a value that cannot be shown becomes a note instead of a server error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

FULL_LIMIT = 20_000  # characters of one value on its own (input, output, a step's output)
PREVIEW_LIMIT = 96  # characters of a one-line preview (a table cell, a tree row)
MAX_NESTING = 24  # levels shown before "..."; the codec allows deeper values
_BYTES_SHOWN = 48


@dataclass(frozen=True)
class Shown:
    """A value as text; ``note`` says why the text is not the whole value (empty if it is)."""

    text: str
    note: str = ""

    @property
    def cut(self) -> bool:
        return bool(self.note)


class _Full(Exception):
    """Raised inside the writer when the budget is spent; stops the walk at once."""


class _Writer:
    """JSON-like text of a value, indented or on one line, within ``limit`` characters."""

    def __init__(self, limit: int, indent: int | None) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit
        self.indent = indent
        self.too_deep = False

    def put(self, text: str) -> None:
        room = self.limit - self.size
        if len(text) > room:
            self.parts.append(text[: max(room, 0)])
            self.size = self.limit
            raise _Full
        self.parts.append(text)
        self.size += len(text)

    def newline(self, depth: int) -> None:
        if self.indent is not None:
            self.put("\n" + " " * (self.indent * depth))

    def value(self, value: Any, depth: int) -> None:
        if depth > MAX_NESTING:
            self.too_deep = True
            self.put("...")
        elif value is None or isinstance(value, bool):
            self.put({None: "null", True: "true", False: "false"}[value])
        elif isinstance(value, int):
            self.put(str(value))
        elif isinstance(value, float):
            self.put(repr(value) if math.isfinite(value) else str(value))
        elif isinstance(value, str):
            self.string(value)
        elif isinstance(value, bytes | bytearray | memoryview):
            self.put(_bytes_text(bytes(value[: _BYTES_SHOWN + 1]), len(value)))
        elif isinstance(value, dict):
            self.mapping(value, depth)
        elif isinstance(value, list | tuple):
            self.sequence(value, depth)
        else:  # msgpack extension types and whatever a custom codec may give back
            text = repr(value)
            self.put(f"<{type(value).__name__} {text[: self.limit]}>")

    def string(self, text: str) -> None:
        # Only the head can be shown: quoting all of a 100 MB string would cost 100 MB.
        head = text[: self.limit - self.size + 1]
        quoted = json.dumps(head, ensure_ascii=False)
        self.put(quoted if len(head) == len(text) else quoted[:-1])
        if len(head) < len(text):
            raise _Full

    def mapping(self, value: dict[Any, Any], depth: int) -> None:
        if not value:
            self.put("{}")
            return
        self.put("{")
        for index, (key, item) in enumerate(value.items()):
            self.put("," if index else "")
            self.newline(depth + 1)
            if isinstance(key, str):
                self.string(key)
            else:
                self.value(key, depth + 1)
            self.put(": ")
            self.value(item, depth + 1)
        self.newline(depth)
        self.put("}")

    def sequence(self, value: list[Any] | tuple[Any, ...], depth: int) -> None:
        if not value:
            self.put("[]")
            return
        self.put("[")
        for index, item in enumerate(value):
            self.put("," if index else "")
            self.newline(depth + 1)
            self.value(item, depth + 1)
        self.newline(depth)
        self.put("]")


def show(value: Any, limit: int = FULL_LIMIT) -> Shown:
    """``value`` as indented JSON-like text of at most ``limit`` characters."""
    return _render(value, limit, indent=2)


def preview(value: Any, limit: int = PREVIEW_LIMIT) -> Shown:
    """``value`` on one line, at most ``limit`` characters (an ellipsis when cut)."""
    shown = _render(value, limit, indent=None)
    return Shown(shown.text + "..." if shown.cut else shown.text, shown.note)


def _render(value: Any, limit: int, indent: int | None) -> Shown:
    writer = _Writer(limit, indent)
    try:
        writer.value(value, 0)
    except _Full:
        return Shown("".join(writer.parts), f"cut at {limit:,} characters")
    except Exception as exc:  # a value that cannot be shown must not fail the page
        return Shown("", f"this value cannot be shown ({type(exc).__name__})")
    if writer.too_deep:
        return Shown("".join(writer.parts), f"nested deeper than {MAX_NESTING} levels")
    return Shown("".join(writer.parts))


def _bytes_text(head: bytes, size: int) -> str:
    shown = head[:_BYTES_SHOWN].hex(" ")
    more = " ..." if size > _BYTES_SHOWN else ""
    return f"<{size:,} bytes: {shown}{more}>"


def clip(text: str, limit: int = FULL_LIMIT) -> Shown:
    """Plain text (a traceback) as it is, cut to ``limit`` characters."""
    if len(text) <= limit:
        return Shown(text)
    return Shown(text[:limit], f"cut at {limit:,} characters of {len(text):,}")
