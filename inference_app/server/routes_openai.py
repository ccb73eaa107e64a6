"""OpenAI-compatible routes (thin): `/v1/completions`, `/v1/chat/completions`, `/v1/models[/{id}]`,
and vLLM's `/tokenize`, `/detokenize`, `/tokenizer_info`, `/health`.

The logic and the wire format live in `serving_openai.py` and `protocol.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inference_app.server.errors import parse_body
from inference_app.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from inference_app.server.serving_openai import (
    detokenize,
    get_model,
    list_models,
    screener,
    serve_chat,
    serve_completion,
    tokenize,
    tokenizer_info,
)
from inference_app.server.state import serving_state

router = APIRouter(prefix="/v1")
tokenizer_router = APIRouter()  # vLLM serves these at the root


@router.post("/completions")
async def completions(request: Request) -> Response:
    state = serving_state(request)
    body = await parse_body(
        request, CompletionRequest, state.options.limits.max_body_bytes, screener("completions")
    )
    return await serve_completion(state, request, body)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = serving_state(request)
    body = await parse_body(
        request, ChatCompletionRequest, state.options.limits.max_body_bytes, screener("chat")
    )
    return await serve_chat(state, request, body)


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    return JSONResponse(list_models(serving_state(request)).body())


@router.get("/models/{model:path}")
async def model_card(request: Request, model: str) -> JSONResponse:
    """One model's card: the served Hugging Face id or its alias; 404 otherwise."""
    return JSONResponse(get_model(serving_state(request), model).body())


@tokenizer_router.post("/tokenize")
async def tokenize_route(request: Request) -> JSONResponse:
    state = serving_state(request)
    body = await parse_body(request, TokenizeRequest, state.options.limits.max_body_bytes)
    return JSONResponse((await tokenize(state, body)).body())


@tokenizer_router.post("/detokenize")
async def detokenize_route(request: Request) -> JSONResponse:
    state = serving_state(request)
    body = await parse_body(request, DetokenizeRequest, state.options.limits.max_body_bytes)
    return JSONResponse(detokenize(state, body).body())


@tokenizer_router.get("/tokenizer_info")
async def tokenizer_info_route(request: Request) -> JSONResponse:
    return tokenizer_info(serving_state(request))


@tokenizer_router.get("/health")
async def health_route(request: Request) -> Response:
    """vLLM's (and TGI's, SGLang's, llama.cpp's) probe: 200 when ready, else 503 with the phase."""
    state = serving_state(request)
    if state.ready:
        return Response(status_code=200)
    return JSONResponse({"phase": state.phase}, status_code=503, headers={"Retry-After": "5"})
