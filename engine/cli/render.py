"""What the commands print: Rich tables and trees for people, one JSON document for programs.

Rich colours only on a terminal; elsewhere the output is plain text, as wide as it needs to
be (no wrapping at 80 columns), so it can be piped into ``grep`` or a file.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from engine.describe import HistoryEntry, WorkflowDescription, WorkflowInfo
from engine.state import ErrorInfo

# Beyond this a value in a table or tree is cut short; ``show --json`` has it whole.
_SHORT_VALUE = 80
_STATE_STYLES = {
    "pending": "cyan",
    "running": "blue",
    "sleeping": "magenta",
    "completed": "green",
    "failed": "red",
    "rolling_back": "yellow",
    "cancelled": "dim",
}


def console() -> Console:
    """A console on stdout: coloured on a terminal, plain and unwrapped elsewhere."""
    out = Console(highlight=False)
    if out.is_terminal:
        return out
    return Console(highlight=False, width=10_000, no_color=True)


def print_human(*renderables: Any) -> None:
    """Tables and trees on stdout; off a terminal without the padding Rich adds to lines."""
    out = console()
    if out.is_terminal:
        out.print(*renderables)
        return
    with out.capture() as captured:
        out.print(*renderables)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_json(document: Any) -> None:
    """One JSON document on stdout; values JSON cannot hold are written as their text."""
    sys.stdout.write(json.dumps(document, default=str) + "\n")


def info_document(info: WorkflowInfo | WorkflowDescription) -> dict[str, Any]:
    """A workflow's fields for ``--json``: datetimes are epoch floats, as stored."""
    return dataclasses.asdict(info)


def when(timestamp: float | None) -> str:
    """An epoch time as local time to the second; empty when there is none."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


def workflows_table(infos: list[WorkflowInfo]) -> Table:
    """``list``: one row per workflow, in the order given (newest first)."""
    # Off a terminal, no rule under the header: the lines are plain columns for grep and awk.
    ruled = console().is_terminal
    table = Table(box=box.SIMPLE_HEAD if ruled else None, show_edge=False, pad_edge=False)
    for column in ("id", "name", "state", "wake at", "updated at"):
        table.add_column(column, no_wrap=True)
    for info in infos:
        table.add_row(
            Text(info.workflow_id),
            Text(info.name),
            Text(info.state.value, style=_STATE_STYLES.get(info.state.value, "")),
            when(info.wake_at),
            when(info.updated_at),
        )
    return table


def description_table(desc: WorkflowDescription) -> Table:
    """``show``: the workflow's fields, one per row."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    rows: list[tuple[str, Text | str]] = [
        ("id", Text(desc.workflow_id)),
        ("name", Text(desc.name)),
        ("state", Text(desc.state.value, style=_STATE_STYLES.get(desc.state.value, ""))),
        ("wake at", when(desc.wake_at)),
        ("updated at", when(desc.updated_at)),
        ("input", Text(short(desc.input))),
        ("output", Text(short(desc.output))),
        ("error", Text(error_line(desc.error), style="red")),
        ("waits for", Text(", ".join(desc.waiting_for_messages or []))),
    ]
    for label, value in rows:
        table.add_row(label, value)
    return table


def history_tree(history: list[HistoryEntry]) -> Tree:
    """``show``: the history nested by location path (``a/b/c`` under ``a/b`` under ``a``)."""
    root = Tree(Text("history", style="bold"))
    nodes: dict[str, Tree] = {}
    for entry in history:
        segments = entry.path.split("/")
        parent = root
        # An entry's scope is listed before what it holds; a scope without an entry of its
        # own (a loop's iteration) still gets a node so its steps nest under it.
        for depth in range(1, len(segments)):
            prefix = "/".join(segments[:depth])
            if prefix not in nodes:
                nodes[prefix] = parent.add(Text(segments[depth - 1], style="dim"))
            parent = nodes[prefix]
        nodes[entry.path] = parent.add(_entry_label(segments[-1], entry))
    if not history:
        root.add(Text("(empty)", style="dim"))
    return root


def _entry_label(segment: str, entry: HistoryEntry) -> Text:
    label = Text(segment, style="bold")
    label.append(f"  {entry.kind} ")
    label.append(entry.status, style=_STATE_STYLES.get(entry.status, ""))
    if entry.attempts:
        label.append(f"  attempts={entry.attempts}")
    if entry.error is not None:
        label.append(f"  {error_line(entry.error)}", style="red")
    elif entry.output is not None:
        label.append(f"  -> {short(entry.output)}", style="dim")
    return label


def short(value: Any) -> str:
    """A value as JSON, cut to ``_SHORT_VALUE`` characters; empty for None."""
    if value is None:
        return ""
    text = json.dumps(value, default=str)
    return text if len(text) <= _SHORT_VALUE else text[: _SHORT_VALUE - 3] + "..."


def error_line(error: ErrorInfo | None) -> str:
    """``Type: message`` of a recorded error; empty when there is none."""
    return "" if error is None else f"{error.type}: {error.message}"
