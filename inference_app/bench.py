"""`python -m inference_app bench`: measure a serving endpoint under load.

Load is either closed-loop (`--concurrency C`: C requests always in flight) or open-loop
(`--request-rate R`: Poisson arrivals, exponential gaps of mean 1/R, however slow the server is,
so queueing shows up in TTFT). Every request streams, so TTFT, TPOT and inter-token latency are
measured from the client side exactly the same way for our server and for any OpenAI-compatible
peer. Results go to stdout and, with `--output`, to a JSON file (settings + summary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from inference_app.bench_client import Api, FixedOutput, RequestResult, timed_request
from inference_app.bench_dataset import BenchPrompt, load_prompts, sample_prompts
from inference_app.bench_metrics import format_summary, summarize


@dataclass(frozen=True)
class BenchSettings:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api", choices=["generate", "openai"], default="openai",
                        help="openai: /v1/completions (any OpenAI-compatible server); generate: our /generate")
    parser.add_argument("--num-prompts", type=int, default=100)
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: this many requests always in flight")
    load.add_argument("--request-rate", type=float, help="open loop: Poisson arrivals at this many requests/s")
    parser.add_argument("--max-tokens", type=int, help="cap on each prompt's output budget")
    parser.add_argument("--model", help="model name for the OpenAI API (default: first of /v1/models)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--fixed-output", choices=["ignore_eos", "min_tokens"],
                        help="make every request generate exactly its max_tokens via this request field "
                        "(ours/vLLM: ignore_eos; llama.cpp server: min_tokens)")
    parser.add_argument("--dataset", help="JSONL of {id, prompt, max_tokens} (default: the bundled set)")
    parser.add_argument("--seed", type=int, default=0, help="prompt order and arrival times")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests sent first")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    parser.add_argument("--label", help="name stored with the results (e.g. 'ours' or 'llama.cpp')")
    parser.add_argument("--output", help="write settings + summary as JSON here")
    parser.add_argument("--save-requests", action="store_true", help="also store every request's timings")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    if args.request_rate is not None and args.request_rate <= 0:
        raise ValueError("--request-rate must be > 0 (requests per second)")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError("--max-tokens must be >= 1")
    return BenchSettings(
        endpoint=args.endpoint, api=args.api, num_prompts=args.num_prompts, concurrency=args.concurrency,
        request_rate=args.request_rate, max_tokens=args.max_tokens, model=args.model,
        temperature=args.temperature, fixed_output=args.fixed_output, seed=args.seed, warmup=args.warmup, timeout_s=args.timeout,
        dataset=args.dataset, label=args.label,
    )


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


async def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    """Run the load and return {settings, summary, requests}."""
    prompts = sample_prompts(load_prompts(settings.dataset), settings.num_prompts, settings.seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(settings.timeout_s, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        model = settings.model
        if settings.api == "openai" and model is None:
            model = await discover_model(client, settings.endpoint)

        def budget(p: BenchPrompt) -> int:
            return min(p.max_tokens, settings.max_tokens) if settings.max_tokens else p.max_tokens

        async def one(p: BenchPrompt) -> RequestResult:
            return await timed_request(client, settings.api, settings.endpoint, p.prompt, budget(p),
                                       model=model, temperature=settings.temperature,
                                       fixed_output=settings.fixed_output)

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
        "host": {"platform": platform.platform(), "python": platform.python_version(), "load_avg": load_avg()},
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


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        report = asyncio.run(run_benchmark(settings))
    except (ValueError, OSError, httpx.HTTPError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if not args.save_requests:
        report.pop("requests")
    print(format_summary(report["summary"]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    return 0 if report["summary"]["completed"] else 1
