"""The serving logic shared by every generation endpoint: admit, run, and answer whole or streamed.

Where it sits: a thin route (`routes_*.py`) parses the body into a `protocol` request model and
calls its endpoint's serving function (`serving_jetstream.py`, `serving_openai.py`); that function
encodes the prompt, admits a `Generation` and hands it to `respond` here together with the
endpoint's `Renderer` (which turns text, the end, or the whole answer into `protocol` response
models) and, for streams, the endpoint's `Framing` (NDJSON or server-sent events).

The orchestrator calls a request's sink from its own threads; `EventChannel` hops each event onto
the event loop. `Generation` is one admitted request as a route sees it: an async stream of events,
cancelled as soon as the client disconnects (a watcher task reads the ASGI `http.disconnect`), so
its decode slot is freed within one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inference_app.orchestrator import Event, Failed, Finished, GenerationRequest, Job, TextDelta
from inference_app.server.errors import ApiError, request_id_of
from inference_app.server.protocol import ErrorResponse, ResponseModel, SamplingRequest, ServerInfo, UsageInfo
from inference_app.server.state import ServingState

log = logging.getLogger("inference_app.server")


class EventChannel:
    """A thread-safe `Sink` whose events are awaited on the event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def get(self) -> Event:
        return await self._queue.get()


class Generation:
    """An admitted request: iterate `events()`, always `close()` (cancels if unfinished)."""

    def __init__(self, state: ServingState, request: GenerationRequest, http_request: Request) -> None:
        self.request = request
        self._channel = EventChannel()
        self.job: Job = state.submit(request, self._channel)  # raises RequestRejected (4xx/503)
        self._http_request = http_request
        self._watcher = asyncio.create_task(self._watch_disconnect())
        self._pending: list[Event] = []
        self._t0 = time.monotonic()

    async def _watch_disconnect(self) -> None:
        while not self.job.finished:
            message = await self._http_request.receive()
            if message["type"] == "http.disconnect":
                if self.job.cancel():
                    log.info(
                        "[%s] client disconnected; request cancelled, slot freed", self.request.request_id
                    )
                return

    async def first(self) -> Event:
        """Wait for the first event without consuming it (streams check it before sending headers)."""
        if not self._pending:
            self._pending.append(await self._channel.get())
        return self._pending[0]

    async def events(self) -> AsyncIterator[Event]:
        """Events until (and including) the final `Finished` or `Failed`."""
        while True:
            event = self._pending.pop(0) if self._pending else await self._channel.get()
            yield event
            if isinstance(event, Finished | Failed):
                return

    async def collect(self) -> tuple[str, Finished]:
        """Non-streaming: the whole text; a failure becomes its HTTP error."""
        parts: list[str] = []
        async for event in self.events():
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise ApiError(event.status, event.message)
            else:
                return "".join(parts), event
        raise ApiError(500, "The request ended without a result.")

    def close(self) -> None:
        self._watcher.cancel()
        if self.job.cancel():
            log.info("[%s] stream closed early; request cancelled", self.request.request_id)
        log.info(
            "[%s] done: %s, %d prompt + %d generated tokens in %.2fs",
            self.request.request_id,
            self.job.outcome,
            len(self.request.prompt_ids),
            self.job.delivered,
            time.monotonic() - self._t0,
        )


def encode_prompt(state: ServingState, text: str) -> tuple[int, ...]:
    """Tokenize with the engine's tokenizer (503 while the model is still loading)."""
    if state.engine is None:
        raise ApiError(503, f"The model is not loaded yet (phase: {state.phase}).", retry_after=5)
    return tuple(state.engine.tokenizer.encode(text))


def usage_of(finished: Finished) -> UsageInfo:
    return UsageInfo.of(finished.prompt_tokens, finished.completion_tokens)


def start_generation(
    state: ServingState, request: Request, body: SamplingRequest, prompt_ids: tuple[int, ...], max_tokens: int
) -> Generation:
    """Admit the request (raises `RequestRejected`: 4xx, 429 or 503) and start following its events."""
    gen_request = GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        sampling=body.sampling_params(),
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        request_id=request_id_of(request),
    )
    return Generation(state, gen_request, request)


class Renderer(Protocol):
    """One endpoint's response models: the whole answer, or the chunks of a stream."""

    def whole(self, text: str, finished: Finished) -> ResponseModel: ...

    def opening(self) -> list[ResponseModel]:
        """Chunks sent before any text (OpenAI chat announces the assistant role)."""
        ...

    def text(self, text: str) -> ResponseModel: ...

    def finished(self, finished: Finished) -> ResponseModel:
        """The last chunk: why the generation ended, and the token counts."""
        ...


@dataclass(frozen=True)
class Framing:
    """How a stream puts response models on the wire."""

    media_type: str
    frame: Callable[[ResponseModel], str]
    done: str | None = None  # sent after the final event, if the format has an end marker
    headers: dict[str, str] | None = None


def _json(model: ResponseModel) -> str:
    return json.dumps(model.body(), ensure_ascii=False)


NDJSON = Framing(media_type="application/x-ndjson", frame=lambda m: _json(m) + "\n")
SSE = Framing(
    media_type="text/event-stream",
    frame=lambda m: f"data: {_json(m)}\n\n",
    done="data: [DONE]\n\n",
    headers={"Cache-Control": "no-cache"},
)


async def respond(gen: Generation, stream: bool, renderer: Renderer, framing: Framing) -> Response:
    """The whole answer as JSON, or a stream whose headers go out only once the first event is in
    (so a request that fails before any text gets an ordinary error answer with its status)."""
    if not stream:
        try:
            text, finished = await gen.collect()
        finally:
            gen.close()
        return JSONResponse(renderer.whole(text, finished).body())
    first = await gen.first()
    if isinstance(first, Failed):
        gen.close()
        raise ApiError(first.status, first.message)
    return StreamingResponse(
        _stream(gen, renderer, framing), media_type=framing.media_type, headers=framing.headers
    )


async def _stream(gen: Generation, renderer: Renderer, framing: Framing) -> AsyncIterator[str]:
    try:
        for chunk in renderer.opening():
            yield framing.frame(chunk)
        async for event in gen.events():
            if isinstance(event, TextDelta):
                yield framing.frame(renderer.text(event.text))
            elif isinstance(event, Finished):
                yield framing.frame(renderer.finished(event))
            else:  # failed after the headers were sent: the error is the last chunk
                yield framing.frame(
                    ErrorResponse.of(event.status, event.message, request_id=gen.request.request_id)
                )
        if framing.done is not None:
            yield framing.done
    finally:
        gen.close()


def server_info(state: ServingState, endpoints: list[str]) -> ServerInfo:
    """`GET /`: the model, phase and, once loaded, the engine's limits and the current load."""
    info = ServerInfo(model=state.options.model_name, phase=state.phase, endpoints=endpoints)
    if state.engine is not None:
        engine = state.engine
        info = info.model_copy(update={
            "mode": engine.settings.mode,
            "max_slots": engine.max_slots,
            "max_prefill_length": engine.max_prefill_length,
            "max_target_length": engine.max_target_length,
            "prefill_buckets": list(engine.prefill_buckets),
        })
    if state.orchestrator is not None:
        info = info.model_copy(update={
            "active_slots": state.orchestrator.active_slots,
            "queue_depth": state.orchestrator.queue_depth,
        })
    return info
