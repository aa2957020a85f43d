"""Every `orchestrator` name the README and docs/*.md use in their code blocks exists.

`await orchestrator.connect(url)` in the README once raised AttributeError: the package
did not export `connect`. Here every `orchestrator.X[.Y]` reference and every
`from orchestrator[.mod] import X` in a fenced code block is resolved for real.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import orchestrator

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_FROM_IMPORT = re.compile(
    r"^\s*from\s+(orchestrator(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n#]+)", re.MULTILINE
)
_DOTTED = re.compile(r"(?<![\w.])orchestrator(?:\.\w+)+")


def used_names(markdown: str) -> set[str]:
    """Dotted names (`orchestrator.connect`, `orchestrator.mock_llm.load_script`) used in
    the fenced code blocks of one Markdown text."""
    names: set[str] = set()
    for block in _FENCE.findall(markdown):
        for module, imported in _FROM_IMPORT.findall(block):
            for part in imported.strip("()").split(","):
                name = part.split(" as ")[0].strip()
                if name:
                    names.add(f"{module}.{name}")
        names.update(_DOTTED.findall(block))
    return names


def resolve(dotted: str) -> Any:
    """The object a dotted name denotes: attributes of the package, or its submodules."""
    parts = dotted.split(".")
    found: Any = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], start=1):
        if hasattr(found, part):
            found = getattr(found, part)
        elif isinstance(found, ModuleType):
            found = importlib.import_module(".".join(parts[: index + 1]))
        else:
            raise AttributeError(f"{'.'.join(parts[:index])} has no attribute {part!r}")
    return found


def _documented() -> list[tuple[str, str]]:
    return sorted(
        (path.name, name) for path in DOCS for name in used_names(path.read_text("utf-8"))
    )


def test_names_are_found_in_code_blocks_only() -> None:
    text = (
        "Prose mentions orchestrator.nowhere, and ORCHESTRATOR_REDIS_URL.\n"
        "```python\n"
        "import orchestrator\n"
        "from orchestrator import (\n    Client,\n    connect as open_client,\n)\n"
        "from orchestrator.mock_llm import load_script  # a comment\n"
        "client = await orchestrator.connect(url)\n"
        "```\n"
        "```bash\norchestrator worker --agents orchestrator.demo_agents\n```\n"
    )
    assert used_names(text) == {
        "orchestrator.Client",
        "orchestrator.connect",
        "orchestrator.mock_llm",
        "orchestrator.mock_llm.load_script",
        "orchestrator.demo_agents",
    }
    with pytest.raises((AttributeError, ImportError)):
        resolve("orchestrator.no_such_name")


def test_the_docs_use_orchestrator_names_at_all() -> None:
    assert _documented(), "no orchestrator names found in README.md or docs/*.md"


@pytest.mark.parametrize(("doc", "name"), _documented())
def test_every_name_the_docs_use_exists(doc: str, name: str) -> None:
    try:
        resolve(name)
    except (AttributeError, ImportError) as exc:
        pytest.fail(f"{doc} uses {name}, which does not exist: {exc}")


def _exported_from(dotted: str) -> tuple[ModuleType, str] | None:
    """(module, name) when `dotted` names something a module exports (`orchestrator.X`,
    `orchestrator.sub.X`), None when it names a module itself (`orchestrator.mock_llm`)."""
    module_name, _, name = dotted.rpartition(".")
    module = importlib.import_module(module_name)
    if isinstance(getattr(module, name, None), ModuleType):
        return None
    if module is not orchestrator and not hasattr(module, "__all__"):
        return None
    return module, name


@pytest.mark.parametrize(("doc", "name"), _documented())
def test_every_name_the_docs_import_is_in_its_modules_all(doc: str, name: str) -> None:
    """`from orchestrator import X` in the docs means X is public: in `__all__` (of the
    package, or of the documented submodule), so a dropped export fails here."""
    exported = _exported_from(name)
    if exported is not None:
        module, attr = exported
        assert attr in module.__all__, f"{doc} uses {name}, missing from {module.__name__}.__all__"


def test_every_public_name_exists() -> None:
    # hasattr, not "is not None": a public constant may be None (DEFAULT_MAX_TOOL_CALLS).
    missing = [name for name in orchestrator.__all__ if not hasattr(orchestrator, name)]
    assert missing == []


@pytest.mark.parametrize(
    "name",
    [
        "AbortSignal",
        "EventYield",
        "ResponseYield",
        "StoreUnavailable",
        "RunNotFound",
        "SessionNotOwned",
        "ToolError",
        "connect",
        "Client",
        "Run",
        "RunResult",
        "Settings",
        "OrchestratorError",
        "Tool",
        "APIKeyPool",
        "OpenAICompatible",
        "llm_chat",
        "tool",
        "SelfReference",
    ],
)
def test_the_public_api_is_exported(name: str) -> None:
    assert name in orchestrator.__all__
    assert getattr(orchestrator, name) is not None


def test_importing_the_package_for_in_process_agents_does_not_load_redis() -> None:
    code = (
        "import sys, orchestrator\n"
        "from orchestrator import OpenAICompatible, llm_chat, tool\n"
        "assert 'redis' not in sys.modules and 'arq' not in sys.modules, 'loaded early'\n"
        "orchestrator.connect\n"
        "assert 'redis' in sys.modules, 'connect did not load the client'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_importing_the_package_loads_none_of_the_edges() -> None:
    """The API, the command line and the bench (and the extras they need) are imported
    only by whoever uses them."""
    code = (
        "import sys, orchestrator\n"
        "edges = ('orchestrator.api', 'orchestrator.cli', 'orchestrator.bench',\n"
        "         'fastapi', 'uvicorn', 'fakeredis')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(edges))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
