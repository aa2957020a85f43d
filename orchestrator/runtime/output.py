"""An `llm_function`'s return type: how to ask the model for it and how to read the answer.

`str` (and no annotation, `Any`) takes the answer's text as it is. Every other type
(int, float, bool, lists, dicts, unions, pydantic models, anything pydantic can validate)
is asked for as one JSON value matching the type's JSON schema, and read back with
pydantic: from the whole answer, from a fenced ```json block, or from the first JSON
object or array in it; scalars also from their bare text ("42", "true").
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

__all__ = ["OutputParser"]

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TEXT_TYPES: tuple[Any, ...] = (str, Any, inspect.Signature.empty, None)


class OutputParser:
    """Reads a model's answer as one value of `return_type`."""

    def __init__(self, return_type: Any) -> None:
        self.return_type = return_type
        self.is_text = return_type in _TEXT_TYPES
        self._adapter: TypeAdapter[Any] | None = None if self.is_text else TypeAdapter(return_type)

    def describe(self) -> str:
        """The return type as the system prompt states it."""
        if self._adapter is None:
            return "text (str)"
        try:
            schema = json.dumps(self._adapter.json_schema(), ensure_ascii=False)
        except Exception:  # some types have no JSON schema; their name still helps
            schema = ""
        name = getattr(self.return_type, "__name__", None) or str(self.return_type)
        described = f"{name}, as one JSON value"
        return f"{described} matching this JSON schema: {schema}" if schema else described

    def instructions(self) -> str:
        """How the answer must look (appended to the function's system prompt)."""
        if self._adapter is None:
            return "Reply with the result as plain text, without preamble."
        return (
            f"Reply with only the result as one JSON value (no prose, no XML): {self.describe()}."
        )

    def parse(self, text: str) -> Any:
        """The answer as a value of the return type; ValueError says why it is not one."""
        if self._adapter is None:
            return text.strip()
        problem = "the answer is empty"
        for candidate in _candidates(text):
            try:
                return self._adapter.validate_json(candidate)
            except ValidationError as exc:
                problem = _short(exc)
            try:
                return self._adapter.validate_python(candidate)
            except ValidationError:
                pass
        raise ValueError(problem)

    def to_json(self, value: Any) -> Any:
        """The value as JSON data (a pydantic model becomes its dict)."""
        return to_jsonable_python(value)

    def from_json(self, data: Any) -> Any:
        """A value sent as JSON data (or JSON text) back as the return type."""
        if self._adapter is None:
            return data
        if isinstance(data, str | bytes):
            try:
                return self._adapter.validate_json(data)
            except ValidationError:
                return self._adapter.validate_python(data)
        return self._adapter.validate_python(data)


def _candidates(text: str) -> list[str]:
    stripped = text.strip()
    found = [match.strip() for match in _FENCE.findall(text)]
    found.append(stripped)
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = stripped.find(opener), stripped.rfind(closer)
        if 0 <= start < end:
            found.append(stripped[start : end + 1])
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'`":
        found.append(stripped[1:-1])
    return [c for i, c in enumerate(found) if c and c not in found[:i]]


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where + ': ' if where else ''}{first['msg']}"
