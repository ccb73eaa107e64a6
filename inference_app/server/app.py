"""The app factory: `create_app(options, engine=... | engine_factory=...)`, no module globals.

The top of the server: uvicorn (`cli.py`) or a test client runs the app made here; it wires the
`ServingState` (engine + orchestrator life cycle), the thin routers (`routes_*.py`), the error
handlers (`errors.py`), request ids, and an OpenAPI document built from `protocol.py`.

Pass a ready `engine` (tests: a fake, or a wrapped real engine for fault injection) or an
`engine_factory` (the CLI: loads the model on a background thread after the port opens).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_app.engine.api import Engine
from inference_app.orchestrator import new_request_id
from inference_app.server import routes_jetstream, routes_openai, routes_ops
from inference_app.server.body_guard import BodyGuard
from inference_app.server.errors import install_error_handlers
from inference_app.server.http_metrics import HttpMetrics
from inference_app.server.options import ServerOptions
from inference_app.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DecodeRequest,
    DetokenizeRequest,
    ErrorResponse,
    GenerateRequest,
    TokenizeRequest,
)
from inference_app.server.state import ServingState

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# Routes parse their bodies themselves (size, UTF-8, JSON, schema: each with its own 4xx), so the
# OpenAPI document gets their schemas here (schemathesis fuzzes the API from it).
REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "/generate": GenerateRequest,
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/generate": DecodeRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
}
_ERROR_STATUSES = {
    "400": "Invalid request",
    "404": "Unknown model",
    "413": "Body too large",
    "429": "Queue full (Retry-After)",
    "500": "The request failed",
    "503": "Not ready, draining or failed (Retry-After)",
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    # The error body's fields are all always sent, so its validation schema describes the wire.
    bodies: list[type[BaseModel]] = [*REQUEST_BODIES.values(), ErrorResponse]
    _, defs = models_json_schema(
        [(m, "validation") for m in bodies], ref_template="#/components/schemas/{model}"
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(defs.get("$defs", {}))
    for path, model in REQUEST_BODIES.items():
        op = schema["paths"][path]["post"]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
        for status, text in _ERROR_STATUSES.items():
            op.setdefault("responses", {})[status] = {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
    app.openapi_schema = schema
    return schema


class RequestIdMiddleware:
    """Every response carries `X-Request-Id` (the client's, if it sent a sane one); logs use it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _CLIENT_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(
    options: ServerOptions,
    engine: Engine | None = None,
    engine_factory: Callable[[], Engine] | None = None,
) -> FastAPI:
    if (engine is None) == (engine_factory is None):
        raise ValueError("create_app needs exactly one of engine= or engine_factory=")
    factory: Callable[[], Engine] = engine_factory or (lambda: engine)  # type: ignore[assignment,return-value]
    state = ServingState(options, factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        yield
        state.stop()

    app = FastAPI(
        title="inference_app",
        summary="JetStream-compatible /generate and an OpenAI-compatible API over a JAX engine.",
        lifespan=lifespan,
        docs_url="/docs" if options.docs else None,
        redoc_url=None,
    )
    app.state.serving = state
    app.state.http_metrics = http_metrics = HttpMetrics(state.metrics)
    app.include_router(routes_jetstream.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_openai.tokenizer_router)
    install_error_handlers(app, lambda outcome: state.metrics.requests.labels(outcome=outcome).inc())
    app.add_middleware(BodyGuard, limits=options.limits, record=http_metrics.record)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer, the guard's too, carries the id
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
