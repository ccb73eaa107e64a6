"""JetStream routes (thin: parse, then serve): jetstream-http's `POST /generate` and `GET /healthcheck`,
JetStream api_server's `POST /v1/generate` and `GET /v1/health`.

The logic and the wire format live in `serving_jetstream.py` and `protocol.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inference_app.server.errors import parse_body
from inference_app.server.protocol import DecodeRequest, GenerateRequest
from inference_app.server.serving_jetstream import health, jetstream_health, serve_decode, serve_generate
from inference_app.server.state import serving_state

router = APIRouter()


@router.post("/generate")
async def generate(request: Request) -> Response:
    """Continue `prompt` (no echo): `{"response": text}`, or NDJSON chunks with `stream: true`."""
    state = serving_state(request)
    body = await parse_body(request, GenerateRequest, state.options.limits.max_body_bytes)
    return await serve_generate(state, request, body)


@router.get("/healthcheck")
async def healthcheck(request: Request) -> JSONResponse:
    """200 only when loaded, warmed up and admitting; 503 while loading, draining or failed."""
    return health(serving_state(request))


@router.post("/v1/generate")
async def decode(request: Request) -> Response:
    """JetStream's own route: text or token ids in, a stream of DecodeResponse messages out."""
    state = serving_state(request)
    body = await parse_body(request, DecodeRequest, state.options.limits.max_body_bytes)
    return await serve_decode(state, request, body)


@router.get("/v1/health")
async def jetstream_v1_health(request: Request) -> JSONResponse:
    """JetStream's own health route: always 200, `{"is_live": "True" | "False"}`."""
    return jetstream_health(serving_state(request))
