"""The port check: SimpleLLMFunc programs run against orchestrator with only the import
renamed.

Each program in tests/port_check/ is written for SimpleLLMFunc (`from SimpleLLMFunc
import ...`, a provider.json, `asyncio.run(main())`) and uses several features at once.
Here its text gets one change, `SimpleLLMFunc` -> `orchestrator` in the import lines,
and it runs against the scripted model over real HTTP; what it prints is checked.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator import OpenAICompatible
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(30)

PROGRAMS = Path(__file__).resolve().parents[1] / "port_check"
_IMPORT = re.compile(r"^(\s*(?:from|import)\s+)SimpleLLMFunc\b", re.MULTILINE)


def renamed(source: str) -> str:
    """The program with only its imports pointed at orchestrator."""
    return _IMPORT.sub(r"\1orchestrator", source)


@pytest.fixture
async def port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_llm: MockLLMFactory
) -> AsyncIterator[Any]:
    loaded: list[str] = []

    def load(program: str, script: dict[str, Any]) -> ModuleType:
        server = mock_llm(script)
        provider = {
            "scripted": [
                {
                    "model_name": "scripted",
                    "api_keys": ["sk-1"],
                    "base_url": server.base_url,
                    "retry_delay": 0.01,
                }
            ]
        }
        (tmp_path / "provider.json").write_text(json.dumps(provider))
        source = (PROGRAMS / f"{program}.py").read_text()
        assert "from SimpleLLMFunc" in source
        (tmp_path / f"ported_{program}.py").write_text(renamed(source))
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        loaded.append(f"ported_{program}")
        return importlib.import_module(f"ported_{program}")

    yield load
    for name in loaded:
        module = sys.modules.pop(name, None)
        # The programs never close their model clients (SimpleLLMFunc users do not):
        # close them here, so no socket outlives the test.
        for value in vars(module or ModuleType(name)).values():
            if isinstance(value, OpenAICompatible):
                await value.aclose()


TRIAGE_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "match": {"system_contains": "spam", "last_user_contains": "PRIZE"},
            "reply": {"content": "true"},
        },
        {"match": {"system_contains": "spam"}, "reply": {"content": "false"}},
        {
            "match": {"system_contains": "ticket", "last_role": "user"},
            "reply": {
                "tool_calls": [
                    {"name": "lookup_customer", "arguments": {"email": "ada@example.com"}}
                ]
            },
        },
        {
            "match": {"system_contains": "ticket", "last_tool_result_contains": "enterprise"},
            "reply": {
                "content": 'Ticket:\n```json\n{"title": "Export broken", "priority": 5, '
                '"tags": ["export", "enterprise"]}\n```'
            },
        },
        {
            "match": {"system_contains": "keywords"},
            "reply": {"content": '["export", "broken", "today"]'},
        },
    ]
}


async def test_the_triage_program_ports(port: Any, capsys: pytest.CaptureFixture[str]) -> None:
    program = port("triage_program", TRIAGE_SCRIPT)
    await program.main()
    assert capsys.readouterr().out.splitlines() == [
        "ticket: Export broken p5 export,enterprise",
        "spam: bob@prizes.biz",
        "keywords: export, broken, today",
        "keyword tokens: True",
    ]


SUPPORT_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "match": {"last_user_contains": "export", "last_role": "user"},
            "reply": {"tool_calls": [{"name": "search_docs", "arguments": {"query": "export"}}]},
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "Use Settings > Export."}},
        {
            "match": {"last_user_contains": "story"},
            "latency": {"token_ms": 50},
            "reply": {"content": " ".join(["once upon a time"] * 40)},
        },
        {"match": {"last_user_contains": "thanks"}, "reply": {"content": "You are welcome."}},
    ]
}


async def test_the_support_program_ports(port: Any, capsys: pytest.CaptureFixture[str]) -> None:
    program = port("support_program", SUPPORT_SCRIPT)
    await program.main()
    assert capsys.readouterr().out.splitlines() == [
        "progress: searching (search_docs)",
        "tool search_docs: 3 results for export",
        "tokens used: True",
        "answer: Use Settings > Export.",
        "tokens used: True",
        "answer: You are welcome.",
        "history roles: system user assistant tool assistant user assistant",
        "aborted: True",
        "llm calls with usage: 3",  # the aborted call was cut off before its usage
    ]


RESEARCH_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "match": {"last_user_contains": "Research", "last_role": "user"},
            "reply": {"content": "Fast enough."},
        },
        {
            "match": {"last_user_contains": "Compare", "last_role": "user"},
            "reply": {
                "tool_calls": [
                    {"name": "selfref_fork_gather_all", "arguments": {}},
                    {"name": "selfref_fork_spawn", "arguments": {"message": "Research Postgres"}},
                    {"name": "selfref_fork_spawn", "arguments": {"message": "Research SQLite"}},
                ]
            },
        },
        {
            "match": {"last_role": "tool"},
            "reply": {"content": "Both fit Atlas; Postgres scales further."},
        },
    ]
}


async def test_the_research_program_ports(port: Any, capsys: pytest.CaptureFixture[str]) -> None:
    program = port("research_program", RESEARCH_SCRIPT)
    await program.main()
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines[:2]) == ["fork_1 (depth 1) finished", "fork_2 (depth 1) finished"]
    assert lines[2:] == [
        "answer: Both fit Atlas; Postgres scales further.",
        "lanes: fork_1, fork_2, main",
        "remembers Atlas: True",
        "memory keys: researcher",
    ]


GALLERY_SCRIPT: dict[str, Any] = {
    "strict": True,
    "rules": [
        {
            "match": {"system_contains": "Describe the photo"},
            "reply": {"content": '{"subject": "a red lighthouse", "mood": "calm"}'},
        },
        {"match": {"last_user_contains": "English"}, "reply": {"content": "Red light, calm sea."}},
        {"match": {"last_user_contains": "French"}, "reply": {"content": "Phare rouge."}},
        {"match": {"last_user_contains": "German"}, "reply": {"content": "Roter Leuchtturm."}},
    ],
}


async def test_the_gallery_program_ports(
    port: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "photo.png").write_bytes(PNG)
    program = port("gallery_program", GALLERY_SCRIPT)
    await program.main()
    assert capsys.readouterr().out.splitlines() == [
        "subject: a red lighthouse",
        "english: Red light, calm sea. from curator::fork::1",
        "completed Phare rouge.",
        "completed Roter Leuchtturm.",
        "curator memory untouched: True",
    ]


# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5e3b0e50000000049454e44ae426082"
)
