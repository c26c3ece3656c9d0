"""What the conformance suites share: unique ids, cleanup, and short waits for wake-ups.

The suites are imported from the package, not collected as test modules, so pytest does not
rewrite their asserts: every assert carries a message naming the clause it checks and what
the store returned.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio

WAKE_WITHIN = 5.0
"""Seconds a wake-up may take to arrive: generous for a loaded CI machine; a store that
notifies at all does it in milliseconds, so a passing test never waits this long."""


def unique_id(label: str) -> str:
    """A workflow id (or name) no other test uses, so suites share a store safely."""
    return f"conformance-{label}-{uuid.uuid4().hex[:12]}"


async def clean_up(store: Any, *workflow_ids: str) -> None:
    """Clear the alarms and namespaces a test made (index rows have no delete to undo)."""
    for workflow_id in workflow_ids:
        driver = store.driver(workflow_id)
        await driver.clear_alarm(workflow_id)
        await driver.delete_prefix(b"")


async def alarm_of(store: Any, workflow_id: str, now: float | None = None) -> float | None:
    """The workflow's alarm as ``due_alarms`` reports it (None: no alarm at or before a time
    far past ``now``)."""
    horizon = (time.time() if now is None else now) + 10 * 365 * 86400
    due = await store.due_alarms(now=horizon, limit=10_000)
    return dict(due).get(workflow_id)


async def claim_due_one(store: Any, workflow_id: str, owner: str, now: float) -> Any:
    """``claim_due`` at ``now``, keeping only the lease on ``workflow_id`` (None: not claimed)."""
    claims = await store.claim_due(owner, 30.0, 1000, now=now)
    return next((c for c in claims if c.workflow_id == workflow_id), None)


async def next_wakeup(wakeups: AsyncIterator[None], clause: str) -> None:
    """Wait for one item of a ``driver.subscribe()`` stream, failing with ``clause``."""
    try:
        with anyio.fail_after(WAKE_WITHIN):
            await wakeups.__anext__()
    except TimeoutError:
        raise AssertionError(f"{clause}: no wake-up within {WAKE_WITHIN} s") from None
