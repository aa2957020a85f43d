"""`orchestrator demo`: an agent with tools, run as distributed turns, rendered live.

By default everything it needs runs inside this one command, clearly labelled: the
scripted model (no API key) and an embedded Redis (no server installed), with worker(s)
as tasks here. `--redis URL` (or ORCHESTRATOR_REDIS_URL) uses a real Redis instead, and
`--external-workers` leaves the turns to `orchestrator worker` processes.

SIGTERM and SIGINT (Ctrl-C) stop it cleanly at any point: the conversation is cancelled,
then the dashboard, the workers, the scripted model and the embedded Redis it started are
stopped, in that order, before it exits. A second signal hurries that along.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from importlib import resources
from types import FrameType
from typing import Any, Literal

import structlog
from rich.console import Console
from rich.panel import Panel

from orchestrator.aio import cancel_and_wait
from orchestrator.cli.embedded import EmbeddedRedis, port_is_free
from orchestrator.cli.extras import require_extra
from orchestrator.cli.render import EventRenderer, format_usage
from orchestrator.client import connect
from orchestrator.mock_llm.script import load_script
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.settings import Settings
from workers.worker import create_worker

DEMO_AGENTS = "orchestrator.demo_agents"
# How long in-process workers may finish their turns: at the end, and after a signal.
DRAIN_S = 10.0
DRAIN_AFTER_SIGNAL_S = 1.0
PROMPTS = (
    "What's the weather in Paris and Tokyo?",
    "Please calculate 17 * 23 + 4",
    # The agent forks: one sub-agent per city, each its own job, gathered at the end.
    "Research the weather in London, Paris and Tokyo in parallel",
)


@dataclass(frozen=True)
class DemoPlan:
    """What a demo runs: an agents module, the agent, the scripted model's script, prompts."""

    agents: str
    agent: str
    script: str
    prompts: tuple[str, ...]


WEATHER = DemoPlan(DEMO_AGENTS, "weather_chat", "demo", PROMPTS)
# `--pyrepl`: an agent that answers a data question by writing and running Python in its
# sandboxed interpreter (the output streams live), then a follow-up that reuses its state.
PYREPL = DemoPlan(
    DEMO_AGENTS,
    "data_analyst",
    "pyrepl",
    (
        "Here are our monthly sales: Jan 120, Feb 135, Mar 128, Apr 160, May 171, Jun 190. "
        "Which month grew the most, and what is the average?",
        "And what would June be with 10% more?",
    ),
)


@dataclass(frozen=True)
class DemoOptions:
    """What `orchestrator demo` was asked for (its command-line options)."""

    redis_url: str | None = None  # None: $ORCHESTRATOR_REDIS_URL, else an embedded Redis
    external_workers: bool = False  # leave the turns to `orchestrator worker` processes
    workers: int = 1  # in-process workers to start (without external_workers)
    llm_url: str | None = None  # an OpenAI-compatible base URL instead of the scripted model
    dashboard_port: int = 8000  # serve the dashboard here while the demo runs (0: off)
    keep_open: bool = False  # keep the dashboard up after the demo ends
    embedded: Literal["auto", "fake"] = "auto"  # a redis-server binary if found, or fakeredis
    pyrepl: bool = False  # the PyRepl demo (PYREPL) instead of the weather assistant

    @property
    def plan(self) -> DemoPlan:
        return PYREPL if self.pyrepl else WEATHER


class StopSignals:
    """SIGTERM and SIGINT as a request to stop, whatever the demo is doing.

    While the event loop runs, the first signal sets `requested` (an asyncio.Event) and
    the code waiting on it winds down in order. Outside the loop (starting or stopping the
    embedded Redis and the scripted model), and on a second signal, it raises
    KeyboardInterrupt, so the `with` blocks that own those unwind. Python's default for
    SIGTERM would end the process at once and leave an embedded `redis-server` running.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + (self.signum or 0)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def in_loop(self) -> Iterator[asyncio.Event]:
        """Deliver signals to the running loop as `requested`, for the block's duration."""
        self._loop = asyncio.get_running_loop()
        self.requested = asyncio.Event()
        if self.signum is not None:
            self.requested.set()
        try:
            yield self.requested
        finally:
            self._loop = self.requested = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if first and self._loop is not None and self.requested is not None:
            # A signal handler runs between two bytecodes of the loop's thread: hand the
            # request to the loop instead of acting here (asyncio.Runner does the same).
            self._loop.call_soon_threadsafe(self.requested.set)
            return
        raise KeyboardInterrupt


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _unless_stopped(work: Coroutine[Any, Any, int], stop: asyncio.Event) -> int | None:
    """`work`'s result, or None once `stop` is set first (`work` is then cancelled)."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(stopped)
    if task.done():
        return task.result()
    await cancel_and_wait(task)
    return None


@contextlib.contextmanager
def _model(options: DemoOptions, console: Console) -> Iterator[str]:
    if options.llm_url:
        console.print(f"[bold]model:[/] {options.llm_url} (your endpoint)")
        yield options.llm_url
        return
    script = f"{options.plan.script}.json"
    script_file = resources.files("orchestrator.mock_llm") / "scripts" / script
    with resources.as_file(script_file) as path, MockLLMThread(load_script(str(path))) as llm:
        console.print(
            f"[bold yellow]model: SCRIPTED MODEL[/] at {llm.base_url} — answers come from "
            "a script, not a neural network (no API key needed; --llm-url for a real one)"
        )
        yield llm.base_url


@contextlib.contextmanager
def _redis(options: DemoOptions, console: Console) -> Iterator[str]:
    url = options.redis_url or os.environ.get("ORCHESTRATOR_REDIS_URL")
    if url:
        console.print(f"[bold]redis:[/] {url}")
        yield url
        return
    with EmbeddedRedis(prefer_binary=options.embedded != "fake") as server:
        console.print(f"[bold yellow]redis: {server.label}[/]")
        yield server.url


async def _run(
    settings: Settings, options: DemoOptions, console: Console, signals: StopSignals
) -> int:
    with signals.in_loop() as stop:
        return await _run_until_stopped(settings, options, console, signals, stop)


async def _run_until_stopped(
    settings: Settings,
    options: DemoOptions,
    console: Console,
    signals: StopSignals,
    stop: asyncio.Event,
) -> int:
    plan = options.plan
    workers: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    if not options.external_workers:
        for _ in range(max(1, options.workers)):
            worker = await create_worker(settings, [plan.agents], handle_signals=False)
            workers.append(worker)
            tasks.append(asyncio.create_task(worker.async_run()))
        console.print(f"[bold]workers:[/] {len(workers)} in this process (arq, woken on submit)")
    else:
        console.print(f"[bold]workers:[/] external (`orchestrator worker --agents {plan.agents}`)")
    dashboard = await _start_dashboard(settings, options, console)
    try:
        code = await _unless_stopped(_conversation(settings, console, plan), stop)
        if code is None:
            console.print(f"[yellow]stopped by {signals.name}:[/] stopping what the demo started")
            return signals.exit_code
        if dashboard is not None and options.keep_open:
            console.print("[bold]dashboard stays open:[/] Ctrl-C to quit")
            await stop.wait()  # the way to leave, so the demo's own result stands
        return code
    finally:
        if dashboard is not None:
            server, task = dashboard
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5)
        grace = DRAIN_S
        if stop.is_set():
            grace = DRAIN_AFTER_SIGNAL_S
            # Turns still running are cancelled on purpose: no traceback for each.
            logging.getLogger("arq").setLevel(logging.CRITICAL)
        for worker in workers:
            await worker.drain(timeout=grace)
            await worker.close()
        for task in tasks:
            await cancel_and_wait(task)


async def _start_dashboard(settings: Settings, options: DemoOptions, console: Console) -> Any:
    """Serve the API + dashboard in this process while the demo runs."""
    if not options.dashboard_port:
        return None
    # Imported here: the api extra is needed only while a dashboard is served.
    import uvicorn

    from orchestrator.api import create_app

    if not port_is_free(options.dashboard_port):
        console.print(f"[dim]dashboard: port {options.dashboard_port} is busy; not served[/]")
        return None
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=options.dashboard_port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    console.print(
        f"[bold]dashboard:[/] http://127.0.0.1:{options.dashboard_port}/ (live while the demo runs)"
    )
    return server, task


async def _conversation(settings: Settings, console: Console, plan: DemoPlan) -> int:
    client = await connect(settings=settings)
    renderer = EventRenderer(console)
    history: list[dict[str, Any]] = []
    session_id = None
    async with client:
        for prompt in plan.prompts:
            console.rule(f"[bold]user:[/] {prompt}")
            run = await client.submit(
                f"{plan.agents}:{plan.agent}", prompt, history=history, session_id=session_id
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


def run_demo(options: DemoOptions) -> int:
    if options.dashboard_port:
        require_extra("api")  # before starting anything
    # arq and the workers log every job, fork and resume at INFO; the rendered events say
    # it better here, so the demo shows warnings and errors only.
    logging.getLogger("arq").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = Console(highlight=False)
    console.print(
        Panel.fit("orchestrator demo — distributed agent turns, live events", style="bold cyan")
    )
    with StopSignals().installed() as signals:
        try:
            with _model(options, console) as llm_url, _redis(options, console) as redis_url:
                os.environ["ORCHESTRATOR_DEMO_LLM_URL"] = llm_url
                settings = Settings.from_env(overrides={"redis_url": redis_url})
                return asyncio.run(_run(settings, options, console, signals))
        except KeyboardInterrupt:
            if signals.signum is None:
                raise
            console.print(f"[yellow]stopped by {signals.name}[/]")
            return signals.exit_code
