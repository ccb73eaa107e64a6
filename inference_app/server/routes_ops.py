"""Operational routes: `GET /` (what is serving) and `GET /metrics` (Prometheus text format).

Thin like the other `routes_*.py`: the description comes from `serving.server_info`, the metrics
from the orchestrator's `ServingMetrics`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from inference_app.server.serving import server_info
from inference_app.server.state import serving_state

router = APIRouter()

ENDPOINTS = [
    "POST /generate",
    "GET /healthcheck",
    "POST /v1/completions",
    "POST /v1/chat/completions",
    "GET /v1/models",
    "GET /v1/models/{id}",
    "POST /v1/generate",
    "GET /v1/health",
    "POST /tokenize",
    "POST /detokenize",
    "GET /tokenizer_info",
    "GET /health",
    "GET /metrics",
]


@router.get("/")
async def root(request: Request) -> JSONResponse:
    """What is serving, and how it is configured."""
    return JSONResponse(server_info(serving_state(request), ENDPOINTS).body())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(serving_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
