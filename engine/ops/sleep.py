"""``ctx.sleep`` / ``ctx.sleep_until``: a recorded wake time, waited for in memory or by alarm.

The wake time is fixed when the sleep first starts and recorded, so a restart does not
stretch the sleep. Recording rides along with the next flush (a sleep is not a side effect);
when the run yields, the runner flushes before arming the alarm.
"""

from __future__ import annotations

import math
import time

from engine.records import SleepEntry
from engine.run import Run
from engine.site import S, Site


def validate(run: Run, name: str, value: float, label: str) -> None:
    """``seconds`` (finite, >= 0) or ``timestamp`` (a finite Unix time) of a sleep."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (label != "seconds" or value >= 0)
    ):
        return
    need = "a finite number >= 0" if label == "seconds" else "a finite Unix time in seconds"
    raise ValueError(
        f"workflow {run.workflow_id!r} sleep {name!r}: {label} must be {need}, got {value!r}"
    )


async def run_sleep(
    site: Site[S], *, seconds: float | None = None, until: float | None = None
) -> None:
    with site:
        storage = site.storage
        if storage.owed:
            await storage.flush()  # an earlier step's output lands first
        entry = site.node.entry
        if type(entry) is SleepEntry:
            if entry.done:
                return
            wake_at = entry.wake_at
        else:
            wake_at = until if until is not None else time.time() + (seconds or 0.0)
            site.record(SleepEntry(site.pos, wake_at))
            if site.run.trace is not None:
                site.run.trace.event("sleep", {"workflow.path": site.path, "sleep.until": wake_at})
        await site.run.scheduler.wait(deadline=wake_at)
        site.record(SleepEntry(site.pos, wake_at, done=True))
