"""The load generator: send a prompt set to an endpoint under a load shape and summarize the timings.

`cli.py` turns flags into `LoadTestSettings`; this module draws the prompts (`dataset`), sends
each as a timed streaming request (`client`) and aggregates them (`metrics`). `bench/serving/`
calls `run_load_test` directly to compare servers.

Load is either closed-loop (`--concurrency C`: C requests always in flight) or open-loop
(`--request-rate R`: Poisson arrivals, exponential gaps of mean 1/R, however slow the server is,
so queueing shows up in TTFT). Every request streams, so TTFT, TPOT and inter-token latency are
measured from the client side exactly the same way for our server and for any OpenAI-compatible
peer. Results go to stdout and, with `--output`, to a JSON file (settings + summary).
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from inference_app.loadtest.client import Api, FixedOutput, RequestResult, timed_request
from inference_app.loadtest.dataset import DatasetPrompt, load_prompts, sample_prompts
from inference_app.loadtest.metrics import summarize


@dataclass(frozen=True)
class LoadTestSettings:
    endpoint: str
    api: Api = "openai"
    num_prompts: int = 100
    concurrency: int | None = None
    request_rate: float | None = None
    max_tokens: int | None = None  # caps every prompt's own output budget
    model: str | None = None
    temperature: float = 0.0
    fixed_output: FixedOutput | None = None
    seed: int = 0
    warmup: int = 1
    timeout_s: float = 600.0
    dataset: str | None = None
    label: str | None = None


async def discover_model(client: httpx.AsyncClient, endpoint: str) -> str:
    """The first model an OpenAI-compatible server lists (llama.cpp names it after the file)."""
    resp = await client.get(endpoint.rstrip("/") + "/v1/models")
    resp.raise_for_status()
    data = resp.json().get("data") or []
    if not data:
        raise ValueError(f"{endpoint}/v1/models lists no model; pass --model")
    return str(data[0]["id"])


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Offsets (s) of a Poisson process: cumulative exponential gaps of mean 1/rate."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def run_load_test(settings: LoadTestSettings) -> dict[str, Any]:
    """Run the load and return {settings, summary, requests}."""
    prompts = sample_prompts(load_prompts(settings.dataset), settings.num_prompts, settings.seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(settings.timeout_s, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        model = settings.model
        if settings.api == "openai" and model is None:
            model = await discover_model(client, settings.endpoint)

        def budget(p: DatasetPrompt) -> int:
            return min(p.max_tokens, settings.max_tokens) if settings.max_tokens else p.max_tokens

        async def one(p: DatasetPrompt) -> RequestResult:
            return await timed_request(
                client,
                settings.api,
                settings.endpoint,
                p.prompt,
                budget(p),
                model=model,
                temperature=settings.temperature,
                fixed_output=settings.fixed_output,
            )

        for p in prompts[: settings.warmup]:
            await one(p)
        results: list[RequestResult | None] = [None] * len(prompts)
        start = time.perf_counter()
        if settings.request_rate is not None:
            offsets = arrival_times(len(prompts), settings.request_rate, settings.seed)

            async def arrive(i: int) -> None:
                await asyncio.sleep(max(0.0, start + offsets[i] - time.perf_counter()))
                results[i] = await one(prompts[i])

            await asyncio.gather(*(arrive(i) for i in range(len(prompts))))
        else:
            queue = iter(range(len(prompts)))

            async def worker() -> None:
                for i in queue:  # a shared iterator: each index is taken by exactly one worker
                    results[i] = await one(prompts[i])

            await asyncio.gather(*(worker() for _ in range(settings.concurrency or 1)))
        duration = time.perf_counter() - start
    done = [r for r in results if r is not None]
    # Fallback input count when a server reports no usage: ~4 characters per token.
    fallback = [max(1, len(p.prompt) // 4) for p in prompts]
    summary = summarize(done, duration, fallback)
    return {
        "settings": {**asdict(settings), "model": model},
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg": load_avg(),
        },
        "summary": summary,
        "requests": [
            {"id": p.id, **{k: v for k, v in asdict(r).items() if k != "text"}}
            for p, r in zip(prompts, done, strict=True)
        ],
    }


def load_avg() -> list[float] | None:
    """1/5/15-minute load average, recorded because the benchmark host is shared."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
