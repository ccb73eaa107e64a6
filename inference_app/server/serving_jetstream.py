"""Serving logic of the JetStream endpoints: jetstream-http's `POST /generate` and `GET /healthcheck`,
and JetStream's own api_server routes `POST /v1/generate` and `GET /v1/health`.

Called by `routes_jetstream.py` with a parsed request; builds its answers from `protocol` models.
Streaming `/generate` is NDJSON, one jetstream-http chunk per line (`{"id", "time_created", "text"}`,
plus `response`, the same text), the last line adding `finish_reason` and `usage`, or an
`ErrorResponse` line when the request fails after the headers were sent. `/v1/generate` always
streams, as JetStream does: protobuf-JSON `DecodeResponse` messages back to back.
"""

from __future__ import annotations

import json
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from inference_app.orchestrator import Finished, TextDelta
from inference_app.server.protocol import (
    DecodeRequest,
    DecodeResponse,
    DecodeSample,
    DecodeStreamContent,
    GenerateChunk,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    JetStreamHealth,
    Liveness,
    ResponseModel,
    UsageInfo,
)
from inference_app.server.serving import (
    NDJSON,
    Collected,
    Framing,
    check_token_ids,
    encode_prompt,
    respond,
    start_generation,
    usage_of,
)
from inference_app.server.state import ServingState


class GenerateRenderer:
    """`/generate` answers: the continuation only (no echo of the prompt)."""

    def __init__(self, request_id: str) -> None:
        self.id = f"generate-{request_id}"

    def whole(self, results: list[Collected]) -> GenerateResponse:
        return GenerateResponse(response=results[0].text)

    def opening(self, choices: int) -> list[ResponseModel]:
        return []

    def text(self, index: int, delta: TextDelta, progress: UsageInfo) -> GenerateChunk:
        return GenerateChunk(id=self.id, time_created=time.time(), text=delta.text, response=delta.text)

    def finished(self, index: int, finished: Finished, progress: UsageInfo) -> list[ResponseModel]:
        return [
            GenerateChunk(
                id=self.id,
                time_created=time.time(),
                text="",
                response="",
                finish_reason=finished.reason,
                usage=usage_of(finished),
            )
        ]

    def closing(self, total: UsageInfo) -> list[ResponseModel]:
        return []


async def serve_generate(state: ServingState, request: Request, body: GenerateRequest) -> Response:
    prompt_ids = await encode_prompt(state, body.prompt)
    gen = start_generation(state, request, body, prompt_ids, body.max_tokens)
    return await respond([gen], body.stream, GenerateRenderer(gen.request.request_id), NDJSON)


def health(state: ServingState) -> JSONResponse:
    """200 only when loaded, warmed up and admitting; 503 with the phase while loading, draining or failed."""
    if state.ready:
        return JSONResponse(HealthResponse(response=Liveness(is_live=True)).body())
    liveness = Liveness(is_live=False, phase=state.phase, error=state.error or None)
    return JSONResponse(
        HealthResponse(response=liveness).body(), status_code=503, headers={"Retry-After": "5"}
    )


# ----- JetStream's api_server: /v1/generate, /v1/health -------------------------------------------

# MessageToJson's layout: indent 2, one message per write, nothing between messages.
PROTOBUF_JSON = Framing(media_type="text/event-stream", frame=lambda m: json.dumps(m.body(), indent=2))


class DecodeRenderer:
    """JetStream `DecodeResponse` messages: one sample of new text each; nothing marks the end."""

    def whole(self, results: list[Collected]) -> ResponseModel:
        raise AssertionError("JetStream's /v1/generate always streams")

    def opening(self, choices: int) -> list[ResponseModel]:
        return []

    def text(self, index: int, delta: TextDelta, progress: UsageInfo) -> DecodeResponse:
        return DecodeResponse(streamContent=DecodeStreamContent(samples=[DecodeSample(text=delta.text)]))

    def finished(self, index: int, finished: Finished, progress: UsageInfo) -> list[ResponseModel]:
        return []

    def closing(self, total: UsageInfo) -> list[ResponseModel]:
        return []


async def serve_decode(state: ServingState, request: Request, body: DecodeRequest) -> Response:
    if body.token_content is not None:
        prompt_ids = check_token_ids(state, body.token_content.token_ids, "token_content.token_ids")
    else:
        assert body.text_content is not None
        prompt_ids = await encode_prompt(state, body.text_content.text, "text_content.text")
    # JetStream's request has no sampling fields: its server's defaults (here: greedy).
    greedy = GenerateRequest(prompt="-", max_tokens=body.max_tokens, stop=None)
    gen = start_generation(state, request, greedy, prompt_ids, body.max_tokens)
    return await respond([gen], True, DecodeRenderer(), PROTOBUF_JSON)


def jetstream_health(state: ServingState) -> JSONResponse:
    """Always 200, as JetStream's api_server answers; `is_live` says whether requests are admitted."""
    return JSONResponse(JetStreamHealth(is_live="True" if state.ready else "False").body())
