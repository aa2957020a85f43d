"""The scripted model: an OpenAI-compatible server that answers from a script.

It is what the demo, the tests and the benchmarks talk to over real HTTP, and it says so
(`owned_by: "orchestrator-scripted"`, header `X-Scripted-Model: 1`). The script format
is documented in docs/scripted-model.md; `orchestrator.mock_llm.testing` has a
thread-backed server for tests.
"""

from orchestrator.mock_llm.script import Script, load_script
from orchestrator.mock_llm.server import MockLLMServer, serve

__all__ = ["MockLLMServer", "Script", "load_script", "serve"]
