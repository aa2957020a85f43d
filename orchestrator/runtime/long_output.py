"""`too_long_to_file`: a tool's oversized text result goes to a file, the model gets the
start of it and a note saying where the rest is (SimpleLLMFunc's behaviour).

The token count is an estimate (no tokenizer): CJK characters count about 2 tokens,
other words about 1.3, and never fewer than one token per 4 characters. The file is
written in the process that ran the tool (on a worker: that worker's temp directory).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["TOO_LONG_TO_FILE_MAX_TOKENS", "estimate_tokens", "spill_long_result", "truncate"]

TOO_LONG_TO_FILE_MAX_TOKENS = 20_000

_CJK = re.compile(r"[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]")
_WORD = re.compile(r"[A-Za-z0-9_]+")


def estimate_tokens(text: str) -> int:
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(text))
    other = len(text) - cjk - sum(len(w) for w in _WORD.findall(text))
    estimate = int(cjk * 2 + words * 1.3 + max(other, 0) * 0.25)
    return max(estimate, len(text) // 4)


def truncate(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` estimated at no more than `max_tokens` tokens."""
    if estimate_tokens(text) <= max_tokens:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_tokens(text[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def spill_long_result(
    tool_name: str,
    result: str,
    *,
    max_tokens: int = TOO_LONG_TO_FILE_MAX_TOKENS,
    directory: str | Path | None = None,
) -> str:
    """`result` unchanged if short enough; else its start plus where the whole is."""
    if estimate_tokens(result) <= max_tokens:
        return result
    folder = Path(directory or tempfile.gettempdir())
    path = folder / f"tool_result_{tool_name}_{os.urandom(8).hex()}.txt"
    try:
        path.write_text(result, encoding="utf-8")
    except OSError:
        return result  # nowhere to put it: the model gets all of it, as without the option
    return (
        truncate(result, max_tokens) + "\n\n<system-reminder>\n"
        "Tool output was too long, so this result has been truncated. "
        f"The full result was saved to {path}. "
        "Use file-operation tools or PyRepl to read only the parts you need. "
        "If you do not have a way to read files, warn the user and ask for help.\n"
        "</system-reminder>"
    )
