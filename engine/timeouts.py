"""Await something with a deadline, at the native cost of the running event loop.

``anyio.move_on_after`` builds an anyio cancel scope per call, which on asyncio costs more
than the trivial async step it guards. Each backend here uses what is cheapest and still
exact on its loop, and both compose with anyio's own cancellation:

- **asyncio** arms nothing until the awaitable first suspends: a coroutine that finishes
  without waiting (the common step: ``async def fn(): return compute()``) costs one clock
  read. If it suspends, the rest runs under ``asyncio.timeout_at`` with the deadline taken
  at the call, so the time before the first suspension counts, as it would under a scope
  entered up front. ``asyncio.timeout`` tells its own expiry from any other cancellation by
  ``Task.cancelling()``, which anyio also keeps right, so a cancel scope or task group
  cancelled around the call still wins and its ``CancelledError`` propagates.
- **trio** uses a native ``trio.CancelScope``, skipping anyio's wrapper around it. It must
  be entered before the awaitable runs: trio requires scopes to nest exactly, and an
  awaitable that suspends inside a scope of its own (``trio.sleep`` does) would otherwise
  close it inside ours. A cancellation from an enclosing scope is never caught by it,
  since trio lets the outermost cancelled scope catch.

What a guarded await adds to a bare one: ``python -m benchmarks.step_overhead --timeouts``
(asyncio about 0.7 us here against 6 us for ``anyio.move_on_after``; trio about 5.5 us
against 8 us).

Resolve the implementation once per run, inside the run's event loop, and keep it::

    await_within = timeouts.for_current_backend()  # at run start: the lookup is not free
    ...
    try:
        value = await await_within(fn(), timeout)
    except timeouts.TimedOut:
        raise StepTimeoutError(...) from None

A ``seconds`` that is not a finite number above zero means no timeout: the awaitable is
just awaited. Whatever the awaitable returns or raises passes through unchanged, including
a ``TimeoutError`` or ``CancelledError`` of its own; only the deadline becomes
:class:`TimedOut`, raised after the awaitable was cancelled and has finished. This module
imports only the standard library; trio (and anyio, for other backends) is imported when
its implementation is asked for.
"""

from __future__ import annotations

import asyncio
import math
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Protocol, TypeVar, cast

T = TypeVar("T")


class TimedOut(Exception):
    """Raised when the awaitable given to an :class:`AwaitWithin` outlived its deadline.

    Private to the engine: the caller turns it into its own error (a step raises
    ``StepTimeoutError``). It is raised in the caller's frame, never inside user code.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"did not finish within {seconds}s")
        self.seconds = seconds


class AwaitWithin(Protocol):
    """Await ``awaitable``; raise :class:`TimedOut` if it has not finished in ``seconds``."""

    def __call__(self, awaitable: Awaitable[T], seconds: float, /) -> Coroutine[Any, Any, T]: ...


def for_backend(name: str) -> AwaitWithin:
    """The implementation for the event loop library ``name`` (``"asyncio"``, ``"trio"``).

    Any other name gets one built on ``anyio.move_on_after``: correct wherever anyio runs,
    at anyio's cost.
    """
    if name == "asyncio":
        return _asyncio_within
    made = _made.get(name)
    if made is None:
        made = _made[name] = _trio_within() if name == "trio" else _anyio_within()
    return made


def for_current_backend() -> AwaitWithin:
    """The implementation for the event loop running this call; resolve it once per run."""
    return for_backend(current_backend())


def current_backend() -> str:
    """The name of the async library running this call, as sniffio (and anyio) spell it."""
    try:
        import sniffio
    except ImportError:
        # trio depends on sniffio, so without it the only loop anyio can run on is asyncio.
        asyncio.get_running_loop()  # raises RuntimeError outside a loop, as sniffio would
        return "asyncio"
    return sniffio.current_async_library()


async def await_within(awaitable: Awaitable[T], seconds: float) -> T:
    """One-off form: looks the backend up on every call (prefer a resolved ``AwaitWithin``)."""
    return await for_current_backend()(awaitable, seconds)


_made: dict[str, AwaitWithin] = {}


async def _asyncio_within(awaitable: Awaitable[T], seconds: float) -> T:
    if not 0.0 < seconds < math.inf:
        return await awaitable
    deadline = asyncio.get_running_loop().time() + seconds
    # A coroutine is its own iterator; anything else hands one over with ``__await__``.
    steps: Generator[Any, Any, T] = (
        cast("Generator[Any, Any, T]", awaitable)
        if type(awaitable) is types.CoroutineType
        else awaitable.__await__()
    )
    try:
        pending = steps.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    raised_inside = False
    try:
        async with asyncio.timeout_at(deadline):
            try:
                return await _resume(steps, pending)
            except TimeoutError:
                raised_inside = True  # the awaitable's own: it must not pass for ours
                raise
    except TimeoutError:
        if raised_inside:
            raise
        raise TimedOut(seconds) from None


@types.coroutine
def _resume(steps: Generator[Any, Any, T], pending: Any) -> Generator[Any, Any, T]:
    """Finish a coroutine already run to its first suspension, ``pending`` what it yielded.

    What the awaitable yields goes to the event loop unchanged, and what the loop sends or
    throws back (a cancellation) goes to the awaitable, as ``await`` would do. After its
    first plain resumption the rest is delegated with ``yield from``, at native speed.
    """
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:
            try:
                pending = steps.throw(exc)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]
            continue
        if sent is None:  # what an asyncio task always sends: the awaitable asks for results
            return (yield from steps)
        try:
            pending = steps.send(sent)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]


def _trio_within() -> AwaitWithin:
    import trio

    async def trio_within(awaitable: Awaitable[T], seconds: float) -> T:
        if not 0.0 < seconds < math.inf:
            return await awaitable
        with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
            return await awaitable
        # Only a cancellation caught by this scope, so its own deadline, ends up here.
        assert scope.cancelled_caught
        raise TimedOut(seconds)

    return trio_within


def _anyio_within() -> AwaitWithin:
    import anyio

    async def anyio_within(awaitable: Awaitable[T], seconds: float) -> T:
        if not 0.0 < seconds < math.inf:
            return await awaitable
        with anyio.move_on_after(seconds) as scope:
            return await awaitable
        assert scope.cancelled_caught
        raise TimedOut(seconds)

    return anyio_within
