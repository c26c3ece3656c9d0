"""engine.timeouts: deadlines at each loop's native cost, composed with anyio cancellation."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Generator
from typing import Any

import anyio
import pytest

from engine import timeouts
from engine.timeouts import AwaitWithin, TimedOut

pytestmark = pytest.mark.anyio

SLOW = 10.0  # longer than any test waits: reaching it means a timeout did not fire
SLACK = 0.5  # how late a timer may fire on a loaded machine


@pytest.fixture(params=["native", "anyio"])
def within(request: pytest.FixtureRequest, anyio_backend: str) -> AwaitWithin:
    """The loop's own implementation, and the anyio-based one other loop names get."""
    return timeouts.for_backend(anyio_backend if request.param == "native" else "other")


class Probe:
    """An awaitable's body that records how it ended."""

    def __init__(self) -> None:
        self.ended_by: type[BaseException] | None = None

    async def sleep(self, seconds: float, value: Any = None) -> Any:
        try:
            await anyio.sleep(seconds)
        except BaseException as exc:
            self.ended_by = type(exc)
            raise
        return value


async def now(value: Any) -> Any:
    return value


def elapsed_since(started: float) -> float:
    return time.monotonic() - started


async def test_returns_what_a_coroutine_that_never_waits_returns(within: AwaitWithin) -> None:
    assert await within(now(7), 30) == 7


async def test_returns_what_a_waiting_coroutine_returns_in_time(within: AwaitWithin) -> None:
    probe = Probe()
    assert await within(probe.sleep(0.01, "v"), 30) == "v"
    assert probe.ended_by is None


async def test_interrupts_the_awaitable_at_the_deadline(within: AwaitWithin) -> None:
    probe = Probe()
    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        await within(probe.sleep(SLOW), 0.1)
    assert 0.09 <= elapsed_since(started) < 0.1 + SLACK
    assert info.value.seconds == 0.1
    assert probe.ended_by is anyio.get_cancelled_exc_class()


async def test_time_before_the_first_suspension_counts(within: AwaitWithin) -> None:
    async def busy_then_waits() -> None:
        time.sleep(0.25)  # blocks the loop past the deadline
        await anyio.sleep(SLOW)

    started = time.monotonic()
    with pytest.raises(TimedOut):
        await within(busy_then_waits(), 0.2)
    # Interrupted at the first suspension, not 0.2s after it.
    assert elapsed_since(started) < 0.4


async def test_code_that_never_waits_cannot_be_interrupted(within: AwaitWithin) -> None:
    async def busy() -> str:
        time.sleep(0.1)
        return "done"

    assert await within(busy(), 0.05) == "done"


@pytest.mark.parametrize("seconds", [0, -1, math.inf])
async def test_no_timeout_unless_seconds_is_finite_and_positive(
    within: AwaitWithin, seconds: float
) -> None:
    assert await within(Probe().sleep(0.05, "v"), seconds) == "v"


@pytest.mark.parametrize("waits_first", [False, True], ids=["at-once", "after-waiting"])
@pytest.mark.parametrize("error", [ValueError("boom"), TimeoutError("the awaitable's own")])
async def test_errors_of_the_awaitable_pass_through_unchanged(
    within: AwaitWithin, waits_first: bool, error: Exception
) -> None:
    async def fails() -> None:
        if waits_first:
            await anyio.sleep(0.01)
        raise error

    with pytest.raises(type(error)) as info:
        await within(fails(), 30)
    assert info.value is error


async def test_a_native_timeout_inside_the_awaitable_is_its_own(
    within: AwaitWithin, anyio_backend: str
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("asyncio.timeout needs asyncio")

    async def own_timeout() -> None:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(SLOW)

    with pytest.raises(TimeoutError) as info:
        await within(own_timeout(), 5)
    assert not isinstance(info.value, TimedOut)
    assert _cancelling() == 0


async def test_a_cancelled_error_of_the_awaitable_passes_through(
    within: AwaitWithin, anyio_backend: str
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("trio's Cancelled cannot be raised by user code")

    async def awaits_a_cancelled_future() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_later(0.01, future.cancel)
        await future

    with pytest.raises(asyncio.CancelledError):
        await within(awaits_a_cancelled_future(), 30)
    assert _cancelling() == 0


async def test_the_task_can_wait_again_after_a_timeout(
    within: AwaitWithin, anyio_backend: str
) -> None:
    with pytest.raises(TimedOut):
        await within(Probe().sleep(SLOW), 0.02)
    if anyio_backend == "asyncio":
        assert _cancelling() == 0  # the expiry's cancel request was taken back
    await anyio.sleep(0.01)
    assert await within(Probe().sleep(0.01, "again"), 30) == "again"
    with pytest.raises(TimedOut):
        await within(Probe().sleep(SLOW), 0.02)


async def test_a_cancellation_the_awaitable_swallows_is_its_business(
    within: AwaitWithin,
) -> None:
    async def stubborn() -> str:
        try:
            await anyio.sleep(SLOW)
        except anyio.get_cancelled_exc_class():
            return "kept going"
        return "slept"

    assert await within(stubborn(), 0.02) == "kept going"


async def test_an_enclosing_cancel_scope_wins(within: AwaitWithin) -> None:
    probe = Probe()
    with anyio.move_on_after(0.05) as outer:
        await within(probe.sleep(SLOW), 30)
    assert outer.cancelled_caught
    assert probe.ended_by is anyio.get_cancelled_exc_class()


async def test_a_losing_branch_is_cancelled_not_timed_out(within: AwaitWithin) -> None:
    probe = Probe()
    outcomes: list[str] = []

    async def branch() -> None:
        try:
            await within(probe.sleep(SLOW), 30)
        except TimedOut:
            outcomes.append("timed out")
        except anyio.get_cancelled_exc_class():
            outcomes.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(branch)
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert outcomes == ["cancelled"]
    assert probe.ended_by is anyio.get_cancelled_exc_class()


@pytest.mark.parametrize("expiry_first", [False, True])
async def test_a_cancellation_arriving_with_the_deadline_still_wins(
    within: AwaitWithin, anyio_backend: str, expiry_first: bool
) -> None:
    if expiry_first and anyio_backend == "trio":
        # trio shuffles the tasks it wakes together: the branch may see its deadline before
        # the cancellation exists, and then its timeout is rightly what it reports.
        pytest.skip("asyncio's ready queue makes the interleaving deterministic")
    outcomes: list[str] = []

    async def branch() -> None:
        try:
            await within(Probe().sleep(SLOW), 0.05)
        except TimedOut:
            outcomes.append("timed out")
        except anyio.get_cancelled_exc_class():
            outcomes.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(branch)
        await anyio.sleep(0.01)
        time.sleep(0.1)  # the branch's deadline passes while the loop is blocked
        if expiry_first:
            # On asyncio the expiry's callback now runs after this task and before the
            # branch wakes: the branch sees both requests at once.
            await anyio.sleep(0)
        tg.cancel_scope.cancel()
    assert outcomes == ["cancelled"]


async def test_nested_timeouts_fire_each_at_its_own_time(within: AwaitWithin) -> None:
    inner_fired_after: list[float] = []

    async def inner_times_out_then_finishes() -> str:
        started = time.monotonic()
        with pytest.raises(TimedOut) as info:
            await within(Probe().sleep(SLOW), 0.05)
        assert info.value.seconds == 0.05
        inner_fired_after.append(elapsed_since(started))
        await anyio.sleep(0.05)
        return "outer finished"

    assert await within(inner_times_out_then_finishes(), 5) == "outer finished"
    assert 0.04 <= inner_fired_after[0] < 0.05 + SLACK

    probe = Probe()

    async def inner_would_wait_long() -> Any:
        return await within(probe.sleep(SLOW), 5)

    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        await within(inner_would_wait_long(), 0.05)
    assert info.value.seconds == 0.05  # the outer deadline, not the inner one
    assert elapsed_since(started) < 0.05 + SLACK
    assert probe.ended_by is anyio.get_cancelled_exc_class()


async def test_an_awaitable_waiting_inside_its_own_cancel_scope(within: AwaitWithin) -> None:
    # The awaitable enters a scope before it first waits: ours must still nest outside it.
    async def guarded() -> str:
        with anyio.CancelScope():
            await anyio.sleep(SLOW)
        return "unreachable"

    with pytest.raises(TimedOut):
        await within(guarded(), 0.05)

    async def own_deadline_first() -> bool:
        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep(SLOW)
        await anyio.sleep(0.01)
        return scope.cancelled_caught

    assert await within(own_deadline_first(), 5) is True


async def test_an_awaitable_waiting_in_its_own_task_group(within: AwaitWithin) -> None:
    probes = [Probe(), Probe()]

    async def fan_out() -> None:
        async with anyio.create_task_group() as tg:
            for probe in probes:
                tg.start_soon(probe.sleep, SLOW)

    with pytest.raises(TimedOut):
        await within(fan_out(), 0.05)
    assert [p.ended_by for p in probes] == [anyio.get_cancelled_exc_class()] * 2


class Later:
    """An awaitable that is not a coroutine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __await__(self) -> Generator[Any, Any, str]:
        return Probe().sleep(self.seconds, "later").__await__()


async def test_any_awaitable(within: AwaitWithin) -> None:
    assert await within(Later(0.01), 30) == "later"
    with pytest.raises(TimedOut):
        await within(Later(SLOW), 0.05)


async def test_an_asyncio_future(within: AwaitWithin, anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("asyncio futures need asyncio")
    loop = asyncio.get_running_loop()
    resolved = loop.create_future()
    loop.call_later(0.01, resolved.set_result, "set")
    assert await within(resolved, 30) == "set"
    never = loop.create_future()
    with pytest.raises(TimedOut):
        await within(never, 0.05)
    assert never.cancelled()


async def test_the_backend_is_resolved_once(anyio_backend: str) -> None:
    assert timeouts.current_backend() == anyio_backend
    resolved = timeouts.for_current_backend()
    assert resolved is timeouts.for_backend(anyio_backend)
    assert timeouts.for_backend("other") is timeouts.for_backend("other")
    assert await timeouts.await_within(now(3), 30) == 3
    with pytest.raises(TimedOut):
        await timeouts.await_within(Probe().sleep(SLOW), 0.02)


def test_resolving_outside_an_event_loop_fails() -> None:
    with pytest.raises(Exception, match=r"(?i)loop|async library"):
        timeouts.for_current_backend()


def _cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()
