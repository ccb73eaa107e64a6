"""A model-free stand-in server for testing the batch and loadtest clients (and trying them out).

Part of `inference_app.testing` (test doubles; left out of the product image): it stands where
the whole server -> orchestrator -> engine stack would, behind the same HTTP API.

It speaks the same wire formats as our server — `/generate` (JSON or streamed) and OpenAI
`/v1/completions`, `/v1/chat/completions`, `/v1/models` — and answers `max_tokens` words
("w0 w1 ...") with a fixed delay per token, so client behaviour and timing maths can be
checked exactly and quickly. Markers in the prompt inject failures, counted per prompt:

- `FAIL429xN` / `FAIL503xN`: the first N attempts get that status (with `Retry-After: 0`).
- `FAIL400`: always 400 with a message (a permanent client error).
- `DROPxN`: the first N attempts have the connection closed without a response.

Run standalone: `.venv/bin/python -m inference_app.testing.fake_server --port 8123 --token-delay 0.01`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

MARKER = re.compile(r"(FAIL429|FAIL503|DROP)x(\d+)|FAIL400")


@dataclass
class FakeState:
    token_delay_s: float = 0.0
    attempts: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0  # lets tests check a client's concurrency bound


class DropConnection(Exception):
    """Raised inside a started response body: uvicorn then cuts the connection mid-response."""


async def _broken_body() -> AsyncIterator[bytes]:
    raise DropConnection("injected connection drop")
    yield b""  # unreachable; makes this an async generator


def create_app(token_delay_s: float = 0.0) -> FastAPI:
    app = FastAPI(title="fake inference server")
    state = FakeState(token_delay_s=token_delay_s)
    app.state.fake = state

    def injected(prompt: str) -> Response | None:
        state.requests += 1
        state.attempts[prompt] += 1
        attempt = state.attempts[prompt]
        for m in MARKER.finditer(prompt):
            if m.group(0) == "FAIL400":
                return JSONResponse(
                    {"error": {"message": "prompt rejected (FAIL400 marker)"}}, status_code=400
                )
            kind, n = m.group(1), int(m.group(2))
            if attempt <= n:
                if kind == "DROP":
                    return StreamingResponse(_broken_body(), media_type="application/json")
                status = 429 if kind == "FAIL429" else 503
                return JSONResponse(
                    {"error": {"message": f"injected {status}"}},
                    status_code=status,
                    headers={"Retry-After": "0"},
                )
        return None

    def words(n: int) -> list[str]:
        return [f" w{i}" for i in range(n)]

    async def parse(request: Request) -> dict[str, Any]:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        return body

    def prompt_of(body: dict[str, Any]) -> str:
        if "messages" in body:
            return "\n".join(str(m.get("content", "")) for m in body["messages"])
        return str(body.get("prompt", ""))

    async def paced(n: int) -> AsyncIterator[str]:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            for w in words(n):
                if state.token_delay_s:
                    await asyncio.sleep(state.token_delay_s)
                yield w
        finally:
            state.in_flight -= 1

    def usage(prompt: str, n: int) -> dict[str, int]:
        p = len(prompt.split())
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

    @app.get("/healthcheck")
    async def health() -> dict[str, Any]:
        return {"response": {"is_live": True}}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        body = await parse(request)
        prompt, n = prompt_of(body), int(body.get("max_tokens", 16))
        if (err := injected(prompt)) is not None:
            return err
        if body.get("stream"):

            async def events() -> AsyncIterator[str]:
                async for w in paced(n):
                    yield "data: " + json.dumps({"response": w}) + "\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text = "".join([w async for w in paced(n)])
        return JSONResponse({"response": text})

    async def openai(request: Request, chat: bool) -> Response:
        body = await parse(request)
        prompt, n = prompt_of(body), int(body.get("max_tokens", 16))
        if (err := injected(prompt)) is not None:
            return err
        created = int(time.time())
        if body.get("stream"):

            async def events() -> AsyncIterator[str]:
                async for w in paced(n):
                    choice = {"index": 0, "delta": {"content": w}} if chat else {"index": 0, "text": w}
                    yield "data: " + json.dumps({"id": "x", "created": created, "choices": [choice]}) + "\n\n"
                last = {"choices": [], "usage": usage(prompt, n)}
                yield "data: " + json.dumps(last) + "\n\ndata: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text = "".join([w async for w in paced(n)])
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse({"id": "x", "created": created, "choices": [choice], "usage": usage(prompt, n)})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await openai(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await openai(request, chat=True)

    return app


class BackgroundServer:
    """Run an ASGI app with uvicorn on a loopback port in a daemon thread (tests, scripts)."""

    def __init__(self, app: FastAPI, port: int = 0) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fake-server", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--token-delay", type=float, default=0.01, help="seconds per streamed token")
    args = parser.parse_args()
    uvicorn.run(create_app(args.token_delay), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
