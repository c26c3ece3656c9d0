"""The leases memory and LevelDB keep in memory: revoking, and the handshake that keeps a
fenced write made in a thread from landing after a cancel."""

from __future__ import annotations

import threading
import time

import pytest

from drivers._common import ErrorMap
from drivers._inprocess import InProcessLeases, newest_first
from engine.errors import LeaseLostError
from engine.store import WorkflowRow

_ERRORS = ErrorMap("test store")


def test_revoke_fences_the_holder_off_and_holds_claims_off_until_released() -> None:
    leases = InProcessLeases()
    now = time.time()
    first = leases.claim("wf", "w1", now + 30, None)
    revoked = leases.revoke("wf")
    assert not leases.holds(first) and leases.renew(first, 30.0) is None
    with pytest.raises(LeaseLostError):
        leases.check(first, _ERRORS, "batch")
    assert not leases.free("wf", now + 1e9), "no claim while the revoking write is under way"
    leases.release(revoked)
    assert leases.free("wf", now)
    assert leases.claim("wf", "w2", now + 30, None).token > revoked.token > first.token
    leases.release(leases.revoke("absent"))  # nothing held: a token used, nothing else


def test_reported_state_is_running_while_the_lease_is_live() -> None:
    leases = InProcessLeases()
    now = time.time()
    leases.claim("wf", "w1", now + 30, None)
    assert leases.reported_state("wf", "pending", now) == "running"
    assert leases.reported_state("wf", "pending", now + 31) == "pending"
    assert leases.reported_state("other", "sleeping", now) == "sleeping"


def test_a_write_past_its_fence_in_another_thread_lands_before_the_revoking_write() -> None:
    leases = InProcessLeases()
    lease = leases.claim("wf", "w1", time.time() + 30, None)
    order: list[str] = []
    inside, finish = threading.Event(), threading.Event()

    def fenced_write() -> None:
        with leases.writing(lease, _ERRORS, "batch"):
            inside.set()
            finish.wait(5)
            order.append("write landed")

    def cancel_write() -> None:
        leases.wait_for_writes("wf")
        order.append("cancel writes")

    writer = threading.Thread(target=fenced_write)
    writer.start()
    assert inside.wait(5)
    revoked = leases.revoke("wf")  # on the loop, as the stores do
    canceller = threading.Thread(target=cancel_write)
    canceller.start()
    canceller.join(0.05)
    assert canceller.is_alive(), "the cancel wrote while a fenced write was under way"
    finish.set()
    writer.join(5)
    canceller.join(5)
    assert order == ["write landed", "cancel writes"]
    with pytest.raises(LeaseLostError), leases.writing(lease, _ERRORS, "batch"):
        pass  # after the revoke, a new fenced write is refused before it writes
    assert leases._writing == {}
    leases.release(revoked)


def test_newest_first_orders_by_updated_at_then_id() -> None:
    rows = [
        WorkflowRow("b", "n", "pending", None, 2.0),
        WorkflowRow("a", "n", "pending", None, 2.0),
        WorkflowRow("c", "n", "pending", None, 3.0),
        WorkflowRow("d", "n", "pending", None, 1.0),
    ]
    assert [r.workflow_id for r in newest_first(rows, 3)] == ["c", "a", "b"]
    assert newest_first(rows, 0) == []
