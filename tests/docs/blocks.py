"""The code blocks of a documentation page, and the conventions that say how each is run.

Every fenced block on a page under ``docs/`` is one of:

- ```` ```python ````: executed. The blocks of one page run in order in one namespace and one
  event loop, so a later block may use what an earlier one defined; top-level ``await`` is
  allowed. ```` ```python title="shop.py" ```` is also saved as ``shop.py`` in the page's
  working directory (where its shell commands run, and on ``sys.path``).
- ```` ```bash ````: executed with ``bash -euo pipefail`` in the page's working directory; it
  must exit 0. Shell blocks are one terminal session: what one ``export``s or ``cd``s into,
  the next (and the Python blocks after it) sees.
- ```` ```console ````: lines starting with ``$`` are commands (a trailing ``\\`` continues one
  on the next line), the lines after each its expected output (stdout and stderr). Each
  command must exit 0, and its output must match: ``...`` in a line matches any text, a line
  that is only ``...`` matches any number of lines.
- ```` ```text ````, ```` ```json ````, ```` ```toml ````, ```` ```yaml ````: shown, never run
  (output, file contents). A ```` ```text ```` block right after a Python block (nothing but
  blank lines between) is what that Python block prints, and is checked as a console
  command's output is. Any other language is refused, so an example cannot dodge the
  test by its label.

An HTML comment on the line before a block changes how it runs, visibly in the page source:

- ``<!-- not-executed: REASON -->``: skipped (installing packages, say). The only way to skip
  an executable block, and it must give its reason. A skipped ``bash`` block made only of
  ``export NAME=...`` lines must name variables the test sets itself (``HARNESS_SETS``).
- ``<!-- background -->`` (bash, one command): started and left running, as in a second
  terminal; once the page's last block ran it must still be running, and it is stopped
  with SIGTERM and must then exit 0.
- ``<!-- retry -->`` (console): run again until every output matches, for up to
  ``RETRY_SECONDS``: for a command that reads what a background worker is doing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

EXECUTED = frozenset({"python", "bash", "console"})
SHOWN = frozenset({"text", "json", "toml", "yaml"})
MARKERS = ("not-executed", "background", "retry")
HARNESS_SETS = frozenset({"DURABLE_STORE", "DURABLE_NAMESPACE", "PYTHONPATH"})
"""What the test sets in every page's environment (its own database, a fresh schema, the
page's directory first on the import path), as a reader sets them in Getting started."""
RETRY_SECONDS = 20.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TITLE = re.compile(r"""title=["']([^"']+)["']""")
_MARKER = re.compile(r"^<!--\s*(?P<name>[a-z-]+)\s*(?::\s*(?P<reason>.*?))?\s*-->$")
_EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, first code line (1-based), code and options."""

    page: str
    lang: str
    line: int
    code: str
    title: str | None = None
    marker: str | None = None
    reason: str | None = None
    expected: tuple[str, ...] | None = None
    """A Python block: what it must print (the text block right after it), if shown."""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def executed(self) -> bool:
        return self.lang in EXECUTED and self.marker != "not-executed"


class PageError(Exception):
    """Raised when a page breaks the conventions above."""


def read_blocks(path: Path, root: Path) -> list[Block]:
    """Every fenced block of the page at ``path``, in order; ``PageError`` for a block that
    breaks a convention (unknown language, a skip without a reason, a misplaced marker)."""
    page = str(path.relative_to(root))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    closed_at = -1  # the line index of the last block's closing fence
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if opened is None:
            i += 1
            continue
        indent, fence, info = opened["indent"], opened["fence"], opened["info"].strip()
        lang = info.split()[0] if info else ""
        title_match = _TITLE.search(info)
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            text = lines[j]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            j += 1
        if j == len(lines):
            raise PageError(f"{page}:{i + 1}: a code block is never closed")
        marker, reason = _marker_before(lines, i)
        block = Block(
            page,
            lang,
            i + 2,
            "\n".join(body) + "\n",
            title_match[1] if title_match else None,
            marker,
            reason,
        )
        _check(block)
        previous = blocks[-1] if blocks else None
        if (
            block.lang == "text"
            and previous is not None
            and previous.lang == "python"
            and all(not text.strip() for text in lines[closed_at + 1 : i])
        ):
            expected = tuple(line.rstrip() for line in body)
            blocks[-1] = replace(previous, expected=expected)
        blocks.append(block)
        closed_at = j
        i = j + 1
    return blocks


def _marker_before(lines: list[str], fence_index: int) -> tuple[str | None, str | None]:
    k = fence_index - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    if k < 0:
        return None, None
    found = _MARKER.match(lines[k].strip())
    if found is None or found["name"] not in MARKERS:
        return None, None
    return found["name"], found["reason"]


def _check(block: Block) -> None:
    where = block.where
    if block.lang not in EXECUTED | SHOWN:
        raise PageError(
            f"{where}: code block language {block.lang!r}; use one of "
            f"{', '.join(sorted(EXECUTED | SHOWN))}"
        )
    if block.marker is None:
        return
    if block.lang not in EXECUTED:
        raise PageError(f"{where}: <!-- {block.marker} --> on a {block.lang} block, never run")
    if block.marker == "not-executed":
        if not block.reason:
            raise PageError(f"{where}: <!-- not-executed: REASON --> needs its reason")
        exports = [_EXPORT.match(line) for line in block.code.splitlines() if line.strip()]
        if block.lang == "bash" and exports and all(exports):
            names = {match[1] for match in exports if match}
            if not names <= HARNESS_SETS:
                raise PageError(
                    f"{where}: skips setting {sorted(names - HARNESS_SETS)}, which the test "
                    "does not set for the page"
                )
    elif block.marker == "background":
        commands = [line for line in block.code.splitlines() if line.strip()]
        if block.lang != "bash" or len(commands) != 1:
            raise PageError(f"{where}: <!-- background --> takes a bash block of one command")
    elif block.marker == "retry" and block.lang != "console":
        raise PageError(f"{where}: <!-- retry --> applies to console blocks")


@dataclass(frozen=True)
class Command:
    """One ``$`` command of a console block and the output it must print."""

    line: int
    text: str
    expected: list[str]


def console_commands(block: Block) -> list[Command]:
    """The commands of a console block with their expected output."""
    commands: list[Command] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if line.strip():
                raise PageError(f"{block.page}:{block.line + i}: output before any $ command")
            i += 1
            continue
        start = i
        text = line[2:]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + "\n" + lines[i]
        i += 1
        expected: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i].rstrip())
            i += 1
        while expected and not expected[-1]:
            expected.pop()
        commands.append(Command(block.line + start, text, expected))
    return commands


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` lines match ``expected`` (``...`` wildcards, see the module)."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head == "...":
        return any(output_matches(rest, actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("..."))
    return re.fullmatch(pattern, actual[0].rstrip()) is not None and output_matches(
        rest, actual[1:]
    )
