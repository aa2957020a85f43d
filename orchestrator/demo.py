"""`orchestrator demo`: an agent with tools, run as distributed turns, rendered live.

By default everything it needs runs inside this one command, clearly labelled: the
scripted model (no API key) and an embedded Redis (no server installed), with worker(s)
as tasks here. `--redis URL` (or ORCHESTRATOR_REDIS_URL) uses a real Redis instead, and
`--external-workers` leaves the turns to `orchestrator worker` processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from importlib import resources
from typing import Any

import structlog
from rich.console import Console
from rich.panel import Panel

from orchestrator.aio import cancel_and_wait
from orchestrator.render import EventRenderer, format_usage
from orchestrator.settings import Settings

DEMO_AGENTS = "orchestrator.demo_agents"
PROMPTS = (
    "What's the weather in Paris and Tokyo?",
    "Please calculate 17 * 23 + 4",
    # The agent forks: one sub-agent per city, each its own job, gathered at the end.
    "Research the weather in London, Paris and Tokyo in parallel",
)


@contextlib.contextmanager
def _model(args: argparse.Namespace, console: Console) -> Iterator[str]:
    if args.llm_url:
        console.print(f"[bold]model:[/] {args.llm_url} (your endpoint)")
        yield args.llm_url
        return
    from orchestrator.mock_llm.script import load_script
    from orchestrator.mock_llm.testing import MockLLMThread

    script_file = resources.files("orchestrator.mock_llm") / "scripts" / "demo.json"
    with resources.as_file(script_file) as path, MockLLMThread(load_script(str(path))) as llm:
        console.print(
            f"[bold yellow]model: SCRIPTED MODEL[/] at {llm.base_url} — answers come from "
            "a script, not a neural network (no API key needed; --llm-url for a real one)"
        )
        yield llm.base_url


@contextlib.contextmanager
def _redis(args: argparse.Namespace, console: Console) -> Iterator[str]:
    url = args.redis or os.environ.get("ORCHESTRATOR_REDIS_URL")
    if url:
        console.print(f"[bold]redis:[/] {url}")
        yield url
        return
    from orchestrator.embedded import EmbeddedRedis

    with EmbeddedRedis(prefer_binary=args.embedded != "fake") as server:
        console.print(f"[bold yellow]redis: {server.label}[/]")
        yield server.url


async def _run(settings: Settings, args: argparse.Namespace, console: Console) -> int:

    workers: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    if not args.external_workers:
        from workers.worker import create_worker

        for _ in range(max(1, args.workers)):
            worker = await create_worker(settings, [DEMO_AGENTS], handle_signals=False)
            workers.append(worker)
            tasks.append(asyncio.create_task(worker.async_run()))
        console.print(f"[bold]workers:[/] {len(workers)} in this process (arq, woken on submit)")
    else:
        console.print(f"[bold]workers:[/] external (`orchestrator worker --agents {DEMO_AGENTS}`)")
    dashboard = await _start_dashboard(settings, args, console)
    try:
        code = await _conversation(settings, console)
        if dashboard is not None and args.keep_open:
            console.print("[bold]dashboard stays open:[/] Ctrl-C to quit")
            await asyncio.Event().wait()
        return code
    finally:
        if dashboard is not None:
            server, task = dashboard
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5)
        for worker in workers:
            await worker.drain(timeout=10)
            await worker.close()
        for task in tasks:
            await cancel_and_wait(task)


async def _start_dashboard(settings: Settings, args: argparse.Namespace, console: Console) -> Any:
    """Serve the API + dashboard in this process while the demo runs."""
    if not args.dashboard_port:
        return None
    import uvicorn

    from orchestrator.api import create_app
    from orchestrator.embedded import port_is_free

    if not port_is_free(args.dashboard_port):
        console.print(f"[dim]dashboard: port {args.dashboard_port} is busy; not served[/]")
        return None
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=args.dashboard_port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    console.print(
        f"[bold]dashboard:[/] http://127.0.0.1:{args.dashboard_port}/ (live while the demo runs)"
    )
    return server, task


async def _conversation(settings: Settings, console: Console) -> int:
    from orchestrator.client import connect

    client = await connect(settings=settings)
    renderer = EventRenderer(console)
    history: list[dict[str, Any]] = []
    session_id = None
    async with client:
        for prompt in PROMPTS:
            console.rule(f"[bold]user:[/] {prompt}")
            run = await client.submit(
                f"{DEMO_AGENTS}:weather_chat", prompt, history=history, session_id=session_id
            )
            session_id = run.session_id
            async for output in run.stream():
                renderer.show(output)
            renderer.finish()
            result = await run.result(timeout=120)
            history = result.messages or history
            console.print(
                f"[dim]run {run.run_id}: {result.status.value}, {format_usage(result.usage)}[/]"
            )
            if not result.ok:
                console.print(f"[red]{result.error}[/]")
                return 1
    console.print(
        Panel.fit(
            f"session {session_id}: {len(history)} messages in the history.\n"
            f"Replay it: orchestrator tail {session_id} --no-follow (against the same Redis)",
            title="demo finished",
        )
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    # arq and the workers log every job, fork and resume at INFO; the rendered events say
    # it better here, so the demo shows warnings and errors only.
    logging.getLogger("arq").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = Console(highlight=False)
    console.print(
        Panel.fit("orchestrator demo — distributed agent turns, live events", style="bold cyan")
    )
    with _model(args, console) as llm_url, _redis(args, console) as redis_url:
        os.environ["ORCHESTRATOR_DEMO_LLM_URL"] = llm_url
        settings = Settings.from_env(overrides={"redis_url": redis_url})
        return asyncio.run(_run(settings, args, console))
