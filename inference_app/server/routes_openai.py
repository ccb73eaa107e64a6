"""OpenAI-compatible endpoints: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

Streaming uses server-sent events: one `data: <json chunk>\\n\\n` per piece of text, a last chunk
that carries `finish_reason` and `usage`, then `data: [DONE]\\n\\n`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inference_app.orchestrator import Failed, Finished, GenerationRequest, TextDelta
from inference_app.server.errors import ApiError, parse_body, request_id_of
from inference_app.server.generation import Generation
from inference_app.server.protocol import ChatCompletionRequest, CompletionRequest, _OpenAIBase
from inference_app.server.routes_jetstream import encode_prompt, error_body, serving, usage
from inference_app.server.state import ServingState

router = APIRouter(prefix="/v1")

Chunk = Callable[[str | None, str | None, dict[str, Any] | None], dict[str, Any]]


def _check_model(state: ServingState, body: _OpenAIBase) -> None:
    if body.model is not None and body.model != state.options.model_name:
        raise ApiError(
            404, f"Model {body.model!r} is not served here; this server serves {state.options.model_name!r}.", "model"
        )


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _run(
    request: Request, state: ServingState, body: _OpenAIBase, prompt_ids: tuple[int, ...], max_tokens: int
) -> Generation:
    gen_request = GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        sampling=body.sampling_params(),
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        request_id=request_id_of(request),
    )
    return Generation(state, gen_request, request)


async def _respond(gen: Generation, stream: bool, whole: Callable[[str, Finished], dict[str, Any]], chunk: Chunk) -> Response:
    if not stream:
        try:
            text, finished = await gen.collect()
        finally:
            gen.close()
        return JSONResponse(whole(text, finished))
    first = await gen.first()
    if isinstance(first, Failed):
        gen.close()
        raise ApiError(first.status, first.message)
    return StreamingResponse(_sse_stream(gen, chunk), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _sse_stream(gen: Generation, chunk: Chunk) -> AsyncIterator[str]:
    try:
        opening = chunk(None, None, None)
        if opening:
            yield _sse(opening)
        async for event in gen.events():
            if isinstance(event, TextDelta):
                yield _sse(chunk(event.text, None, None))
            elif isinstance(event, Finished):
                yield _sse(chunk("", event.reason, usage(event)))
            else:
                yield _sse(error_body(event.status, event.message, gen.request.request_id))
        yield "data: [DONE]\n\n"
    finally:
        gen.close()


@router.post("/completions")
async def completions(request: Request) -> Response:
    state = serving(request)
    body = await parse_body(request, CompletionRequest, state.options.limits.max_body_bytes)
    _check_model(state, body)
    gen = await _run(request, state, body, encode_prompt(state, body.prompt_text()), body.max_tokens)
    rid, created, model = f"cmpl-{gen.request.request_id}", int(time.time()), state.options.model_name

    def whole(text: str, fin: Finished) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": fin.reason}
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [choice], "usage": usage(fin)}

    def chunk(text: str | None, reason: str | None, use: dict[str, Any] | None) -> dict[str, Any]:
        if text is None:
            return {}  # completions have no opening chunk
        out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model,
                               "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}
        if use is not None:
            out["usage"] = use
        return out

    return await _respond(gen, body.stream, whole, chunk)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = serving(request)
    body = await parse_body(request, ChatCompletionRequest, state.options.limits.max_body_bytes)
    _check_model(state, body)
    if state.engine is None:
        raise ApiError(503, f"The model is not loaded yet (phase: {state.phase}).", retry_after=5)
    try:  # contents stay text: special-token text typed into a message cannot forge turns
        prompt_ids = tuple(state.engine.tokenizer.encode_chat(
            [m.model_dump() for m in body.messages], add_generation_prompt=True
        ))
    except ValueError as exc:  # e.g. no template, or the template rejects the roles' order
        raise ApiError(400, f"Cannot apply the model's chat template: {exc}", "messages") from None
    room = state.engine.max_target_length - len(prompt_ids)
    max_tokens = body.token_budget(default=max(1, min(state.options.chat_default_max_tokens, room)))
    gen = await _run(request, state, body, prompt_ids, max_tokens)
    rid, created, model = f"chatcmpl-{gen.request.request_id}", int(time.time()), state.options.model_name

    def whole(text: str, fin: Finished) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": fin.reason}
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": usage(fin)}

    def chunk(text: str | None, reason: str | None, use: dict[str, Any] | None) -> dict[str, Any]:
        delta: dict[str, str] = {"role": "assistant", "content": ""} if text is None else (
            {"content": text} if text else {})
        out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
        if use is not None:
            out["usage"] = use
        return out

    return await _respond(gen, body.stream, whole, chunk)


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    state = serving(request)
    card: dict[str, Any] = {"id": state.options.model_name, "object": "model", "created": int(state.started_at),
                            "owned_by": "inference_app"}
    if state.engine is not None:
        card["max_model_len"] = state.engine.max_target_length
    return JSONResponse({"object": "list", "data": [card]})
