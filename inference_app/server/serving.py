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
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import jinja2
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inference_app.engine.api import Engine, TokenLogprobs
from inference_app.orchestrator import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    Job,
    PromptLogprobs,
    TextDelta,
)
from inference_app.orchestrator.grammar import GrammarSpec
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


@dataclass(frozen=True)
class Collected:
    """A whole answer of one generation: its text, why it ended, its tokens' log-probabilities."""

    text: str
    finished: Finished
    logprobs: tuple[TokenLogprobs, ...] = ()


class Generation:
    """An admitted request: iterate `events()`, always `close()` (cancels if unfinished).

    The prompt's log-probabilities, when asked, are kept in `prompt_logprobs` (they arrive before
    any text) rather than yielded."""

    def __init__(self, state: ServingState, request: GenerationRequest, http_request: Request) -> None:
        self.request = request
        self._channel = EventChannel()
        self.job: Job = state.submit(request, self._channel)  # raises RequestRejected (4xx/503)
        self._state = state
        self._http_request = http_request
        self._watcher = asyncio.create_task(self._watch_disconnect())
        self._pending: list[Event] = []
        self._t0 = time.monotonic()
        self.prompt_logprobs: tuple[TokenLogprobs, ...] | None = None

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
            if isinstance(event, PromptLogprobs):
                self.prompt_logprobs = event.tokens
                continue
            yield event
            if isinstance(event, Finished | Failed):
                return

    async def collect(self) -> Collected:
        """Non-streaming: the whole text; a failure becomes its HTTP error."""
        parts: list[str] = []
        logprobs: list[TokenLogprobs] = []
        async for event in self.events():
            if isinstance(event, TextDelta):
                parts.append(event.text)
                logprobs.extend(event.logprobs)
            elif isinstance(event, Failed):
                raise ApiError(event.status, event.message)
            elif isinstance(event, Finished):
                return Collected("".join(parts), event, tuple(logprobs))
        raise ApiError(500, "The request ended without a result.")

    def close(self) -> None:
        self._watcher.cancel()
        if self.job.cancel():
            log.info("[%s] stream closed early; request cancelled", self.request.request_id)
        self._state.queue_budget.completed(self._state.waiting_for_slot())
        log.info(
            "[%s] done: %s, %d prompt + %d generated tokens in %.2fs",
            self.request.request_id,
            self.job.outcome,
            len(self.request.prompt_ids),
            self.job.delivered,
            time.monotonic() - self._t0,
        )


def loaded_engine(state: ServingState) -> Engine:
    """The engine, or a counted 503 (`Unavailable`) while it loads or after a failed start-up."""
    with state.counting_refusals():
        engine, _ = state.loaded()
    return engine


async def encode_prompt(state: ServingState, text: str, param: str = "prompt") -> tuple[int, ...]:
    """Tokenize off the event loop, after the length checks that need no tokenizer (503 while the
    model is still loading, 400 for a text longer than any prompt that fits)."""
    with state.counting_refusals():
        engine, limits = state.loaded()
        limits.check_text(text, param)
    return tuple(await state.tokenization.run(engine.tokenizer.encode, text))


async def encode_chat(
    state: ServingState, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> tuple[int, ...]:
    """The conversation rendered with the model's chat template and tokenized (contents as text, so
    special-token text typed into a message cannot forge turns), off the event loop, after the
    checks that need neither."""
    with state.counting_refusals():
        engine, limits = state.loaded()
        limits.check_messages([m["content"] for m in messages])
    try:
        ids = await state.tokenization.run(engine.tokenizer.encode_chat, messages, add_generation_prompt)
    except (ValueError, jinja2.TemplateError) as exc:  # no template, or it rejects the roles' order
        raise ApiError(400, f"Cannot apply the model's chat template: {exc}", "messages") from None
    return tuple(ids)


def check_token_ids(state: ServingState, ids: list[int], param: str) -> tuple[int, ...]:
    """Token ids a client tokenized itself: 400 naming the field when one is outside the vocabulary."""
    vocab = loaded_engine(state).tokenizer.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ApiError(400, f"{param}: token ids must be in [0, {vocab}); got {bad[:5]}", param)
    return tuple(ids)


def usage_of(finished: Finished) -> UsageInfo:
    return UsageInfo.of(finished.prompt_tokens, finished.completion_tokens)


def start_generation(
    state: ServingState,
    request: Request,
    body: SamplingRequest,
    prompt_ids: tuple[int, ...],
    max_tokens: int,
    choice: int = 0,
    grammar: GrammarSpec | None = None,
) -> Generation:
    """Admit the request (raises `RequestRejected`: 4xx, 429 or 503) and start following its events.

    `choice` > 0 is one more sample of the same request (`n`): its own request id suffix and, when the
    client fixed a seed, seed + choice, so the choices differ yet stay reproducible. `grammar`
    constrains the output (structured outputs, forced tool calls)."""
    sampling = body.sampling_params()
    if choice and sampling.seed is not None:
        sampling = dataclasses.replace(sampling, seed=sampling.seed + choice)
    rid = request_id_of(request)
    gen_request = GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        sampling=sampling,
        prompt_logprobs=body.prompt_logprobs_count(),
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        request_id=f"{rid}-{choice}" if choice else rid,
        grammar=grammar,
    )
    return Generation(state, gen_request, request)


def start_generations(
    state: ServingState,
    request: Request,
    body: SamplingRequest,
    prompts: list[tuple[int, ...]],
    max_tokens: int,
    n: int,
    grammar: GrammarSpec | None = None,
) -> list[Generation]:
    """n choices of every prompt (choice index = prompt index * n + sample), all admitted or none."""
    gens: list[Generation] = []
    try:
        for p, ids in enumerate(prompts):
            gens.extend(
                start_generation(state, request, body, ids, max_tokens, p * n + k, grammar) for k in range(n)
            )
    except BaseException:
        for gen in gens:
            gen.close()
        raise
    return gens


class Renderer(Protocol):
    """One endpoint's response models: the whole answer, or the chunks of a stream (choice `index`)."""

    def whole(self, results: list[Collected]) -> ResponseModel: ...

    def opening(self, choices: int) -> list[ResponseModel]:
        """Chunks sent before any text (OpenAI chat announces the assistant role)."""
        ...

    def text(self, index: int, delta: TextDelta, progress: UsageInfo) -> ResponseModel: ...

    def finished(self, index: int, finished: Finished, progress: UsageInfo) -> list[ResponseModel]:
        """Why this choice ended (and, per endpoint, its token counts)."""
        ...

    def closing(self, total: UsageInfo) -> list[ResponseModel]:
        """Chunks after every choice ended (OpenAI: the usage chunk, when asked for)."""
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


def usage_total(gens: list[Generation], n: int) -> UsageInfo:
    """Token counts so far: each prompt counted once (not once per choice), every generated token."""
    prompt = sum(len(g.request.prompt_ids) for g in gens[::n])
    return UsageInfo.of(prompt, sum(g.job.delivered for g in gens))


async def respond(
    gens: list[Generation], stream: bool, renderer: Renderer, framing: Framing, n: int = 1
) -> Response:
    """The whole answer as JSON, or a stream whose headers go out only once every choice has its first
    event (so a request that fails before any text gets an ordinary error answer with its status)."""
    if not stream:
        try:
            results = [await gen.collect() for gen in gens]
        finally:
            for gen in gens:
                gen.close()
        return JSONResponse(renderer.whole(results).body())
    for gen in gens:
        first = await gen.first()
        if isinstance(first, Failed):
            for g in gens:
                g.close()
            raise ApiError(first.status, first.message)
    return StreamingResponse(
        _stream(gens, renderer, framing, n), media_type=framing.media_type, headers=framing.headers
    )


async def _stream(gens: list[Generation], renderer: Renderer, framing: Framing, n: int) -> AsyncIterator[str]:
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(index: int, gen: Generation) -> None:
        async for event in gen.events():
            await events.put((index, event))

    pumps = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        for chunk in renderer.opening(len(gens)):
            yield framing.frame(chunk)
        running = len(gens)
        while running:
            index, event = await events.get()
            if isinstance(event, TextDelta):
                yield framing.frame(renderer.text(index, event, usage_total(gens, n)))
            elif isinstance(event, Finished):
                running -= 1
                for chunk in renderer.finished(index, event, usage_total(gens, n)):
                    yield framing.frame(chunk)
            elif isinstance(event, Failed):  # after the headers were sent: the error is the last chunk
                yield framing.frame(
                    ErrorResponse.of(event.status, event.message, request_id=gens[index].request.request_id)
                )
                break
        else:
            for chunk in renderer.closing(usage_total(gens, n)):
                yield framing.frame(chunk)
        if framing.done is not None:
            yield framing.done
    finally:
        for task in pumps:
            task.cancel()
        for gen in gens:
            gen.close()


def server_info(state: ServingState, endpoints: list[str]) -> ServerInfo:
    """`GET /`: the model, phase and, once loaded, the engine's limits and the current load."""
    info = ServerInfo(model=state.options.model_name, phase=state.phase, endpoints=endpoints)
    if state.engine is not None:
        engine = state.engine
        info = info.model_copy(
            update={
                "mode": engine.settings.mode,
                "max_slots": engine.max_slots,
                "max_prefill_length": engine.max_prefill_length,
                "max_target_length": engine.max_target_length,
                "prefill_buckets": list(engine.prefill_buckets),
            }
        )
    if state.orchestrator is not None:
        info = info.model_copy(
            update={
                "active_slots": state.orchestrator.active_slots,
                "queue_depth": state.orchestrator.queue_depth,
            }
        )
    return info
