"""JetStream-http compatible endpoints: `POST /generate`, `GET /healthcheck`, plus `GET /`, `/metrics`.

Streaming `/generate` (`"stream": true`) answers `application/x-ndjson`: one JSON object per line,
`{"response": "<new text>"}` as text is generated, then a last line
`{"response": "", "finish_reason": "stop"|"length", "usage": {...}}`; a failure after the
headers were sent is a last line `{"error": {...}}`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from inference_app.orchestrator import Failed, Finished, GenerationRequest, TextDelta
from inference_app.server.errors import ApiError, parse_body, request_id_of
from inference_app.server.generation import Generation
from inference_app.server.protocol import GenerateRequest
from inference_app.server.state import ServingState

router = APIRouter()


def serving(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


def encode_prompt(state: ServingState, text: str) -> tuple[int, ...]:
    """Tokenize with the engine's tokenizer (503 while the model is still loading)."""
    if state.engine is None:
        raise ApiError(503, f"The model is not loaded yet (phase: {state.phase}).", retry_after=5)
    return tuple(state.engine.tokenizer.encode(text))


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def error_body(status: int, message: str, request_id: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": status, "request_id": request_id}}


@router.post("/generate")
async def generate(request: Request) -> Response:
    """Continue `prompt` (no echo): `{"response": text}`, or NDJSON chunks with `stream: true`."""
    state = serving(request)
    body = await parse_body(request, GenerateRequest, state.options.limits.max_body_bytes)
    gen_request = GenerationRequest(
        prompt_ids=encode_prompt(state, body.prompt),
        max_tokens=body.max_tokens,
        sampling=body.sampling_params(),
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        request_id=request_id_of(request),
    )
    gen = Generation(state, gen_request, request)
    if not body.stream:
        try:
            text, _ = await gen.collect()
        finally:
            gen.close()
        return JSONResponse({"response": text})
    first = await gen.first()
    if isinstance(first, Failed):
        gen.close()
        raise ApiError(first.status, first.message)
    return StreamingResponse(_ndjson(gen), media_type="application/x-ndjson")


async def _ndjson(gen: Generation) -> AsyncIterator[str]:
    try:
        async for event in gen.events():
            if isinstance(event, TextDelta):
                yield json.dumps({"response": event.text}, ensure_ascii=False) + "\n"
            elif isinstance(event, Finished):
                line = {"response": "", "finish_reason": event.reason, "usage": usage(event)}
                yield json.dumps(line) + "\n"
            else:
                yield json.dumps(error_body(event.status, event.message, gen.request.request_id)) + "\n"
    finally:
        gen.close()


@router.get("/healthcheck")
async def healthcheck(request: Request) -> JSONResponse:
    """200 only when loaded, warmed up and admitting; 503 while loading, draining or failed."""
    state = serving(request)
    if state.ready:
        return JSONResponse({"response": {"is_live": True}})
    detail: dict[str, Any] = {"is_live": False, "phase": state.phase}
    if state.error:
        detail["error"] = state.error
    return JSONResponse({"response": detail}, status_code=503, headers={"Retry-After": "5"})


@router.get("/")
async def root(request: Request) -> JSONResponse:
    """What is serving, and how it is configured."""
    state = serving(request)
    info: dict[str, Any] = {
        "service": "inference_app",
        "model": state.options.model_name,
        "phase": state.phase,
        "endpoints": [
            "POST /generate",
            "GET /healthcheck",
            "POST /v1/completions",
            "POST /v1/chat/completions",
            "GET /v1/models",
            "GET /metrics",
        ],
    }
    if state.engine is not None:
        s = state.engine.settings
        info |= {
            "mode": s.mode,
            "max_slots": state.engine.max_slots,
            "max_prefill_length": state.engine.max_prefill_length,
            "max_target_length": state.engine.max_target_length,
            "prefill_buckets": list(state.engine.prefill_buckets),
        }
    if state.orchestrator is not None:
        info |= {"active_slots": state.orchestrator.active_slots, "queue_depth": state.orchestrator.queue_depth}
    return JSONResponse(info)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(serving(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
