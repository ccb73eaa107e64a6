"""Serving logic of the OpenAI-compatible endpoints: completions, chat completions, models.

Called by `routes_openai.py` with a parsed request model; builds its answers from `protocol`
models. Streaming uses server-sent events: one `data: <json chunk>\n\n` per piece of text (chat
opens with a chunk announcing the assistant role), a last chunk that carries `finish_reason` and
`usage`, then `data: [DONE]\n\n`.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from inference_app.orchestrator import Finished
from inference_app.server.errors import ApiError
from inference_app.server.protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    OpenAIRequest,
    ResponseModel,
)
from inference_app.server.serving import SSE, encode_prompt, respond, start_generation, usage_of
from inference_app.server.state import ServingState


def check_model(state: ServingState, body: OpenAIRequest) -> None:
    if body.model is not None and body.model != state.options.model_name:
        raise ApiError(
            404,
            f"Model {body.model!r} is not served here; this server serves {state.options.model_name!r}.",
            "model",
        )


class CompletionRenderer:
    """`text_completion` objects; a stream's chunks are the same object with a piece of text each."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id, self.created, self.model = f"cmpl-{request_id}", int(time.time()), model

    def _response(self, choice: CompletionChoice, finished: Finished | None = None) -> CompletionResponse:
        return CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[choice],
                                  usage=None if finished is None else usage_of(finished))

    def whole(self, text: str, finished: Finished) -> CompletionResponse:
        return self._response(CompletionChoice(text=text, finish_reason=finished.reason), finished)

    def opening(self) -> list[ResponseModel]:
        return []  # completions have no opening chunk

    def text(self, text: str) -> CompletionResponse:
        return self._response(CompletionChoice(text=text))

    def finished(self, finished: Finished) -> CompletionResponse:
        return self._response(CompletionChoice(text="", finish_reason=finished.reason), finished)


class ChatRenderer:
    """`chat.completion` for a whole answer, `chat.completion.chunk`s for a stream."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id, self.created, self.model = f"chatcmpl-{request_id}", int(time.time()), model

    def _chunk(self, delta: DeltaMessage, finished: Finished | None = None) -> ChatCompletionChunk:
        choice = ChatCompletionStreamChoice(
            delta=delta, finish_reason=None if finished is None else finished.reason
        )
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=None if finished is None else usage_of(finished),
        )

    def whole(self, text: str, finished: Finished) -> ChatCompletionResponse:
        choice = ChatCompletionChoice(message=AssistantMessage(content=text), finish_reason=finished.reason)
        return ChatCompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage_of(finished)
        )

    def opening(self) -> list[ResponseModel]:
        return [self._chunk(DeltaMessage(role="assistant", content=""))]

    def text(self, text: str) -> ChatCompletionChunk:
        return self._chunk(DeltaMessage(content=text or None))

    def finished(self, finished: Finished) -> ChatCompletionChunk:
        return self._chunk(DeltaMessage(), finished)


async def serve_completion(state: ServingState, request: Request, body: CompletionRequest) -> Response:
    check_model(state, body)
    gen = start_generation(state, request, body, encode_prompt(state, body.prompt_text()), body.max_tokens)
    return await respond(
        gen, body.stream, CompletionRenderer(gen.request.request_id, state.options.model_name), SSE
    )


async def serve_chat(state: ServingState, request: Request, body: ChatCompletionRequest) -> Response:
    check_model(state, body)
    if state.engine is None:
        raise ApiError(503, f"The model is not loaded yet (phase: {state.phase}).", retry_after=5)
    try:
        rendered = state.engine.tokenizer.apply_chat_template(
            [m.model_dump() for m in body.messages], add_generation_prompt=True
        )
    except ValueError as exc:  # e.g. no template, or the template rejects the roles' order
        raise ApiError(400, f"Cannot apply the model's chat template: {exc}", "messages") from None
    prompt_ids = encode_prompt(state, rendered)
    room = state.engine.max_target_length - len(prompt_ids)
    max_tokens = body.token_budget(default=max(1, min(state.options.chat_default_max_tokens, room)))
    gen = start_generation(state, request, body, prompt_ids, max_tokens)
    return await respond(
        gen, body.stream, ChatRenderer(gen.request.request_id, state.options.model_name), SSE
    )


def list_models(state: ServingState) -> ModelList:
    max_model_len = state.engine.max_target_length if state.engine is not None else None
    card = ModelCard(id=state.options.model_name, created=int(state.started_at), max_model_len=max_model_len)
    return ModelList(data=[card])
