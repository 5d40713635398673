"""One JSON error shape for every failure: {"error": {"type", "message", "field"}}, and the one
table that says how each refusal of the inference core is answered in HTTP."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import (
    Cancelled,
    HeadNotFound,
    InferenceError,
    LayerNotFound,
    NoAttention,
    ShuttingDown,
    TimedOut,
    TokenNotFound,
    VectorsNotServed,
)
from service.schemas import PATTERN_MEANINGS

log = logging.getLogger("service.errors")

# nginx's status for a request its client closed before the answer: no client ever reads it, but
# the access log and the request metrics count these apart from the errors of the service.
CLIENT_CLOSED = 499

# The inference core's refusals, as HTTP: (status, error type). A class not listed here answers
# as its nearest listed base class.
STATUS: dict[type[InferenceError], tuple[int, str]] = {
    NoAttention: (422, "no_attention"),
    LayerNotFound: (404, "layer_not_found"),
    HeadNotFound: (404, "head_not_found"),
    TokenNotFound: (404, "token_not_found"),
    VectorsNotServed: (422, "vectors_not_served"),
    TimedOut: (504, "timeout"),
    Cancelled: (CLIENT_CLOSED, "client_closed_request"),
    ShuttingDown: (503, "shutting_down"),
    InferenceError: (422, "invalid_request"),
}
# Refusals that a retry may get past: the client is told when (seconds).
RETRY_AFTER: dict[type[InferenceError], str] = {ShuttingDown: "1"}


class APIError(Exception):
    """An error with its HTTP status, a machine-readable type and the field it concerns."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.field = status, type_, message, field
        self.headers = headers


def api_error(error: APIError | InferenceError) -> APIError:
    """``error`` as the service answers it: an inference error mapped through STATUS."""
    if isinstance(error, APIError):
        return error
    kind = next(k for k in type(error).__mro__ if k in STATUS)
    status, type_ = STATUS[kind]
    retry = RETRY_AFTER.get(kind)
    headers = {"Retry-After": retry} if retry else None
    return APIError(status, type_, error.message, error.field, headers)


def error_body(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "field": field}}


def internal_error(request_id: str | None, where: str, error: Exception) -> dict[str, Any]:
    """An unexpected failure (a bug, or ONNX Runtime failing): logged with its traceback and the
    request's id, and answered in the one error shape, naming that id for the client to quote."""
    log.error(
        f"{where} failed: {type(error).__name__}: {error}",
        exc_info=error,
        extra={"request_id": request_id},
    )
    return error_body(
        "internal_error",
        f"unexpected {type(error).__name__}; the server logged it under request id {request_id}",
    )


def error_response(
    status: int,
    type_: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(type_, message, field), status_code=status, headers=headers)


def _location(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def problem(error: dict[str, Any]) -> str:
    """pydantic's message, or for a pattern of ours what the pattern asks for in words."""
    if error.get("type") == "string_pattern_mismatch":
        meaning = PATTERN_MEANINGS.get(error.get("ctx", {}).get("pattern", ""))
        if meaning is not None:
            return meaning
    if error.get("type") == "string_unicode":
        # JSON can escape half of a UTF-16 surrogate pair alone: no character, no UTF-8.
        return (
            "should be a valid string: it holds a lone surrogate escape (\\ud800 to \\udfff "
            "without its pair), which is no Unicode character"
        )
    return error["msg"]


_HTTP_TYPES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
    503: "not_ready",
}


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Where OpenAI clients go first; these models have no chat format to turn messages into a prompt.
CHAT_PATH = "/v1/chat/completions"


def _routing_message(request: Request, status: int, detail: str, headers: dict | None) -> str:
    """The router's bare "Not Found" / "Method Not Allowed", said with what there is instead."""
    method, path = request.method, request.url.path
    if status == 404 and detail == "Not Found":
        if path.rstrip("/") == CHAT_PATH:
            return (
                f"no endpoint {method} {path}: the models served here are plain language models, "
                "without a chat format to turn messages into a prompt; POST /v1/completions "
                "continues a prompt (the OpenAI client's completions.create)"
            )
        # The path is not quoted back: an answer built from what a client sent could carry
        # whatever that client (or a page that sent it) chose.
        shown = method if method in _METHODS else "this method"
        return f"no endpoint for {shown} at this path; the API is listed at /docs (/openapi.json)"
    if status == 405 and detail == "Method Not Allowed":
        allowed = (headers or {}).get("Allow") or (headers or {}).get("allow")
        return f"{method} is not allowed on {path}" + (f"; allowed: {allowed}" if allowed else "")
    return detail


# What FastAPI says when the JSON parser fails with something other than a JSONDecodeError.
_UNPARSED = "There was an error parsing the body"


def _unparsed_message(cause: BaseException | None) -> str:
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON here: it nests arrays or objects too deeply to parse"
    reason = f" ({type(cause).__name__})" if cause is not None else ""
    return f"the body could not be parsed as JSON{reason}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    @app.exception_handler(InferenceError)
    async def refused(request: Request, error: APIError | InferenceError) -> JSONResponse:
        exc = api_error(error)
        headers = exc.headers
        model = getattr(request.state, "model", None)
        if model:  # the model (or A/B arm) the request had reached, named as an answer names it
            headers = {"X-Model": model, **(headers or {})}
        return error_response(exc.status, exc.type, exc.message, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(
                400,
                "invalid_json",
                f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
            )
        field = _location(first.get("loc", ()))
        message = "; ".join(
            f"{_location(e.get('loc', ())) or 'body'}: {problem(e)}" for e in errors[:5]
        )
        return error_response(422, "invalid_field", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 400 and exc.detail == _UNPARSED:
            return error_response(400, "invalid_json", _unparsed_message(exc.__cause__))
        return error_response(
            exc.status_code,
            _HTTP_TYPES.get(exc.status_code, "http_error"),
            _routing_message(request, exc.status_code, str(exc.detail), headers),
            None,
            headers,
        )

    # The last resort, for a failure of the outermost middleware itself: RequestContext answers
    # (and logs) every failure beneath it.
    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", f"unexpected {type(exc).__name__}")
