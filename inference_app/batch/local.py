"""`batch --local`: the engine and orchestrator inside the batch process, no HTTP in between.

Same continuous batching as the server (the orchestrator is shared code), so an offline job gets
the server's throughput without running one. Records have the same shape as the HTTP path's;
a prompt the orchestrator rejects (too long, `max_tokens` beyond the cache room) is a permanent
400 error record, exactly as the server would answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from inference_app.batch.client import Backend, record
from inference_app.batch.items import BatchItem
from inference_app.engine.api import Engine, SamplingParams
from inference_app.engine.settings import EngineSettings
from inference_app.orchestrator import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    Orchestrator,
    QueueFull,
    RequestRejected,
    TextDelta,
)


def generation_request(orch: Orchestrator, item: BatchItem, default_max_tokens: int) -> GenerationRequest:
    s = item.sampling
    if item.messages is None:
        prompt_ids = tuple(orch.tokenizer.encode(item.prompt or ""))
    else:  # contents stay text: special-token text typed into a message cannot forge turns
        prompt_ids = tuple(orch.tokenizer.encode_chat(item.messages))
    stop = s.get("stop", ())
    return GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=s.get("max_tokens", default_max_tokens),
        sampling=SamplingParams(
            temperature=float(s.get("temperature", 0.0)),
            top_k=s.get("top_k", 0),
            top_p=float(s.get("top_p", 1.0)),
            seed=s.get("seed"),
        ),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
    )


async def run_local(orch: Orchestrator, item: BatchItem, default_max_tokens: int) -> dict[str, Any]:
    """Submit one item and await its end; the orchestrator's threads report through `sink`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Finished | Failed] = loop.create_future()
    parts: list[str] = []

    def finish(event: Finished | Failed) -> None:
        if not done.done():
            done.set_result(event)

    def sink(event: Event) -> None:  # called on orchestrator threads
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finished | Failed):
            loop.call_soon_threadsafe(finish, event)

    start = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        try:
            request = generation_request(orch, item, default_max_tokens)
            orch.submit(request, sink)
            break
        except QueueFull:
            await asyncio.sleep(0.05)  # the bounded queue is full: wait for room, like a client would
        except RequestRejected as exc:
            error = {"status": exc.status, "message": exc.message, "retryable": exc.status >= 500}
            return record(item, latency_s=time.perf_counter() - start, attempts=attempts, error=error)
    end = await done
    latency = time.perf_counter() - start
    if isinstance(end, Failed):
        error = {"status": end.status, "message": end.message, "retryable": end.status >= 500}
        return record(item, latency_s=latency, attempts=attempts, error=error)
    usage = {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens}
    return record(
        item, text="".join(parts), finish_reason=end.reason, usage=usage, latency_s=latency, attempts=attempts
    )


def build_engine(settings: EngineSettings) -> Engine:
    """Load the model (tests substitute a fake engine here)."""
    from inference_app.engine import load_engine  # JAX is imported here, never for --endpoint

    return cast(Engine, load_engine(settings))


@asynccontextmanager
async def local_backend(
    settings: EngineSettings, concurrency: int, default_max_tokens: int
) -> AsyncIterator[Backend]:
    """Load and warm up the engine, run the orchestrator for the duration of the batch."""
    engine = await asyncio.to_thread(build_engine, settings)
    orch = Orchestrator(engine, max_queue=max(64, concurrency))
    await asyncio.to_thread(orch.start)
    try:

        async def call(item: BatchItem) -> dict[str, Any]:
            return await run_local(orch, item, default_max_tokens)

        yield call
    finally:
        orch.begin_drain()
        await asyncio.to_thread(orch.wait_idle, 30.0)
        orch.stop()
