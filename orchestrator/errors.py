"""The orchestrator's exception tree. Every error the library raises on purpose is here.

OrchestratorError
├── ConfigError                 bad settings, provider.json, agent address
├── LLMError                    the model call failed (carries model, status, attempts)
│   ├── LLMHTTPError            a non-retryable HTTP status (400, 401, 404 ...)
│   ├── LLMRetriesExhausted     retryable failures (429, 5xx, timeouts, drops) ran out
│   └── LLMResponseError        the server answered with something that is not a completion
├── ToolError                   a tool could not run (unknown name, bad arguments)
│   ├── MemoryLimitError        a SelfReference memory record would outgrow its bounds
│   └── SandboxError            PyRepl's sandbox could not run the code (did not start)
│       └── SandboxLimitError   the code hit a sandbox limit and was stopped (limit named)
├── AgentError                  agent definition or invocation problems
│   ├── OutputParseError        an llm_function's answer never parsed into its return type
│   ├── SignatureError          strict_signature refused the function (also a TypeError)
│   └── InstanceNotBound        selfref.instance.fork with no agent bound (also a RuntimeError)
├── AbortedError                the turn was aborted (reason attached)
├── StoreError                  a storage backend (Redis) failed; chained to the cause
│   ├── StoreUnavailable        the backend could not be reached (dropped connection, timeout)
│   └── PayloadError            data read from a store is not valid (untrusted input)
└── RunError                    a distributed run ended badly (run id attached)
    ├── RunNotFound
    ├── UnknownAgent
    ├── StaleAttempt            a write fenced off: a later attempt of the run owns it now
    └── SessionNotOwned         the session belongs to another tenant
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


class MemoryLimitError(ToolError):
    """A SelfReference memory write would outgrow the record's bounds (too many
    experiences, an experience or summary too long). The message says what to do, since
    the model reads it as the tool's error."""


class SandboxError(ToolError):
    """PyRepl's sandbox could not run the code (it did not start, or cannot be isolated
    as its policy requires). The message says why, for the model and the operator."""


class SandboxLimitError(SandboxError):
    """The code hit a sandbox limit and was stopped: `limit` is "wall", "cpu", "memory",
    "output", "processes", "disk" or "died" (the interpreter ended)."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class AgentError(OrchestratorError):
    """An agent function is defined or called in a way that cannot work."""


class SignatureError(AgentError, TypeError):
    """`llm_chat(strict_signature=True)` refused the function's signature. Also a
    TypeError, which is what SimpleLLMFunc raises there."""


class InstanceNotBound(AgentError, RuntimeError):
    """`selfref.instance.fork*` on a SelfReference no agent is bound to (a RuntimeError
    too, as in SimpleLLMFunc)."""


class OutputParseError(AgentError):
    """An `llm_function`'s answer could not be parsed into its annotated return type,
    after the bounded retries. `text` is the model's last answer."""

    def __init__(self, message: str, *, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class AbortedError(OrchestratorError):
    """The turn was aborted."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "aborted")
        self.reason = reason


class StoreError(OrchestratorError):
    """A storage backend failed; the backend's exception is chained as __cause__."""


class StoreUnavailable(StoreError):
    """The backend could not be reached (connection refused or dropped, timeout).

    Worth retrying: nothing is wrong with the data, only with the path to it.
    """


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


class StaleAttempt(RunError):
    """A write was refused because a later attempt of the same run has taken over.

    Raised to a zombie attempt (its worker was presumed dead and the run was retried) so
    that it cannot overwrite the newer attempt's state.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        attempt: int | None = None,
        current_attempt: int | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id)
        self.attempt = attempt
        self.current_attempt = current_attempt


class SessionNotOwned(RunError):
    """The session belongs to another tenant: it cannot be joined, read or aborted.

    Raised by `Client.submit` (and the abort calls) when a caller acting for one tenant
    names a session that another tenant started.
    """

    def __init__(self, session_id: str, *, tenant: str | None = None) -> None:
        super().__init__(f"session {session_id!r} belongs to another tenant")
        self.session_id = session_id
        self.tenant = tenant
