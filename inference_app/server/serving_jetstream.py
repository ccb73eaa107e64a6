"""Serving logic of the JetStream-http endpoints: `POST /generate` and `GET /healthcheck`.

Called by `routes_jetstream.py` with a parsed `GenerateRequest`; builds its answers from
`protocol` models. Streaming `/generate` is NDJSON: `{"response": "<new text>"}` per line, then
`{"response": "", "finish_reason": ..., "usage": {...}}`, or an `ErrorResponse` line when the
request fails after the headers were sent.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from inference_app.orchestrator import Finished
from inference_app.server.protocol import (
    GenerateFinalChunk,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    Liveness,
    ResponseModel,
)
from inference_app.server.serving import NDJSON, encode_prompt, respond, start_generation, usage_of
from inference_app.server.state import ServingState


class GenerateRenderer:
    """`/generate` answers: the continuation only (no echo of the prompt)."""

    def whole(self, text: str, finished: Finished) -> GenerateResponse:
        return GenerateResponse(response=text)

    def opening(self) -> list[ResponseModel]:
        return []

    def text(self, text: str) -> GenerateResponse:
        return GenerateResponse(response=text)

    def finished(self, finished: Finished) -> GenerateFinalChunk:
        return GenerateFinalChunk(finish_reason=finished.reason, usage=usage_of(finished))


async def serve_generate(state: ServingState, request: Request, body: GenerateRequest) -> Response:
    gen = start_generation(state, request, body, encode_prompt(state, body.prompt), body.max_tokens)
    return await respond(gen, body.stream, GenerateRenderer(), NDJSON)


def health(state: ServingState) -> JSONResponse:
    """200 only when loaded, warmed up and admitting; 503 with the phase while loading, draining or failed."""
    if state.ready:
        return JSONResponse(HealthResponse(response=Liveness(is_live=True)).body())
    liveness = Liveness(is_live=False, phase=state.phase, error=state.error or None)
    return JSONResponse(
        HealthResponse(response=liveness).body(), status_code=503, headers={"Retry-After": "5"}
    )
