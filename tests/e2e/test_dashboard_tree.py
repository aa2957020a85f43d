"""A fork tree of depth 3 on the run page: too large for a lane per agent, so its forks
are rows of the fork list, collapsed by parent; expanding a parent shows its forks one
level deeper, and a row (or a timeline bar) opens that agent's lane."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.api import create_app
from orchestrator.settings import Settings
from tests.e2e.conftest import needs_chromium, serve_api
from tests.fixtures_api import FORKING_AGENT, TREE_AGENTS, TREE_BRANCHES, TREE_TWIGS, bearer

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(60), needs_chromium]

API_KEY, TENANT = "tree-key", "tree-tenant"


@pytest.fixture
def base_url(api_settings: Settings) -> Iterator[str]:
    url, stop = serve_api(create_app(api_settings, api_keys={API_KEY: TENANT}))
    try:
        yield url
    finally:
        stop()


async def test_a_depth_3_tree_is_navigated_by_expanding_parents(
    base_url: str, browser: Any, worker: object
) -> None:
    from playwright.async_api import expect

    async with httpx.AsyncClient(base_url=base_url, headers=bearer(API_KEY), timeout=30) as api:
        answer = await api.post(
            "/v1/runs", json={"agent": FORKING_AGENT, "message": "Please grow a tree."}
        )
        run_id = answer.json()["run_id"]
        await api.get(f"/v1/runs/{run_id}/events")  # returns once the tree has ended
        tree = (await api.get(f"/v1/runs/{run_id}/tree")).json()
    assert tree["totals"]["agents"] == TREE_AGENTS
    assert tree["totals"]["depth"] == 3

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{base_url}/?key={API_KEY}#/runs/{run_id}")
    await expect(page.locator('#counts .count[data-status="completed"] b')).to_have_text(
        str(TREE_AGENTS)
    )
    assert await page.locator("#timeline rect.bar").count() == TREE_AGENTS
    rows = page.locator(".fork-list .fork-row")
    await expect(rows).to_have_count(TREE_BRANCHES)  # collapsed: the root's forks only

    branch = rows.first
    await expect(branch.locator("button.expander")).to_have_text(f"▸ {TREE_TWIGS}")
    await branch.locator("button.expander").click()
    await expect(rows).to_have_count(TREE_BRANCHES + TREE_TWIGS)
    twig = rows.nth(1)
    await twig.locator("button.expander").click()
    await expect(rows).to_have_count(TREE_BRANCHES + TREE_TWIGS + 1)
    leaf = rows.nth(2)
    indents = [
        await row.evaluate("r => parseFloat(getComputedStyle(r).paddingLeft)")
        for row in (branch, twig, leaf)
    ]
    assert indents == sorted(set(indents))  # each level further in

    await leaf.click()
    leaf_id = await leaf.get_attribute("data-run-id")
    lane = page.locator(f'#drawer-lanes > .lane[data-agent-call-id="{leaf_id}"]')
    await expect(lane).to_have_attribute("data-loaded", "true")
    await expect(lane.locator(":scope > .lane-head .lane-meta").first).to_contain_text("depth 3")
    await expect(lane.locator(".item.text")).to_contain_text("is green")

    await branch.locator("button.expander").click()  # collapse: its whole subtree folds
    await expect(rows).to_have_count(TREE_BRANCHES)

    # A bar of the timeline opens the lane of its agent too.
    bar = page.locator(f'#timeline rect.bar[data-run-id="{tree["agents"][1]["run_id"]}"]')
    await bar.click()
    opened = page.locator(
        f'#drawer-lanes > .lane[data-agent-call-id="{tree["agents"][1]["run_id"]}"]'
    )
    await expect(opened).to_have_attribute("data-loaded", "true")
    await expect(opened.locator(".item.gather .gather-label")).to_have_text(
        f"✓ gathered {TREE_TWIGS}/{TREE_TWIGS}"
    )
    await page.close()
