"""PyRepl: a sandboxed, persistent Python interpreter that agents drive with tools.

    from orchestrator.pyrepl import PyRepl

    repl = PyRepl()
    @llm_chat(llm_interface=llm, toolkit=repl.toolset, self_reference=SelfReference())
    async def analyst(message: str, history=None): '''Answer with Python.'''

toolkit    PyRepl: execute_code / reset_repl / inspect_repl, per session and fork, rebuilt
           from the session's journal on another worker
sandbox    Sandbox: one interpreter process, its pipes and the limits the worker enforces
child      the program inside the sandbox (namespaces, read-only files, its own user)
bridge     the code's `runtime.*` calls, answered with the turn's runtime (or a replay)
limits     SandboxLimits, SandboxPolicy

docs/pyrepl.md describes the isolation, the limits and what happens across workers.
"""

from orchestrator.pyrepl.limits import SandboxLimits, SandboxPolicy
from orchestrator.pyrepl.toolkit import PyRepl

__all__ = ["PyRepl", "SandboxLimits", "SandboxPolicy"]
