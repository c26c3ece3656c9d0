"""Every code example of the documentation site runs, page by page (``docs/**/*.md``).

The conventions (what runs, how, and the only way to skip a block) are in
``tests.docs.blocks``. Each page runs in a process of its own (``tests.docs.run_page``) in
a fresh working directory, with ``DURABLE_STORE`` pointing at the test database and
``DURABLE_NAMESPACE`` at a schema (and Redis key prefix) of its own, dropped afterwards. A
failure names the page and the line of the block that failed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import EXECUTED, Block, PageError, read_blocks
from tests.support.services import DATABASE_URL, REDIS_URL, unique_name, unreachable

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
PAGE_TIMEOUT = 120.0

_POSTGRES_WORDS = ("DURABLE_STORE", "DATABASE_URL", "durable-engine", "PostgresStore")
_REDIS_WORDS = ("REDIS_URL", "RedisStore", "redis://")


def test_the_site_has_pages() -> None:
    assert len(PAGES) > 10, PAGES


def test_the_reference_documents_every_public_name() -> None:
    """Every name ``engine`` exports has an entry (``::: engine.NAME``) in the reference."""
    import engine

    reference = "\n".join(page.read_text() for page in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: engine\.(\w+)", reference, flags=re.MULTILINE))
    assert set(engine.__all__) - documented == set()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_code_example_runs(page: Path, tmp_path: Path) -> None:
    try:
        blocks = read_blocks(page, ROOT)
    except PageError as exc:
        pytest.fail(str(exc), pytrace=False)
    skipped = [b for b in blocks if b.lang in EXECUTED and not b.executed]
    for block in skipped:  # the one way to skip: a visible marker that says why
        assert block.marker == "not-executed" and block.reason, block.where
    executed = [b for b in blocks if b.executed]
    if not executed:
        return
    namespace = unique_name("docs")
    uses_postgres = _mentions(executed, _POSTGRES_WORDS)
    uses_redis = _mentions(executed, _REDIS_WORDS)
    if uses_postgres:
        asyncio.run(_reach_postgres())
    if uses_redis:
        asyncio.run(_reach_redis())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.docs.run_page", str(page)],
            cwd=tmp_path,
            env=_page_environment(tmp_path, namespace),
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT,
        )
    finally:
        if uses_postgres:
            asyncio.run(_drop_schema(namespace))
        if uses_redis:
            asyncio.run(_delete_keys(namespace))
    if done.returncode != 0:
        pytest.fail(f"{done.stderr}\n{done.stdout}".strip(), pytrace=False)


def _mentions(blocks: list[Block], words: tuple[str, ...]) -> bool:
    return any(word in block.code for block in blocks for word in words)


def _page_environment(workdir: Path, namespace: str) -> dict[str, str]:
    """The reader's environment after Getting started's first steps (``HARNESS_SETS``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    bin_dir = str(Path(sys.executable).parent)  # durable-engine and python of this venv
    env.update(
        DURABLE_STORE=DATABASE_URL,
        DURABLE_NAMESPACE=namespace,
        PYTHONPATH=os.pathsep.join([str(workdir), str(ROOT)]),
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
    )
    return env


async def _reach_postgres() -> None:
    import asyncpg

    try:
        connection = await asyncpg.connect(DATABASE_URL)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        unreachable("PostgreSQL", DATABASE_URL, exc)
    await connection.close()


async def _drop_schema(namespace: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(DATABASE_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    finally:
        await connection.close()


async def _reach_redis() -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        unreachable("Redis", REDIS_URL, exc)
    finally:
        await client.aclose()


async def _delete_keys(namespace: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()
