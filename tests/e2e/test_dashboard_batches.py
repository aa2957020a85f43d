"""The dashboard's batches page (#/batches) in headless Chromium: the latest batches with
their progress, failures, tokens and cost, refreshed as results come in. The batch
records are written with `BatchStore` directly (no workers needed to show them)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.api import create_app
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from orchestrator.store.batches import BatchStore
from orchestrator.store.connection import Redis
from tests.e2e.conftest import needs_chromium, serve_api

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.timeout(60),
    needs_chromium,
]


async def test_the_batches_page_shows_progress_and_follows_it(
    redis_url: str, redis: Redis, keys: Keys, browser: Any
) -> None:
    from playwright.async_api import expect

    store = BatchStore(redis, keys)
    await store.create("b-old", "{}", ["[]"] * 2)
    await store.create("b-new", "{}", ["[]"] * 3)
    await store.record("b-new", 0, "{}", failed=False, input_tokens=100, output_tokens=20,
                       cost=0.25)  # fmt: skip
    await store.record("b-new", 1, "{}", failed=True, input_tokens=0, output_tokens=0, cost=0.0)
    app = create_app(Settings(redis_url=redis_url, key_prefix=keys.prefix))
    base_url, stop = serve_api(app)
    try:
        page = await browser.new_page()
        await page.goto(f"{base_url}/#/batches")
        rows = page.locator("#batches tbody tr")
        await expect(rows).to_have_count(2)
        newest = rows.first
        await expect(newest).to_have_attribute("data-batch-id", "b-new")
        await expect(newest).to_contain_text("2 / 3")
        await expect(newest).to_contain_text("100 / 20")
        await expect(newest).to_contain_text("$0.2500")
        await expect(newest.locator("td").nth(3)).to_have_text("1")  # failed
        await expect(page.locator("#list-view")).to_be_hidden()
        # the last result arrives: the page follows without a reload
        await store.record("b-new", 2, "{}", failed=False, input_tokens=10, output_tokens=5,
                           cost=0.5)  # fmt: skip
        await expect(newest).to_contain_text("3 / 3", timeout=10_000)
        await expect(newest.locator(".status")).to_have_text("completed")
        # and leaving the page hides it again
        await page.goto(f"{base_url}/#/cluster")
        await expect(page.locator("#batches-view")).to_be_hidden()
        await page.close()
    finally:
        stop()
