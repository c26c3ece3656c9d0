"""Default values of every tunable, in one place (durations in seconds); the version."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("durable-engine")
except PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "0+unknown"

DEFAULT_MAX_RETRIES = 3
"""``ctx.step``'s ``max_retries``: retries after the first attempt (four attempts in all)."""
DEFAULT_RETRY_BACKOFF_BASE = 0.1
"""``ctx.step``'s ``retry_backoff_base``: seconds before the first retry, doubling after."""
DEFAULT_RETRY_BACKOFF_MAX = 30.0
"""``ctx.step``'s ``retry_backoff_max``: the longest wait between two attempts, seconds."""
DEFAULT_STEP_TIMEOUT = 30.0
"""``ctx.step``'s ``timeout``: seconds each attempt may take (``0`` means no timeout)."""
DEFAULT_LOOP_COMMIT_INTERVAL = 20
"""``ctx.loop``'s ``commit_interval``: iterations between two commits of the state."""
DEFAULT_WORKER_POLL_INTERVAL = 1.0
"""A store's ``worker_poll_interval``: waits up to this long happen in memory (yield mode);
workers look for due workflows at least this often."""
DEFAULT_LEASE = 30.0
"""``Worker``'s ``lease``: seconds a claim lasts without renewal."""
DEFAULT_HEARTBEAT = 10.0
"""``Worker``'s ``heartbeat``: seconds between lease renewals."""
DEFAULT_WORKER_CONCURRENCY = 20
"""``Worker``'s ``concurrency``: the most workflows one worker runs at once."""
DIVERGENCE_BACKOFF = 1.0  # a worker retries a diverged workflow after this, doubling...
DIVERGENCE_BACKOFF_MAX = 300.0  # ...up to this
