"""JetStream-http compatible routes: `POST /generate`, `GET /healthcheck` (thin: parse, then serve).

The logic and the wire format live in `serving_jetstream.py` and `protocol.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inference_app.server.errors import parse_body
from inference_app.server.protocol import GenerateRequest
from inference_app.server.serving_jetstream import health, serve_generate
from inference_app.server.state import serving_state

router = APIRouter()


@router.post("/generate")
async def generate(request: Request) -> Response:
    """Continue `prompt` (no echo): `{"response": text}`, or NDJSON chunks with `stream: true`."""
    state = serving_state(request)
    body = await parse_body(request, GenerateRequest, state.options.max_body_bytes)
    return await serve_generate(state, request, body)


@router.get("/healthcheck")
async def healthcheck(request: Request) -> JSONResponse:
    """200 only when loaded, warmed up and admitting; 503 while loading, draining or failed."""
    return health(serving_state(request))
