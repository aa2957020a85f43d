"""`orchestrator` command line: thin — parse, build settings, call the library.

Only this module reads argparse: every command calls a function with plain arguments
(`commands.submit(settings, agent, message, ...)`, `run_demo(DemoOptions(...))`,
`run_bench(url, ...)`), which library code can call too. Commands that need an optional
extra import it when they run; a missing one is reported with the extra to install.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from orchestrator.cli.commands import abort, batch, runs, submit, tail
from orchestrator.cli.embedded import choose_redis
from orchestrator.cli.extras import translate_missing
from orchestrator.cli.health import check_workers, probe
from orchestrator.errors import OrchestratorError
from orchestrator.logs import configure_logging
from orchestrator.mock_llm import serve as serve_mock_llm
from orchestrator.settings import Settings
from workers.state import WorkerState
from workers.worker import run as run_worker


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "redis", None):
        overrides["redis_url"] = args.redis
    if getattr(args, "prefix", None):
        overrides["key_prefix"] = args.prefix
    if getattr(args, "concurrency", None):
        overrides["concurrency"] = args.concurrency
    return Settings.from_env(overrides=overrides)


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", help="Redis URL (default: $ORCHESTRATOR_REDIS_URL or local)")
    parser.add_argument("--prefix", help="key prefix (default: orc)")


def _cmd_mock_llm(args: argparse.Namespace) -> int:
    serve_mock_llm(args.host, args.port, args.script, strict=args.strict)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.check:
        return asyncio.run(check_workers(settings))
    if args.drain or args.alive:
        state = WorkerState.from_settings(settings)
        if args.alive:
            return state.check_alive()
        return asyncio.run(state.request_drain(timeout_s=settings.shutdown_grace_s + 5))
    agents = args.agents or list(settings.worker_agents)
    if not agents:
        print(
            "orchestrator worker: give at least one --agents MODULE "
            "(or ORCHESTRATOR_WORKER_AGENTS)",
            file=sys.stderr,
        )
        return 2
    run_worker(settings, agents)
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    # Imported here, like every edge that needs an extra: fastapi and uvicorn (the api
    # extra) are not installed with the worker. `main` names the extra if one is missing.
    from orchestrator.api import parse_api_key, parse_api_keys
    from orchestrator.api.serve import serve

    settings = _settings(args)
    # Keys from the environment (ORCHESTRATOR_API_KEYS or its _FILE), then --api-key.
    keys = parse_api_keys(settings.api_keys.get_secret_value())
    keys.update(parse_api_key(spec) for spec in args.api_key)
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    serve(settings, host, port, keys or None, structured_logs=args.json_logs)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    return probe(_settings(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.cli.demo import DemoOptions, run_demo  # rich: the cli extra

    options = DemoOptions(
        redis_url=args.redis,
        external_workers=args.external_workers,
        workers=args.workers,
        llm_url=args.llm_url,
        dashboard_port=args.dashboard_port,
        keep_open=args.keep_open,
        embedded=args.embedded,
        pyrepl=args.pyrepl,
    )
    return run_demo(options)


def _cmd_submit(args: argparse.Namespace) -> int:
    return asyncio.run(
        submit(
            _settings(args),
            args.agent,
            args.message,
            session_id=args.session,
            history_file=args.history,
            follow=args.follow,
            as_json=args.json,
        )
    )


def _cmd_tail(args: argparse.Namespace) -> int:
    return asyncio.run(
        tail(
            _settings(args),
            args.id,
            after=args.from_id,
            follow=not args.no_follow,
            as_json=args.json,
        )
    )


def _cmd_abort(args: argparse.Namespace) -> int:
    return asyncio.run(abort(_settings(args), args.id, args.reason))


def _cmd_runs(args: argparse.Namespace) -> int:
    return asyncio.run(
        runs(
            _settings(args),
            status=args.status,
            agent=args.agent,
            limit=args.limit,
            as_json=args.json,
        )
    )


def _cmd_batch(args: argparse.Namespace) -> int:
    return asyncio.run(batch(_settings(args), args.id, follow=args.follow, as_json=args.json))


def _cmd_bench(args: argparse.Namespace) -> int:
    from orchestrator.bench import run_bench  # rich: the cli extra

    with choose_redis(args.redis) as (url, label):
        return run_bench(
            url, redis_label=label, quick=args.quick, only=args.only, prefix=args.prefix
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the demo (embedded Redis + scripted model by default)")
    _add_redis(p)
    p.add_argument(
        "--external-workers",
        action="store_true",
        help="do not start workers here: use `orchestrator worker` processes",
    )
    p.add_argument("--workers", type=int, default=1, help="in-process workers to start")
    p.add_argument("--llm-url", help="an OpenAI-compatible base URL instead of the scripted model")
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=8000,
        help="serve the live dashboard here while the demo runs (0: off)",
    )
    p.add_argument(
        "--keep-open", action="store_true", help="keep the dashboard up after the demo ends"
    )
    p.add_argument(
        "--embedded",
        choices=["auto", "fake"],
        default="auto",
        help="embedded Redis: a redis-server binary if found (auto) or fakeredis",
    )
    p.add_argument(
        "--pyrepl",
        action="store_true",
        help="the PyRepl demo: an agent answers a data question by running Python",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("worker", help="run an arq worker serving agents")
    _add_redis(p)
    p.add_argument(
        "--agents",
        action="append",
        default=[],
        metavar="MODULE",
        help="module whose llm_chat agents this worker serves (repeatable)",
    )
    p.add_argument("--concurrency", type=int, help="turns run at once (default 10)")
    p.add_argument("--check", action="store_true", help="report live workers and exit")
    p.add_argument(
        "--drain",
        action="store_true",
        help="tell the worker on this host to stop taking jobs; return once its running "
        "turns are done (a preStop hook; needs ORCHESTRATOR_WORKER_STATE_DIR)",
    )
    p.add_argument(
        "--alive",
        action="store_true",
        help="exit 0 if the worker on this host heartbeat recently (a liveness probe; "
        "needs ORCHESTRATOR_WORKER_STATE_DIR)",
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("api", help="serve the HTTP API and the live dashboard")
    _add_redis(p)
    p.add_argument("--host", help="default: $ORCHESTRATOR_API_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default: $ORCHESTRATOR_API_PORT or 8000")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY:TENANT",
        help="accept this bearer key for this tenant (repeatable; visible in `ps`: prefer "
        "ORCHESTRATOR_API_KEYS_FILE; none at all = open)",
    )
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser(
        "probe",
        help="exit 0 if this container's worker heartbeats or its API answers /healthz "
        "(the image's HEALTHCHECK)",
    )
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("mock-llm", help="serve the scripted OpenAI-compatible model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--script", help="script JSON (default: the demo script)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse requests the way llama.cpp's servers do (HTTP 500), e.g. content:null "
        "beside tool_calls",
    )
    p.set_defaults(func=_cmd_mock_llm)

    p = sub.add_parser("submit", help="submit an agent turn")
    _add_redis(p)
    p.add_argument("agent", help="module:function")
    p.add_argument("message")
    p.add_argument("--session", help="session id (default: a new one)")
    p.add_argument("--history", help="JSON file with the history (list of messages)")
    p.add_argument("--follow", action="store_true", help="render the run live until it ends")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("tail", help="follow a run's or session's events")
    _add_redis(p)
    p.add_argument("id", help="run id or session id")
    p.add_argument("--from", dest="from_id", help="resume after this stream id")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.add_argument("--no-follow", action="store_true", help="print what is there and exit")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser("abort", help="abort a run (or a whole session)")
    _add_redis(p)
    p.add_argument("id", help="run id or session id")
    p.add_argument("--reason", default="user_abort")
    p.set_defaults(func=_cmd_abort)

    p = sub.add_parser("runs", help="list runs")
    _add_redis(p)
    p.add_argument("--status")
    p.add_argument("--agent")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("batch", help="show a batch's progress (Client.submit_batch)")
    _add_redis(p)
    p.add_argument("id", help="batch id")
    p.add_argument("--follow", action="store_true", help="print again every second until done")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("bench", help="run the benchmarks and print figures beside baselines")
    _add_redis(p)
    p.add_argument("--quick", action="store_true", help="fewer samples")
    p.add_argument(
        "--only",
        choices=["core", "forks", "loops", "batches"],
        help=(
            "run one part: core (dispatch, turns, events, abort), forks (fan-out, abort "
            "tree, added latency), loops (many agent loops beside lm-deluge) or batches "
            "(lm-deluge's client: one process vs 2 workers)"
        ),
    )
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        args.json_logs = configure_logging(settings.log_format, settings.log_level)
        with translate_missing():
            code: int = args.func(args)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # an ORCHESTRATOR_* variable (or flag) out of range
        print(f"orchestrator: invalid settings: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
