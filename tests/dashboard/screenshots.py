"""Regenerate the dashboard screenshots of the README and the docs:
``python -m tests.dashboard.screenshots [DIRECTORY]`` (default ``docs/assets``).

Seeds the order pipeline of ``tests.dashboard.shop`` in Redis (``REDIS_URL``, namespace
``shop-demo``, emptied before and after), serves the dashboard in this process and
photographs the list and the order that waits for its shipment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import uvicorn

from engine.cli import open_store
from engine.dashboard import create_app, server
from tests.dashboard.browser import ROOT, chromium
from tests.dashboard.shop import seed
from tests.support.redis_store import delete_namespace
from tests.support.services import REDIS_URL

NAMESPACE = "shop-demo"
VIEWPORT = {"width": 1280, "height": 860}


async def main(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    async with open_store(REDIS_URL, namespace=NAMESPACE) as store:
        await delete_namespace(store)  # type: ignore[arg-type]
        try:
            seeded = await seed(store)
            label = server.store_label(REDIS_URL, NAMESPACE)
            sock = server.listen("127.0.0.1", 0)
            base = server.address(sock)
            config = uvicorn.Config(create_app(store, label=label), log_level="warning")
            web = uvicorn.Server(config)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(lambda: web.serve(sockets=[sock]))
                async with chromium() as browser:
                    page = await browser.new_page(viewport=VIEWPORT)
                    await page.goto(base + "/")
                    await page.screenshot(path=str(directory / "dashboard-list.png"))
                    await page.goto(f"{base}/workflows/{seeded.awaiting_shipment}")
                    await page.locator('#history li[data-path="charge-card"] summary').click()
                    await page.screenshot(
                        path=str(directory / "dashboard-workflow.png"), full_page=True
                    )
                web.should_exit = True
        finally:
            await delete_namespace(store)  # type: ignore[arg-type]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "assets"
    anyio.run(main, target)
