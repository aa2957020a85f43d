"""`pip install orchestrator` (no extras) gives the library and the worker, and nothing else.

A fresh virtualenv gets the project (`pip install --no-deps`) plus only the core
dependencies listed in pyproject.toml (pip's wheel cache makes that about 30 s): it has
no fastapi, uvicorn, rich or fakeredis. There a real `orchestrator worker` serves a turn
from the shared Redis, `worker --check` and `runs --json` see it, and the commands that
need an extra exit with a message naming the extra to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.keys import Keys
from tests.fixtures_llm import MockLLMFactory
from tests.integration.workerproc import drop_arq_keys

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# sniffio: httpx's stack retries a failed `import sniffio` on every request without it
# (a filesystem search per model call; pyproject.toml says more).
CORE = {"arq", "redis", "httpx", "h11", "pydantic", "structlog", "sniffio"}
EXTRA_MODULES = ("fastapi", "uvicorn", "starlette", "rich", "fakeredis")
AGENTS = "orchestrator.demo_agents"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())[
        "project"
    ]
    return project


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_a_plain_install_depends_on_the_library_and_worker_needs_only() -> None:
    """The core dependencies are the worker's; the edges' packages come with extras, and
    `[dev]` (what `make test` and `make demo` install) brings every extra."""
    project = _project()
    assert {_name(r) for r in project["dependencies"]} == CORE
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["api"]} == {"fastapi", "uvicorn"}
    assert {_name(r) for r in extras["cli"]} == {"rich"}
    assert {_name(r) for r in extras["embedded"]} == {"fakeredis"}
    assert "orchestrator[api,cli,embedded]" in extras["all"]
    assert {_name(r) for r in extras["fast"]} == {"uvloop"}  # optional: workers run without
    assert "orchestrator[all]" in extras["dev"]


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding the project and its core dependencies only."""
    root = tmp_path_factory.mktemp("lean")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    for package in ("orchestrator", "workers"):
        shutil.copytree(
            PROJECT_ROOT / package,
            source / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # This environment's pip installs into the new one (no ensurepip: faster).
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    pip += ["-q", "--disable-pip-version-check"]
    _run([*pip, *_project()["dependencies"]])
    _run([*pip, "--no-deps", str(source)])
    return venv


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"


def _lean_env() -> dict[str, str]:
    """The environment minus this project's settings and import path: the lean venv
    must find the installed copy, not the source tree."""
    drop = ("ORCHESTRATOR_", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _orchestrator(venv: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "orchestrator"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_lean_env(),
        cwd=venv,
    )


def test_the_lean_install_imports_the_library_and_worker_without_any_extra(
    lean_venv: Path,
) -> None:
    code = (
        "import importlib.util, json, sys\n"
        "import orchestrator, orchestrator.cli, orchestrator.demo_agents, workers.worker\n"
        "from orchestrator import connect, llm_chat, tool\n"
        f"extras = {EXTRA_MODULES!r}\n"
        "print(json.dumps({\n"
        "    'loaded': [m for m in extras if m in sys.modules],\n"
        "    'installed': [m for m in extras if importlib.util.find_spec(m)],\n"
        "    'from': orchestrator.__file__,\n"
        "}))\n"
    )
    done = subprocess.run(
        [str(lean_venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_lean_env(),
        cwd=lean_venv,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["installed"] == []  # the venv is as lean as a plain install
    assert found["loaded"] == []
    assert found["from"].startswith(str(lean_venv))


@pytest.mark.parametrize(
    ("command", "extra"),
    [(["api"], "api"), (["demo", "--dashboard-port", "0"], "cli"), (["bench"], "cli")],
)
def test_a_command_needing_an_extra_names_it(
    lean_venv: Path, command: list[str], extra: str
) -> None:
    done = _orchestrator(lean_venv, *command)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"pip install 'orchestrator[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def worker(
    lean_venv: Path, redis_url: str, keys: Keys, mock_llm: MockLLMFactory, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`orchestrator worker` of the lean venv, serving the demo agents on the scripted model."""
    llm = mock_llm({"model": "scripted", "rules": [], "fallback": {"content": "lean and fine"}})
    env = {**_lean_env(), "ORCHESTRATOR_DEMO_LLM_URL": llm.base_url, "PYTHONUNBUFFERED": "1"}
    args = ["worker", "--redis", redis_url, "--prefix", keys.prefix, "--agents", AGENTS]
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [str(lean_venv / "bin" / "orchestrator"), *args],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def _wait_registered(client: Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while proc.pid not in {int(w.get("pid", -1)) for w in await client.workers.list()}:
        assert proc.poll() is None, "the lean worker exited at startup (see worker.log)"
        assert time.monotonic() < deadline, "the lean worker never heartbeat (see worker.log)"
        await asyncio.sleep(0.1)


async def test_a_lean_worker_serves_a_turn_and_the_cli_sees_it(
    lean_venv: Path,
    worker: subprocess.Popen[bytes],
    client: Client,
    redis_url: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    try:
        await _wait_registered(client, worker)
        run = await client.submit(f"{AGENTS}:weather_chat", "Hello", history=[])
        result = await run.result(timeout=60)
        assert result.ok, result.error
        assert result.response == "lean and fine"

        where = ["--redis", redis_url, "--prefix", keys.prefix]
        check = await asyncio.to_thread(_orchestrator, lean_venv, "worker", "--check", *where)
        assert check.returncode == 0, check.stderr
        assert "1 live worker(s)" in check.stdout
        listed = await asyncio.to_thread(_orchestrator, lean_venv, "runs", "--json", *where)
        assert listed.returncode == 0, listed.stderr
        assert [json.loads(line)["run_id"] for line in listed.stdout.splitlines()] == [run.run_id]
    except AssertionError:
        print(log.read_text(errors="replace"))  # shown by pytest with the failure
        raise
    finally:
        await drop_arq_keys(client)
