"""Every failure as the one error body (`protocol.ErrorResponse`), and strict body parsing.

Where it sits: routes call `parse_body` first (size, UTF-8, JSON, schema, each with its own 4xx);
anything raised later in a route or the serving logic (`ApiError`, the orchestrator's
`RequestRejected`, FastAPI's own errors, bugs) is mapped here onto
    {"error": {"message": str, "type": str, "param": str | null, "code": int, "request_id": str}}
with the HTTP status in `code`, and `Retry-After` on 429/503.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_app.orchestrator import RequestRejected
from inference_app.server.protocol import ErrorResponse

log = logging.getLogger("inference_app.server")

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answer: raise it anywhere in a route."""

    def __init__(
        self, status: int, message: str, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after = retry_after


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def error_response(
    request: Request, status: int, message: str, param: str | None = None, retry_after: int | None = None
) -> JSONResponse:
    body = ErrorResponse.of(status, message, param, request_id_of(request))
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    level = logging.WARNING if status < 500 or status == 503 else logging.ERROR  # 503: load shedding
    log.log(
        level,
        "[%s] %s %s -> %d: %s",
        request_id_of(request),
        request.method,
        request.url.path,
        status,
        message,
    )
    return JSONResponse(body.body(), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, count: Callable[[str], None]) -> None:
    """Map every exception type onto the one error shape; `count(outcome)` counts a request in
    `inference_requests_total` (what the orchestrator turns away, it counts itself)."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        if exc.status in (400, 404, 413, 415):
            count("bad_request")
        return error_response(request, exc.status, exc.message, exc.param, exc.retry_after)

    async def rejected(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestRejected)
        return error_response(request, exc.status, exc.message, exc.param, exc.retry_after)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(request, exc.status_code, str(exc.detail))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        count("bad_request")
        message, param = describe_validation_errors(list(exc.errors()))
        return error_response(request, 400, message, param)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: the exception (which may name files) goes to the log, the client gets the request id.
        log.exception("[%s] unhandled error", request_id_of(request))
        count("error")
        request_id = request_id_of(request)
        response = error_response(
            request, 500, f"Internal error; the server log has the details (request id {request_id})."
        )
        if request_id:  # this answer leaves past the middleware that adds the header to the others
            response.headers["X-Request-Id"] = request_id
        return response

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestRejected, rejected)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def describe_validation_errors(errors: list[Any]) -> tuple[str, str | None]:
    """Pydantic errors -> one readable message naming each offending field, and the first field."""
    parts, first = [], None
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if _is_field_part(p))
        first = first or loc or None
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check the spelling; see the API reference)"
        elif err.get("type") == "missing":
            msg = "field required"
        parts.append(f"{loc or 'body'}: {msg}")
    return "Invalid request: " + "; ".join(parts), first


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "body"})


def _is_field_part(part: object) -> bool:
    """Pydantic puts union member tags ('str', 'list[constrained-str]') into locations; drop them."""
    if isinstance(part, int):
        return True
    text = str(part)
    return text not in _TYPE_TAGS and "[" not in text and "-" not in text


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) more than `max_bytes` whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Invalid Content-Length header.")
        if int(declared) > max_bytes:
            raise ApiError(413, f"Request body of {declared} bytes exceeds the {max_bytes}-byte limit.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"Request body exceeds the {max_bytes}-byte limit.")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(
    request: Request,
    model: type[M],
    max_bytes: int,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> M:
    """Body -> model, with a 4xx that says exactly what is wrong at each step. `prepare` sees the JSON
    object first (the OpenAI routes drop the fields they accept without acting on them)."""
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise ApiError(400, "The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"The request body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply to parse.") from None
    except ValueError:  # the only other error json.loads raises: an integer too long to convert
        raise ApiError(
            400,
            f"The request body has an integer with more than {sys.get_int_max_str_digits()} digits.",
        ) from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "The request body contains invalid Unicode (an unpaired surrogate escape)."
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {type(data).__name__}.")
    if prepare is not None:
        data = prepare(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_errors(list(exc.errors()))
        raise ApiError(400, message, param) from None
