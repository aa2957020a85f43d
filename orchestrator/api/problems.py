"""Errors as HTTP answers: one place turns exceptions into `ErrorBody` JSON.

Bad input is always a 4xx naming what is wrong (never a 500); Redis trouble is a 503.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from orchestrator.errors import PayloadError, RunNotFound, SessionNotOwned, StoreError

__all__ = ["ApiProblem", "install_handlers", "problem_response"]

log = structlog.get_logger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


class ApiProblem(HTTPException):
    """An HTTP error with a stable code, raised by the routes."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, headers)
        self.code = code or _CODES.get(status_code, "error")


def problem_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = getattr(exc, "code", None) or _CODES.get(exc.status_code, "error")
    return problem_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


def _details(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return problem_response(400, "malformed_json", "the request body is not valid JSON")
    summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details[:5])
    return problem_response(422, "validation_error", summary or "invalid request", details)


def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(404, "not_found", str(exc))


def _not_owned(request: Request, exc: Exception) -> JSONResponse:
    # Another tenant's session looks like no session at all.
    assert isinstance(exc, SessionNotOwned)
    return problem_response(404, "not_found", f"no session {exc.session_id!r}")


def _store_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, PayloadError):
        log.error("api.corrupt_data", path=request.url.path, error=str(exc))
        return problem_response(500, "corrupt_data", str(exc))
    log.warning("api.store_unavailable", path=request.url.path, error=str(exc))
    return problem_response(
        503, "store_unavailable", f"the orchestrator's Redis is not usable: {exc}"
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RunNotFound, _not_found)
    app.add_exception_handler(SessionNotOwned, _not_owned)
    app.add_exception_handler(StoreError, _store_error)
