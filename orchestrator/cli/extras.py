"""The optional extras the commands need, and a clear message when one is missing.

`pip install orchestrator` gives the library and the worker. Commands that need more
import it when they run and, if it is missing, say which extra to install:

    api        fastapi, uvicorn     `orchestrator api`, the demo's dashboard
    cli        rich                 `orchestrator demo`, `bench`, the rendered submit/tail/runs
    embedded   fakeredis            an embedded Redis where no redis-server binary is found
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

from orchestrator.errors import ConfigError

__all__ = ["EXTRAS", "missing_extra", "require_extra", "translate_missing"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "api": ("fastapi", "uvicorn", "starlette"),
    "cli": ("rich",),
    "embedded": ("fakeredis",),
}


def missing_extra(extra: str, module: str) -> ConfigError:
    """The error for a missing package of an extra; it names the extra to install."""
    return ConfigError(
        f"this needs {module}, which is not installed: pip install 'orchestrator[{extra}]'"
    )


def require_extra(extra: str) -> None:
    """Raise ConfigError (naming the extra) unless every package of `extra` can be imported."""
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise missing_extra(extra, module)


@contextlib.contextmanager
def translate_missing() -> Iterator[None]:
    """Turn an ImportError of an extra's package raised inside into a ConfigError
    naming the extra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        for extra, modules in EXTRAS.items():
            if top in modules:
                raise missing_extra(extra, top) from exc
        raise
