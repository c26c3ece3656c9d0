"""Default values of every tunable, in one place (durations in seconds); the version."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("durable-engine")
except PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "0+unknown"

DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BACKOFF_BASE = 0.1
DEFAULT_RETRY_BACKOFF_MAX = 30.0
DEFAULT_STEP_TIMEOUT = 30.0
DEFAULT_LOOP_COMMIT_INTERVAL = 20
DEFAULT_WORKER_POLL_INTERVAL = 1.0
DEFAULT_LEASE = 30.0
DEFAULT_HEARTBEAT = 10.0
DEFAULT_WORKER_CONCURRENCY = 20
DIVERGENCE_BACKOFF = 1.0  # a worker retries a diverged workflow after this, doubling...
DIVERGENCE_BACKOFF_MAX = 300.0  # ...up to this
