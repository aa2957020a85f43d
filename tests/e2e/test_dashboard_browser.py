"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

A run streams live into its lane (text, tool calls with results), a fork's events land in
a nested lane, reconnecting from the start shows nothing twice, and the abort button
ends the run aborted. A screenshot is saved.

Forks arrive with a later issue; until then the test publishes a fork's events into the
session stream itself (the same wire format a forking worker writes), which is exactly
what the dashboard routes by `EventOrigin`.
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
from orchestrator.events import (
    EventOrigin,
    EventYield,
    LLMChunkArriveEvent,
    ReactStartEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
)
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis
from orchestrator.store.streams import EventPublisher
from tests.fixtures_api import AGENT, bearer

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


async def publish_fork(redis: Redis, keys: Keys, run_id: str, session_id: str) -> None:
    """A depth-1 fork of the root call: starts, streams text, calls a tool."""
    publisher = EventPublisher(redis, keys, session_id=session_id, run_id=f"{run_id}-f1")
    seq = iter(range(1, 100))

    def origin() -> EventOrigin:
        return EventOrigin(
            session_id=session_id,
            agent_call_id=f"{run_id}-f1",
            event_seq=next(seq),
            parent_agent_call_id=run_id,
            fork_id="fork-1",
            fork_depth=1,
            fork_seq=0,
        )

    publisher.publish(EventYield(event=ReactStartEvent(func_name="researcher"), origin=origin()))
    for word in ("fork ", "says ", "hello"):
        chunk = {"choices": [{"delta": {"content": word}}]}
        publisher.publish(EventYield(event=LLMChunkArriveEvent(chunk=chunk), origin=origin()))
    call = {"tool_name": "get_weather", "tool_call_id": "fc1", "arguments": {"city": "Oslo"}}
    publisher.publish(EventYield(event=ToolCallStartEvent(**call), origin=origin()))
    publisher.publish(
        EventYield(
            event=ToolCallEndEvent(**call, result={"condition": "snow"}, execution_time=0.01),
            origin=origin(),
        )
    )
    await publisher.close(expire=False)


async def test_the_dashboard_shows_a_run_live_and_aborts_it(
    served_api: str, browser: Any, worker: object, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=served_api, headers=bearer(API_KEY)) as api:
        answer = await api.post(
            "/v1/runs", json={"agent": AGENT, "message": "What's the weather? Tell me slowly."}
        )
        run = answer.json()
        run_id, session_id = run["run_id"], run["session_id"]

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{served_api}/?key={API_KEY}#/runs/{run_id}")
        assert "key=" not in page.url  # the key moved to sessionStorage

        root = page.locator(f'.lane[data-agent-call-id="{run_id}"]')
        items = root.locator(":scope > .lane-body")  # this lane's own, not its forks'
        await items.locator(".item.tool .result", has_text="✓").nth(1).wait_for()
        assert await items.locator(".item.custom").count() == 2
        said = items.locator(".item.text", has_text="Let me check both cities.")
        assert await said.count() == 1  # streamed once, not repeated at the call's end
        text = items.locator(".item.text").last
        await text.filter(has_text="word5").wait_for()
        before = len(await text.inner_text())
        await page.wait_for_timeout(300)
        assert len(await text.inner_text()) > before  # still streaming, live

        await publish_fork(redis, keys, run_id, session_id)
        fork = root.locator('.children .lane[data-fork-id="fork-1"]')
        await fork.locator(".item.text", has_text="fork says hello").wait_for()
        await fork.locator(".item.tool .result", has_text="snow").wait_for()

        shown = await page.locator("#run-events").inner_text()
        # Reconnect from the very start: every entry comes again, and none is shown twice.
        await page.evaluate("currentRunView.source.close(); currentRunView.connect(null)")
        await page.wait_for_timeout(300)
        assert await fork.locator(".item.text").count() == 1
        assert int(await page.locator("#run-events").inner_text()) >= int(shown)
        assert await items.locator(".item.tool").count() == 2

        await page.click("#abort")
        await page.locator("#run-status", has_text="aborted").wait_for()
        await root.locator(".lane-head .status", has_text="aborted").first.wait_for()
        assert (await api.get(f"/v1/runs/{run_id}")).json()["status"] == "aborted"

        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.exists()
        assert shot.stat().st_size > 10_000
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
