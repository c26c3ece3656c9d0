"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against the real
command (``python -m engine dashboard``) serving Redis (and LevelDB, read-only).

A user loads the list and its counts, filters it, sees a new workflow appear without
reloading, opens an order, reads its history tree and timeline, sends it a message (a
malformed one first), sees it complete, cancels a subscription (saying no to the question
first), and meets a 404 page for an unknown id. Screenshots are saved as test artifacts in
``DASHBOARD_ARTIFACTS`` (default ``build/dashboard-screenshots``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import WorkflowState, run_workflow
from engine.cli import open_store
from engine.errors import StorageError
from tests.dashboard.browser import ROOT, artifacts, chromium
from tests.dashboard.shop import Seeded, an_order, order, seed
from tests.support.services import REDIS_URL, unique_name, unreachable

pytestmark = pytest.mark.anyio
BACKENDS = ("asyncio",)  # Playwright's async API and the Redis client run on asyncio

VIEWPORT = {"width": 1280, "height": 860}


@asynccontextmanager
async def dashboard(*options: str) -> AsyncIterator[str]:
    """``python -m engine dashboard OPTIONS --port 0`` until the block ends; its address."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "dashboard", *options, "--port", "0"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        first = await anyio.to_thread.run_sync(process.stdout.readline)
        address = re.match(r"dashboard(?: \(read-only\))?: (http://\S+)/ ", first)
        if address is None:
            process.kill()
            raise AssertionError(f"the dashboard did not start: {first}{process.stderr.read()}")
        yield address.group(1)
    finally:
        process.terminate()
        code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=15))
    assert code == 0, "SIGTERM stops the dashboard cleanly"


@asynccontextmanager
async def redis_store() -> AsyncIterator[tuple[Any, str]]:
    namespace = unique_name("dash")
    try:
        async with open_store(REDIS_URL, namespace=namespace) as store:
            try:
                yield store, namespace
            finally:
                from tests.support.redis_store import delete_namespace

                await delete_namespace(store)
    except (StorageError, OSError) as exc:
        unreachable("Redis", REDIS_URL, exc)


class Questions:
    """Answers every ``confirm()`` the page asks (yes unless ``accept`` is False) and counts
    the POSTs the page sends."""

    def __init__(self, page: Any) -> None:
        self.accept = True
        self.asked: list[str] = []
        self.posts = 0
        page.on("dialog", self._answer)
        page.on("request", self._sent)

    async def _answer(self, dialog: Any) -> None:
        self.asked.append(dialog.message)
        await (dialog.accept() if self.accept else dialog.dismiss())

    def _sent(self, request: Any) -> None:
        self.posts += request.method == "POST"


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)


async def test_a_user_reads_and_steers_workflows_in_chromium() -> None:
    from playwright.async_api import expect

    async with redis_store() as (store, namespace), chromium() as browser:
        seeded: Seeded = await seed(store)
        async with dashboard("--store", REDIS_URL, "--namespace", namespace) as base:
            page = await browser.new_page(viewport=VIEWPORT)

            # The list: every workflow, counted per state, rendered by the server.
            await page.goto(base + "/")
            for state, count in seeded.counts().items():
                await expect(page.locator(f'[data-count="{state}"]')).to_have_text(str(count))
            await expect(page.locator("#workflows tbody tr")).to_have_count(9)
            await shot(page, "list")

            # Live: a workflow started elsewhere shows up without a reload.
            await store_start(store, "order-10425")
            await expect(page.locator('[data-count="pending"]')).to_have_text("2")
            await expect(page.locator('tr[data-id="order-10425"]')).to_be_visible()
            await expect(page.locator("#live")).to_have_class("live ok")

            # Filters: choosing a state applies it.
            await page.select_option("#filter-state", "sleeping")
            await page.wait_for_url("**state=sleeping**")
            rows = page.locator("#workflows tbody tr")
            await expect(rows).to_have_count(2)
            assert set(await rows.evaluate_all("rs => rs.map(r => r.dataset.id)")) == {
                seeded.awaiting_shipment,
                seeded.subscription,
            }

            # One workflow: its state, what it waits for, its history tree and timeline.
            await page.get_by_role("link", name=seeded.awaiting_shipment, exact=True).click()
            await expect(page.locator("#state")).to_have_text("sleeping")
            await expect(page.locator("#waits")).to_contain_text(
                "a message named 'shipment-confirmed'"
            )
            history = page.locator("#history")
            await expect(
                history.locator('li[data-path="prepare/label/print-label"]')
            ).to_be_visible()
            await expect(history.locator('li[data-path="await-shipment"]')).to_contain_text(
                "waiting"
            )
            charge = page.locator('#timeline .bar[data-path="charge-card"]')
            await expect(charge.locator(".pip")).to_have_count(2)  # a timeout, then charged
            await expect(charge.locator(".pip.failed")).to_have_count(1)
            branches = page.locator('#timeline .bar[data-path^="prepare/"]')
            await expect(branches).to_have_count(3)
            starts = await branches.evaluate_all("bs => bs.map(b => b.style.gridColumnStart)")
            assert len(set(starts)) == 1, "the branches of a join start together"
            await history.locator('li[data-path="charge-card"] summary').click()
            await expect(history.locator('li[data-path="charge-card"] pre')).to_contain_text(
                '"cents": 21900'
            )
            await shot(page, "workflow")

            # A message whose data is not JSON: confirmed, then refused, naming the workflow.
            questions = Questions(page)
            await page.fill("#message-data", '{"tracking": ')
            async with page.expect_response(lambda r: r.request.method == "POST") as posted:
                await page.click("#do-message")
            assert (await posted.value).status == 400
            await expect(page.locator("#error")).to_contain_text("is not valid JSON")
            await expect(page.locator("#error")).to_contain_text(seeded.awaiting_shipment)
            await shot(page, "bad-message")

            # The real message; the workflow then completes and the page notices.
            await page.go_back()
            await page.fill("#message-data", '{"tracking": "UPS-1Z999"}')
            await page.click("#do-message")
            await expect(page.locator("#flash")).to_contain_text("Message sent")
            finished = await run_workflow(
                seeded.awaiting_shipment, order, None, store.driver(seeded.awaiting_shipment)
            ).result()
            assert finished.state == WorkflowState.COMPLETED
            await expect(page.locator("#changed")).to_be_visible()
            await page.locator("#changed a").click()
            await expect(page.locator("#state")).to_have_text("completed")
            await expect(page.locator("#output")).to_contain_text("UPS-1Z999")
            await expect(page.locator("#actions form")).to_have_count(0)

            # Cancel asks first: saying no changes nothing, saying yes cancels.
            await page.goto(f"{base}/workflows/{seeded.subscription}")
            questions.accept = False
            await page.click("#do-cancel")
            assert "will never run again" in questions.asked[-1]
            assert questions.posts == 2, "a refused question sends nothing"
            await expect(page.locator("#state")).to_have_text("sleeping")
            questions.accept = True
            await page.click("#do-cancel")
            assert questions.posts == 3
            await expect(page.locator("#flash")).to_contain_text("Cancelled")
            await expect(page.locator("#state")).to_have_text("cancelled")
            await shot(page, "cancelled")
            await page.goto(base + "/")
            await expect(page.locator('[data-count="cancelled"]')).to_have_text("2")

            # An unknown id is a 404 page that names it.
            missing = await page.goto(f"{base}/workflows/order-00000")
            assert missing is not None and missing.status == 404
            await expect(page.locator("#error")).to_contain_text(
                "There is no workflow 'order-00000' in this store."
            )


async def test_read_only_hides_and_refuses_every_action(tmp_path: Path) -> None:
    from playwright.async_api import expect

    url = f"leveldb://{tmp_path / 'db'}"
    async with open_store(url) as store:  # one process owns LevelDB: seed, close, serve
        seeded = await seed(store)
    async with chromium() as browser, dashboard("--store", url, "--read-only") as base:
        page = await browser.new_page(viewport=VIEWPORT)
        await page.goto(base + "/")
        await expect(page.locator("#read-only")).to_be_visible()
        await expect(page.locator('[data-count="failed"]')).to_have_text("1")
        await page.goto(f"{base}/workflows/{seeded.failed}")
        await expect(page.locator("#actions")).to_contain_text("This dashboard is read-only")
        await expect(page.locator("form.action")).to_have_count(0)
        await expect(page.locator("#error")).to_contain_text("card network declined")
        refused = await page.request.post(
            f"{base}/workflows/{seeded.failed}",
            form={"action": "recover", "confirm": "yes"},
        )
        assert refused.status == 403
        assert "--read-only" in await refused.text()
        await page.reload()
        await expect(page.locator("#state")).to_have_text("failed")
        await shot(page, "read-only")


async def store_start(store: Any, workflow_id: str) -> None:
    from engine import Client

    await Client(store).start("order", workflow_id, an_order(10425, "edsger@example.com", []))
