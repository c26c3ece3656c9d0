"""Decides, for one run, when waiting operations wait in memory and when the run yields.

Every task of a run (the workflow body, each join or race branch) is either *active* or
*parked* in ``wait`` (a sleep, a message wait, a retry backoff). A parked operation waits in
memory with its own deadline timer, so a short sleep or a race's timeout branch fires while
siblings work. Only when nothing is active does the coordinator decide:

- yield mode: if the earliest deadline is further away than the driver's poll interval, look
  once more for messages and otherwise *suspend*: every parked operation raises
  ``SuspendSignal`` and the runner records the earliest deadline as the alarm;
- live mode: flush what is pending and arm the alarm (so a crash is resumed by whoever owns
  the store), then keep waiting for deadlines and message notifications.

Eviction and cancellation wake every parked operation, which then raises ``EvictedError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio

from engine.errors import EvictedError, SuspendSignal

Mode = Literal["yield", "live"]


class _Waiter:
    __slots__ = ("deadline", "event", "names", "wants_messages")

    def __init__(
        self, deadline: float | None, wants_messages: bool, names: frozenset[str] | None
    ) -> None:
        self.deadline = deadline
        self.wants_messages = wants_messages
        self.names = names  # the message names it waits for; None: any
        self.event = anyio.Event()


class Scheduler:
    """Active/parked accounting and the yield decision for one run."""

    def __init__(
        self,
        mode: Mode,
        poll_interval: float,
        refresh_messages: Callable[[], Awaitable[bool]],
        on_live_idle: Callable[[float | None], Awaitable[None]],
        message_poll: bool,
    ) -> None:
        self.mode = mode
        self.poll_interval = poll_interval
        self._refresh_messages = refresh_messages
        self._on_live_idle = on_live_idle
        # Live mode without a driver wake-up hook re-reads messages every poll interval.
        self.message_poll = message_poll and mode == "live"
        self.active = 0
        self._waiters: set[_Waiter] = set()
        self._idle = anyio.Event()
        self.suspended = False
        self.suspend_deadline: float | None = None
        self.waiting_for: list[str] | None = None  # message names when suspended; "*": any
        self.stopped = False

    # Accounting

    def enter(self, count: int = 1) -> None:
        self.active += count

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def check_stop(self) -> None:
        if self.stopped:
            raise EvictedError("the workflow was evicted or cancelled")

    def stop(self) -> None:
        """Evict or cancel: every parked and every next operation raises ``EvictedError``."""
        self.stopped = True
        self._wake(lambda _: True)

    # Waiting

    async def wait(
        self,
        deadline: float | None,
        ready: Callable[[], bool] = lambda: False,
        wants_messages: bool = False,
        names: frozenset[str] | None = None,
    ) -> None:
        """Return once ``ready()`` or ``deadline`` passed; raises if the run yields or stops."""
        while True:
            self.check_stop()
            if ready():
                return
            now = time.time()
            if deadline is not None and now >= deadline:
                return
            if self.suspended:
                raise SuspendSignal()
            waiter = _Waiter(deadline, wants_messages, names)
            timeout = math.inf if deadline is None else deadline - now
            if self.message_poll and wants_messages:
                timeout = min(timeout, self.poll_interval)
            self._waiters.add(waiter)
            self.leave()
            try:
                with anyio.move_on_after(timeout):
                    await waiter.event.wait()
            finally:
                self._waiters.discard(waiter)
                self.enter()
            if self.message_poll and wants_messages and not waiter.event.is_set():
                await self._refresh_messages()

    def _wake(self, which: Callable[[_Waiter], bool]) -> None:
        for waiter in list(self._waiters):
            if which(waiter):
                waiter.event.set()

    def wake_all(self) -> None:
        """Make every waiter re-check its condition (a sleep goes back to its deadline)."""
        self._wake(lambda _: True)

    async def notify_messages(self) -> None:
        """A message was written for this workflow: re-read messages, wake message waiters."""
        if await self._refresh_messages():
            self._wake(lambda w: w.wants_messages)

    # The yield decision

    async def coordinate(self) -> None:
        """Runs beside the workflow; acts each time every task of the run is parked."""
        while True:
            await self._idle.wait()
            self._idle = anyio.Event()
            if self.active == 0 and self._waiters and not self.stopped:
                await self._on_idle()

    async def _on_idle(self) -> None:
        deadlines = [w.deadline for w in self._waiters if w.deadline is not None]
        earliest = min(deadlines) if deadlines else None
        wants_messages = any(w.wants_messages for w in self._waiters)
        if self.mode == "live":
            await self._on_live_idle(earliest)
            return
        if earliest is not None and earliest - time.time() <= self.poll_interval:
            return  # short enough to wait in memory: the waiters' own timers fire
        if wants_messages:
            if await self._refresh_messages():
                self._wake(lambda w: w.wants_messages)
                return
            if self.active != 0:
                return
        self.suspended = True
        self.suspend_deadline = earliest
        self.waiting_for = _message_names(self._waiters)
        self._wake(lambda _: True)


def _message_names(waiters: set[_Waiter]) -> list[str] | None:
    """The sorted names the message waits among ``waiters`` wait for (``"*"`` for a wait on
    any name); None when none waits for a message."""
    names: set[str] = set()
    for waiter in waiters:
        if waiter.wants_messages:
            names.update(("*",) if waiter.names is None else waiter.names)
    return sorted(names) if names else None
