"""Stored values as page text (``engine.dashboard.values``): readable, bounded, never a crash;
and the history laid out as a tree and a timeline (``engine.dashboard.history``)."""

from __future__ import annotations

from typing import Any

from engine.dashboard import history, values
from engine.dashboard.pages import relative
from engine.describe import HistoryEntry
from engine.state import ErrorInfo


def test_a_value_is_indented_json_like_text() -> None:
    shown = values.show({"id": "o-1", "items": [1, 2.5, None, True], "empty": {}})
    assert shown.text == (
        '{\n  "id": "o-1",\n  "items": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n'
        '  "empty": {}\n}'
    )
    assert not shown.cut and shown.note == ""
    assert values.preview({"a": [1, 2]}).text == '{"a": [1,2]}'


def test_what_json_cannot_hold_is_still_shown() -> None:
    shown = values.show({(1, "t"): b"\x00\xff", 3: float("nan"), "inf": float("-inf")})
    assert (
        shown.text == '{\n  [\n    1,\n    "t"\n  ]: <2 bytes: 00 ff>,\n  3: nan,\n  "inf": -inf\n}'
    )

    class Odd:
        def __repr__(self) -> str:
            return "Odd()"

    assert values.preview([Odd()]).text == "[<Odd Odd()>]"


def test_big_values_are_cut_and_say_so() -> None:
    huge = values.show("x" * 10_000_000)
    assert len(huge.text) == values.FULL_LIMIT and huge.note == "cut at 20,000 characters"
    many = values.show(list(range(1_000_000)), limit=100)
    assert len(many.text) == 100 and many.cut
    line = values.preview({"text": "y" * 500})
    assert line.text.endswith("...") and len(line.text) == values.PREVIEW_LIMIT + 3
    blob = values.show(b"\x01" * 100_000)
    assert blob.text.startswith("<100,000 bytes: 01 01") and blob.text.endswith(" ...>")


def test_deep_values_stop_at_a_depth() -> None:
    deep: Any = 0
    for _ in range(90):
        deep = {"d": deep}
    shown = values.show(deep)
    assert shown.note == f"nested deeper than {values.MAX_NESTING} levels"
    assert "..." in shown.text


def test_a_value_that_cannot_be_shown_becomes_a_note() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    shown = values.show({"x": Broken()})
    assert shown.text == "" and shown.note == "this value cannot be shown (RuntimeError)"


def test_plain_text_is_clipped() -> None:
    assert values.clip("short").text == "short"
    long = values.clip("t" * 50, limit=10)
    assert long.text == "t" * 10 and long.note == "cut at 10 characters of 50"


def test_relative_times() -> None:
    assert relative(None) == ""
    assert relative(100.0, now=100.4) == "now"
    assert relative(100.0, now=130.0) == "30 s ago"
    assert relative(100.0 + 2 * 3_600 + 5, now=100.0) == "in 2 h"
    assert relative(0.0, now=3 * 86_400) == "3 d ago"


def _entries() -> list[HistoryEntry]:
    boom = ErrorInfo("ConnectionError", "timed out", "")
    return [
        HistoryEntry("charge", "step", "completed", 3, {"cents": 1}),
        HistoryEntry("pack", "join", "completed"),
        HistoryEntry("pack/label/print", "step", "completed", 1, "L"),
        HistoryEntry("pack/invoice/pdf", "step", "completed", 1, "I"),
        HistoryEntry("pack/invoice/mail", "step", "retrying", 2, None, boom),
        HistoryEntry("poll", "loop", "running"),
        HistoryEntry("poll/~0/fetch", "step", "completed", 1, 0),
        HistoryEntry("poll/~1/fetch", "step", "exhausted", 4, None, boom),
        HistoryEntry("nap", "sleep", "sleeping"),
    ]


def test_the_tree_nests_entries_by_path() -> None:
    root = history.tree(_entries())
    assert [node.segment for node in root.children] == ["charge", "pack", "poll", "nap"]
    pack = root.children[1]
    assert pack.entry is not None and pack.entry.kind == "join"
    label, invoice = pack.children
    assert (label.segment, label.entry) == ("label", None)  # a branch: a scope, no entry
    assert [node.path for node in invoice.children] == ["pack/invoice/pdf", "pack/invoice/mail"]
    assert [node.segment for node in root.children[2].children] == ["~0", "~1"]


def test_the_timeline_draws_branches_side_by_side_in_order() -> None:
    drawn = history.timeline(history.tree(_entries()))
    bars = {bar.entry.path: bar for bar in drawn.bars}
    lanes = [lane.label for lane in drawn.lanes]
    assert lanes == ["workflow", "pack/label", "pack/invoice", "poll iterations"]

    assert (bars["charge"].lane, bars["charge"].start, bars["charge"].span) == (0, 0, 1)
    assert bars["pack/label/print"].start == bars["pack/invoice/pdf"].start == 1
    assert bars["pack/invoice/mail"].start == 2  # after pdf, in its own branch
    assert (bars["pack"].start, bars["pack"].span) == (1, 2)  # as long as its longest branch
    assert [bars[p].start for p in ("poll/~0/fetch", "poll/~1/fetch")] == [3, 4]
    assert bars["poll/~0/fetch"].lane == bars["poll/~1/fetch"].lane == 3
    assert (bars["poll"].start, bars["poll"].span) == (3, 2)
    assert bars["nap"].start == 5 and drawn.columns == 6

    assert bars["charge"].pips == ["failed", "failed", "ok"] and bars["charge"].retries == 2
    assert bars["pack/invoice/mail"].pips == ["failed", "failed", "running"]
    assert bars["poll/~1/fetch"].pips == ["failed"] * 4
    assert bars["nap"].pips == [] and bars["pack"].pips == []


def test_a_long_history_is_drawn_in_part() -> None:
    entries = [HistoryEntry(f"s{i}", "step", "completed", 1) for i in range(3_000)]
    root = history.tree(entries)
    assert len(root.children) == history.MAX_ENTRIES
    assert history.timeline(root).columns == history.MAX_ENTRIES
