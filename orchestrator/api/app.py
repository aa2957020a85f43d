"""`create_app(settings)`: the FastAPI application (API + dashboard)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources

import structlog
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from orchestrator.api import batches, cluster, events, ops, runs, sessions, trees
from orchestrator.api.auth import ApiKeys
from orchestrator.api.limits import BodySizeLimit
from orchestrator.api.ops import OPEN_WARNING
from orchestrator.api.problems import install_handlers
from orchestrator.api.state import ApiState, lazy_client
from orchestrator.settings import Settings

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

log = structlog.get_logger(__name__)

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_SSE_KEEPALIVE_S = 15.0


def create_app(
    settings: Settings,
    *,
    api_keys: Mapping[str, str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    sse_keepalive_s: float = DEFAULT_SSE_KEEPALIVE_S,
) -> FastAPI:
    """The HTTP API and dashboard for the orchestrator at `settings.redis_url`.

    `api_keys` maps each bearer key to its tenant; without keys the API is open (and says
    so, loudly, in the log and in /healthz). Connections to Redis open on first use, so
    the app starts while Redis is down and answers 503 until it is back.
    """
    state = ApiState(
        settings=settings,
        client=lazy_client(settings),
        keys=ApiKeys(api_keys),
        max_body_bytes=max_body_bytes,
        sse_keepalive_s=sse_keepalive_s,
    )
    if state.keys.open:
        log.warning("api.open", warning=f"!!! {OPEN_WARNING.upper()} !!!")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.client.close()

    app = FastAPI(
        title="orchestrator",
        summary="Submit, watch and abort distributed agent runs.",
        version="1",
        lifespan=lifespan,
    )
    app.state.api = state
    install_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.include_router(runs.router)
    app.include_router(trees.router)
    app.include_router(sessions.router)
    app.include_router(events.router)
    app.include_router(ops.router)
    app.include_router(cluster.router)
    app.include_router(batches.router)
    _mount_dashboard(app)
    return app


def _mount_dashboard(app: FastAPI) -> None:
    static = resources.files("orchestrator.api") / "static"
    index_html = (static / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(index_html, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
