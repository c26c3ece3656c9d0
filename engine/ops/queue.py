"""``ctx.queue.next``: wait for messages and consume them with the entry that records them.

Messages stay in the store until the wait is satisfied (``count`` reached or the deadline
passed); then they are deleted in the same batch that records their payloads in history, so
a crash either leaves both (the wait is replayed) or neither (the messages are delivered
again to the same wait). Never lost, never delivered twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from engine.records import MessageEntry, MessageRecord
from engine.run import Run
from engine.site import S, Site


def validate(
    run: Run, name: str, names: Sequence[str] | None, count: int, timeout: float | None
) -> frozenset[str] | None:
    """The arguments of ``ctx.queue.next``; returns the wanted names (None: any)."""
    where = f"workflow {run.workflow_id!r} queue.next {name!r}"
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where}: count must be an int >= 1, got {count!r}")
    if timeout is not None and (
        not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout < 0
    ):
        raise ValueError(f"{where}: timeout must be None or a finite number >= 0, got {timeout!r}")
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names) or not names:
        raise ValueError(
            f"{where}: names must be None or a non-empty list of message names, got {names!r}"
        )
    return frozenset(names)


async def run_next(
    site: Site[S], names: frozenset[str] | None, count: int, timeout: float | None
) -> list[Any]:
    with site:
        storage = site.storage
        if storage.owed:
            await storage.flush()  # an earlier step's output lands first
        entry = site.node.entry
        if type(entry) is MessageEntry:
            if entry.done:
                return list(entry.payloads or ())
            deadline = entry.deadline
        else:
            deadline = None if timeout is None else time.time() + timeout
            wanted = None if names is None else sorted(names)
            site.record(MessageEntry(site.pos, deadline, names=wanted))

        def matching() -> list[MessageRecord]:
            found = [m for m in storage.messages if names is None or m.name in names]
            return found[:count]

        await site.run.scheduler.wait(
            deadline=deadline,
            ready=lambda: len(matching()) >= count,
            wants_messages=True,
            names=names,
        )
        taken = matching()
        for message in taken:
            storage.consume(message)
        payloads = [message.data for message in taken]
        wanted = None if names is None else sorted(names)
        site.record(MessageEntry(site.pos, deadline, True, payloads, wanted))
        return payloads


class Queue:
    """``ctx.queue``: waits for messages sent with ``handle.message(name, data)``.

    Messages wait in the store until a wait takes them; each is taken once, oldest first,
    in the same atomic write that records it in the workflow's history.
    """

    def __init__(self, run: Run, begin: Callable[[str, str], Site[Any]]) -> None:
        self._run = run
        self._begin = begin  # the context's guards: name, order, history at this position

    def next(
        self,
        name: str,
        *,
        names: Sequence[str] | None = None,
        count: int = 1,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, list[Any]]:
        """Wait for ``count`` messages whose name is in ``names`` (any when None), FIFO.

        Args:
            name: the wait's own operation name, unique in its scope.
            names: the message names to take; None takes messages of any name.
            count: how many messages to wait for, an ``int >= 1``.
            timeout: seconds to wait at most, counted from the first time this wait
                started (recorded, so a restart does not extend it); None waits for ever,
                ``0`` takes only what is already stored.

        Returns:
            The data of the messages taken, oldest first: ``count`` of them, or fewer
                (maybe none) when the timeout passed first.

        Raises:
            ValueError: when called, for a ``count``, ``timeout`` or ``names`` out of range
                (``names`` must be a non-empty list of non-empty strings, not a string), or
                an empty or non-string ``name``.
            HistoryDivergedError: when called, if ``name`` is used twice in this scope or
                history holds another operation at this position.
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
        wanted = validate(self._run, name, names, count, timeout)
        return run_next(self._begin(name, "message"), wanted, count, timeout)
