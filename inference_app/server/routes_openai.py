"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models` (thin).

The logic and the wire format live in `serving_openai.py` and `protocol.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inference_app.server.errors import parse_body
from inference_app.server.protocol import ChatCompletionRequest, CompletionRequest
from inference_app.server.serving_openai import list_models, serve_chat, serve_completion
from inference_app.server.state import serving_state

router = APIRouter(prefix="/v1")


@router.post("/completions")
async def completions(request: Request) -> Response:
    state = serving_state(request)
    body = await parse_body(request, CompletionRequest, state.options.max_body_bytes)
    return await serve_completion(state, request, body)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = serving_state(request)
    body = await parse_body(request, ChatCompletionRequest, state.options.max_body_bytes)
    return await serve_chat(state, request, body)


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    return JSONResponse(list_models(serving_state(request)).body())
