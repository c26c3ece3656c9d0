"""``engine.testing``: its wrapper drivers import without pytest, its suites load on demand."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import engine.testing


def test_the_wrappers_import_without_pytest() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pytest"] = None  # any "import pytest" now raises ImportError
        import engine.testing
        from engine.testing import (
            WRITE_METHODS, CountingDriver, FaultyDriver, SimulatedCrash,
        )
        assert "batch" in WRITE_METHODS and issubclass(FaultyDriver, CountingDriver)
        assert issubclass(SimulatedCrash, BaseException)
        assert "engine.testing.conformance" not in sys.modules
        try:
            engine.testing.DriverConformance
        except ImportError:
            print("suites need pytest")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "suites need pytest"


def test_the_suites_resolve_from_the_package_when_pytest_is_there() -> None:
    from engine.testing import DriverConformance, WorkerStoreConformance
    from engine.testing.conformance import DriverConformance as defined

    assert DriverConformance is defined is engine.testing.DriverConformance
    assert WorkerStoreConformance.__module__ == "engine.testing.conformance"
    assert set(engine.testing.__all__) >= {"DriverConformance", "CountingDriver"}
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        engine.testing.Nothing  # noqa: B018
