"""The PyRepl demo in the dashboard: the run page shows the code's streamed output.

`orchestrator demo --pyrepl --keep-open` runs the data-analyst agent (it answers by
writing and running Python) and keeps its dashboard up; headless Chromium then opens the
first run's page, where the interpreter's output appears as it was streamed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.embedded import free_port
from tests.integration.test_demo import DemoProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.timeout(150),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent"),
]


async def test_the_dashboard_shows_the_code_output_streamed_by_the_demo(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    port = free_port()
    demo = DemoProcess(
        "--pyrepl", "--keep-open", "--embedded", "fake", "--dashboard-port", str(port)
    )
    try:
        output = demo.wait_for("dashboard stays open", timeout=120)
        runs = re.findall(r"run ([0-9a-f]{32}): completed", output)
        assert len(runs) == 2, output
        async with async_playwright() as playwright:
            browser: Any = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(f"http://127.0.0.1:{port}/#/runs/{runs[0]}")
                lane = page.locator(f'.lane[data-agent-call-id="{runs[0]}"]')
                await expect(lane).to_contain_text("kernel_stdout", timeout=15_000)
                await expect(lane).to_contain_text("Jan -> Feb: +15")
                await expect(lane).to_contain_text("largest growth: Apr (+32); average: 150.67")
                await expect(lane).to_contain_text("April grew the most")
                await page.screenshot(path=str(tmp_path / "pyrepl-dashboard.png"), full_page=True)
            finally:
                await browser.close()
        assert (tmp_path / "pyrepl-dashboard.png").stat().st_size > 10_000
    finally:
        demo.close()
