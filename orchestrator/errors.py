"""The orchestrator's exception tree. Every error the library raises on purpose is here.

OrchestratorError
├── ConfigError                 bad settings, provider.json, agent address
├── LLMError                    the model call failed (carries model, status, attempts)
│   ├── LLMHTTPError            a non-retryable HTTP status (400, 401, 404 ...)
│   ├── LLMRetriesExhausted     retryable failures (429, 5xx, timeouts, drops) ran out
│   └── LLMResponseError        the server answered with something that is not a completion
├── ToolError                   a tool could not run (unknown name, bad arguments)
├── AgentError                  agent definition or invocation problems
├── AbortedError                the turn was aborted (reason attached)
├── StoreError                  a storage backend (Redis) failed; chained to the cause
│   └── PayloadError            data read from a store is not valid (untrusted input)
└── RunError                    a distributed run ended badly (run id attached)
    ├── RunNotFound
    └── UnknownAgent
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error the orchestrator raises on purpose."""


class ConfigError(OrchestratorError):
    """Settings, provider files or agent addresses that cannot be used."""


class LLMError(OrchestratorError):
    """A model call failed."""

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        status_code: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.status_code = status_code
        self.attempts = attempts


class LLMHTTPError(LLMError):
    """The server answered with an HTTP status that retrying will not fix."""


class LLMRetriesExhausted(LLMError):
    """Retryable failures (429, 5xx, timeouts, dropped connections) outlasted the retries."""


class LLMResponseError(LLMError):
    """The server's answer is not a chat completion we can read."""


class ToolError(OrchestratorError):
    """A tool call that could not be carried out (unknown tool, invalid arguments)."""


class AgentError(OrchestratorError):
    """An agent function is defined or called in a way that cannot work."""


class AbortedError(OrchestratorError):
    """The turn was aborted."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "aborted")
        self.reason = reason


class StoreError(OrchestratorError):
    """A storage backend failed; the backend's exception is chained as __cause__."""


class PayloadError(StoreError):
    """Data read from a store does not decode to what it should (it is untrusted input)."""


class RunError(OrchestratorError):
    """A distributed run could not be carried out."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunNotFound(RunError):
    """No run with that id."""


class UnknownAgent(RunError):
    """The agent address does not name an agent this worker knows."""
