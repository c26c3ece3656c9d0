"""``ctx.sleep`` / ``ctx.sleep_until``: a recorded wake time, waited for in memory or by alarm.

The wake time is fixed when the sleep first starts and recorded, so a restart does not
stretch the sleep. Recording rides along with the next flush (a sleep is not a side effect);
when the run yields, the runner flushes before arming the alarm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.run import Run

if TYPE_CHECKING:
    from engine.context import Site


def check_seconds(run: Run, name: str, seconds: float) -> None:
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise ValueError(
            f"workflow {run.workflow_id!r} sleep {name!r}: seconds must be a finite number "
            f">= 0, got {seconds!r}"
        )


def check_timestamp(run: Run, name: str, timestamp: float) -> None:
    if (
        not isinstance(timestamp, int | float)
        or isinstance(timestamp, bool)
        or not math.isfinite(timestamp)
    ):
        raise ValueError(
            f"workflow {run.workflow_id!r} sleep {name!r}: timestamp must be a finite Unix time "
            f"in seconds, got {timestamp!r}"
        )


async def run_sleep(site: Site, wake_at_from: Callable[[float], float]) -> None:
    entry = site.node.entry
    if entry is not None and entry.get("d"):
        return
    if entry is None:
        wake_at = wake_at_from(time.time())
        site.record({"w": wake_at, "d": False})
    else:
        wake_at = entry["w"]
    await site.run.scheduler.wait(deadline=wake_at)
    site.record({"w": wake_at, "d": True})
