"""A store whose client library is missing says which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("module", "store"), [("plyvel", "leveldb"), ("redis", "redis"), ("asyncpg", "postgres")]
)
def test_importing_a_store_without_its_client_names_the_extra(module: str, store: str) -> None:
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "try:\n"
        f"    import drivers.{store}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert f"pip install 'durable-engine[{store}]'" in child.stdout, child.stdout


def test_the_engine_says_its_version() -> None:
    import engine

    assert engine.__version__ and engine.__version__ != "0+unknown"
