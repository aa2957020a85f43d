"""Fixtures for the scripted model (docs/scripted-model.md).

`mock_llm` is a factory: `llm = mock_llm(script_dict)` starts a scripted model on a
background thread (reachable from sync code, async code and worker processes alike) and
returns its `MockLLMThread`; `llm.base_url` is the OpenAI base URL. With no script it
serves the packaged demo script. Every server started is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from orchestrator.mock_llm import Script, load_script
from orchestrator.mock_llm.testing import MockLLMThread

MockLLMFactory = Callable[..., MockLLMThread]


@pytest.fixture
def mock_llm() -> Iterator[MockLLMFactory]:
    started: list[MockLLMThread] = []

    def start(script: Script | Mapping[str, Any] | None = None) -> MockLLMThread:
        server = MockLLMThread(script if script is not None else load_script("demo"))
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()
