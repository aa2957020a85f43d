"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

A real forking run (`city_forker`, a SelfReference agent on the in-process worker): the
root spawns three forks and waits in its gather, one fork forks again; each fork gets a
lane nested under its parent that fills live, the root's lane shows the gather's
progress, reconnecting from the start shows nothing twice, and the abort button ends
every lane aborted. A screenshot is saved. Forks that end one by one advance the gather's
count while the run's status stays the root's own. The runs list updates without a
reload and shows a waiting root (never its forks).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from orchestrator.api import create_app
from orchestrator.settings import Settings
from tests.fixtures_api import (
    AGENT,
    FORK_CITIES,
    FORK_PACES,
    FORKING_AGENT,
    SLOW_TEXT,
    SUB_FORK,
    bearer,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
API_KEY, TENANT = "browser-key", "browser-tenant"
# How long a live change may take to show on this (possibly busy) machine.
LIVE_MS = 15_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is absent (apt-get install -y chromium to run the browser test)",
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served_api(api_settings: Settings) -> Iterator[str]:
    """The app on uvicorn in a thread (its own event loop), like `orchestrator api`."""
    port = free_port()
    app = create_app(api_settings, api_keys={API_KEY: TENANT})
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield instance
        finally:
            await instance.close()


def lane_status(lane: Any) -> Any:
    """The status badge in a lane's own header (not in its forks')."""
    return lane.locator(":scope > .lane-head .status")


def own_items(lane: Any) -> Any:
    """A lane's own items, not its forks'."""
    return lane.locator(":scope > .lane-body")


async def test_the_dashboard_shows_a_forking_run_live_and_aborts_it(
    served_api: str, browser: Any, worker: object, tmp_path: Path
) -> None:
    """A real fork tree: the root spawns one fork per city and waits in its gather; the
    Cairo fork spawns a fork of its own. Each fork gets a lane nested under its parent
    that fills live (text, a slow tool's custom event and result, then a long streamed
    answer); the root's lane shows the gather's progress. Abort ends every lane aborted
    and the gather reports all its forks aborted."""
    from playwright.async_api import expect

    forking, sub_city = SUB_FORK
    async with httpx.AsyncClient(base_url=served_api, headers=bearer(API_KEY)) as api:
        answer = await api.post(
            "/v1/runs", json={"agent": FORKING_AGENT, "message": "Please split the cities."}
        )
        run_id = answer.json()["run_id"]

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{served_api}/?key={API_KEY}#/runs/{run_id}")
        assert "key=" not in page.url  # the key moved to sessionStorage

        root = page.locator(f'.lane[data-agent-call-id="{run_id}"]')
        forks = root.locator(":scope > .children > .lane[data-fork-id]")
        await expect(forks).to_have_count(len(FORK_CITIES), timeout=LIVE_MS)
        spawned = own_items(root).locator('.item.tool[data-tool-name="selfref_fork_spawn"]')
        await expect(spawned.locator(".result", has_text="✓")).to_have_count(len(FORK_CITIES))
        lanes = {city: forks.filter(has_text=f"Looking up {city}") for city in FORK_CITIES}
        sub_fork = lanes[forking].locator(":scope > .children > .lane[data-fork-id]")
        await expect(sub_fork).to_have_count(1, timeout=LIVE_MS)
        lanes[sub_city] = sub_fork
        await expect(sub_fork).to_have_attribute("data-depth", "2")
        parent_id = await lanes[forking].get_attribute("data-agent-call-id")
        await expect(sub_fork).to_have_attribute("data-parent-agent-call-id", str(parent_id))

        # Every fork's lane fills live: its text, its slow tool's event and result.
        for city, lane in lanes.items():
            items = own_items(lane)
            await expect(items.locator(".item.text").first).to_contain_text(f"Looking up {city}")
            lookup = items.locator('.item.tool[data-tool-name="slow_lookup"] .result')
            await lookup.filter(has_text="found").wait_for(timeout=LIVE_MS)
            await expect(items.locator(".item.custom", has_text=city)).to_have_count(1)
            depth = "2" if city == sub_city else "1"
            await expect(lane.locator(":scope > .lane-head .lane-meta").first).to_contain_text(
                f"depth {depth}"
            )
            await expect(lane_status(lane)).to_have_text("running")

        streaming = own_items(lanes[FORK_CITIES[0]]).locator(".item.text").last
        await streaming.filter(has_text="word5").wait_for(timeout=LIVE_MS)
        before = len(await streaming.inner_text())
        await page.wait_for_timeout(300)
        assert len(await streaming.inner_text()) > before  # still streaming, live

        # The root waits in its gather (of its own three forks); none has ended yet.
        gather = own_items(root).locator(".item.gather")
        await expect(gather).to_have_count(1)
        await expect(gather).to_have_attribute("data-total", str(len(FORK_CITIES)))
        await expect(gather.locator(".gather-label")).to_have_text("gathering 0/3")
        await expect(lane_status(root)).to_have_text("waiting")
        await expect(page.locator("#run-status")).to_have_text("waiting")
        await expect_waiting_in_the_runs_list(browser, served_api, run_id)

        shown = int(await page.locator("#run-events").inner_text())
        # Reconnect from the very start: every entry comes again, and none is shown twice.
        await page.evaluate("currentRunView.source.close(); currentRunView.connect(null)")
        await page.wait_for_timeout(300)
        assert int(await page.locator("#run-events").inner_text()) >= shown
        assert await page.locator(".lane").count() == 1 + len(lanes)
        assert await own_items(root).locator(".item.tool").count() == 4  # 3 spawns, 1 gather
        assert await own_items(root).locator(".item.gather").count() == 1
        for city, lane in lanes.items():
            items = own_items(lane)
            assert await items.locator(".item.text").count() == 2, city
            assert await items.locator(".item.tool").count() == (2 if city == forking else 1)
            assert await items.locator(".item.custom").count() == 1, city

        # Abort while the forks are still streaming: every lane ends aborted.
        assert len(await streaming.inner_text()) < len(SLOW_TEXT)
        await page.click("#abort")
        await expect(page.locator("#run-status")).to_have_text("aborted", timeout=LIVE_MS)
        for lane in (root, *lanes.values()):
            await expect(lane_status(lane)).to_have_text("aborted", timeout=LIVE_MS)
        await expect(gather).to_have_attribute("data-done", "true", timeout=LIVE_MS)
        await expect(gather.locator(".gather-label")).to_have_text("✓ gathered 3/3")
        await expect(gather.locator('.status[data-status="aborted"]')).to_have_count(3)
        assert (await api.get(f"/v1/runs/{run_id}")).json()["status"] == "aborted"
        for lane in lanes.values():
            fork_run_id = await lane.get_attribute("data-agent-call-id")
            record = (await api.get(f"/v1/runs/{fork_run_id}")).json()
            assert record["status"] == "aborted", record

        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.exists()
        assert shot.stat().st_size > 10_000
        await page.close()


# Notes each state the page shows (the run's status badge and the root's gather label,
# together), in order, so a test can check states too brief to poll for.
RECORD_SHOWN = """
window.shown = [];
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver(() => {
    const label = document.querySelector("#lanes > .lane > .lane-body .gather-label");
    const status = document.getElementById("run-status").textContent;
    const state = [status, label ? label.textContent : ""];
    const last = window.shown[window.shown.length - 1];
    if (!last || last[0] !== state[0] || last[1] !== state[1]) window.shown.push(state);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
});
"""


async def test_a_gather_counts_its_forks_as_they_end_and_the_run_completes(
    served_api: str, browser: Any, worker: object
) -> None:
    """Forks that end one after another: the parent's gather indicator counts them
    (0/3, 1/3, 2/3, 3/3, then gathered 3/3), each fork's lane turns completed, and the run's
    status badge shows the root's own status (waiting) until the root itself ends: a
    fork's "completed" is not the run's."""
    from playwright.async_api import expect

    async with httpx.AsyncClient(base_url=served_api, headers=bearer(API_KEY)) as api:
        answer = await api.post(
            "/v1/runs", json={"agent": FORKING_AGENT, "message": "Please check the cities."}
        )
        run_id = answer.json()["run_id"]
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.add_init_script(RECORD_SHOWN)
    await page.goto(f"{served_api}/?key={API_KEY}#/runs/{run_id}")

    root = page.locator(f'.lane[data-agent-call-id="{run_id}"]')
    forks = root.locator(":scope > .children > .lane[data-fork-id]")
    await expect(page.locator("#run-status")).to_have_text("completed", timeout=LIVE_MS)
    await expect(forks).to_have_count(len(FORK_PACES))
    for i in range(len(FORK_PACES)):
        await expect(lane_status(forks.nth(i))).to_have_text("completed")
    await expect(lane_status(root)).to_have_text("completed")
    await expect(page.locator("#final-text")).to_have_text("All cities checked.")
    await expect(page.locator("#abort")).to_be_disabled()
    gather = own_items(root).locator(".item.gather")
    await expect(gather.locator('.status[data-status="completed"]')).to_have_count(3)

    shown = [tuple(state) for state in await page.evaluate("window.shown")]
    labels = [label for _, label in shown if label]
    # 3/3 ended before the resumed parent's gather returns: a fork's end wakes its parent.
    counts = ["gathering 0/3", "gathering 1/3", "gathering 2/3", "gathering 3/3"]
    assert [g for i, g in enumerate(labels) if i == 0 or labels[i - 1] != g] == [
        *counts,
        "✓ gathered 3/3",
    ]
    assert "waiting" in {status for status, _ in shown}, shown
    completed = [label for status, label in shown if status == "completed"]
    assert set(completed) == {"✓ gathered 3/3"}, shown  # never while forks were gathered
    await page.close()


async def expect_waiting_in_the_runs_list(browser: Any, served_api: str, run_id: str) -> None:
    """The runs list shows the root as waiting, and lists none of its forks."""
    from playwright.async_api import expect

    page = await browser.new_page()
    await page.goto(f"{served_api}/?key={API_KEY}")
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    await expect(row.locator(".status")).to_have_text("waiting")
    assert await page.locator(f'tr[data-run-id^="{run_id}."]').count() == 0
    await page.close()


async def test_the_runs_list_updates_without_a_reload(
    served_api: str, browser: Any, worker: object
) -> None:
    page = await browser.new_page()
    await page.goto(f"{served_api}/?key={API_KEY}")
    await page.locator("#runs").wait_for()
    async with httpx.AsyncClient(base_url=served_api, headers=bearer(API_KEY)) as api:
        run = (await api.post("/v1/runs", json={"agent": AGENT, "message": "hi"})).json()
    row = page.locator(f'tr[data-run-id="{run["run_id"]}"]')
    await row.locator(".status", has_text="completed").wait_for(timeout=5000)
    assert "weather_chat" in await row.inner_text()
    await asyncio.sleep(0)  # keep the loop turning for the in-process worker
    await page.close()
