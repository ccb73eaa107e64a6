"""`python -m inference_app loadtest` (alias `bench`): measure a serving endpoint under load.

Load is either closed-loop (`--concurrency C`: C requests always in flight) or open-loop
(`--request-rate R`: Poisson arrivals, exponential gaps of mean 1/R, however slow the server is,
so queueing shows up in TTFT). Every request streams, so TTFT, TPOT and inter-token latency are
measured from the client side exactly the same way for our server and for any OpenAI-compatible
peer. Results go to stdout and, with `--output`, to a JSON file (settings + summary).

Flags -> `LoadTestSettings` here; `runner.py` does the work. Never imports JAX.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx

from inference_app.loadtest.metrics import format_summary
from inference_app.loadtest.runner import LoadTestSettings, run_load_test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--api",
        choices=["generate", "openai"],
        default="openai",
        help="openai: /v1/completions (any OpenAI-compatible server); generate: our /generate",
    )
    parser.add_argument("--num-prompts", type=int, default=100)
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: this many requests always in flight")
    load.add_argument(
        "--request-rate", type=float, help="open loop: Poisson arrivals at this many requests/s"
    )
    parser.add_argument("--max-tokens", type=int, help="cap on each prompt's output budget")
    parser.add_argument("--model", help="model name for the OpenAI API (default: first of /v1/models)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--fixed-output",
        choices=["ignore_eos", "min_tokens"],
        help="make every request generate exactly its max_tokens via this request field "
        "(ours/vLLM: ignore_eos; llama.cpp server: min_tokens)",
    )
    parser.add_argument("--dataset", help="JSONL of {id, prompt, max_tokens} (default: the bundled set)")
    parser.add_argument("--seed", type=int, default=0, help="prompt order and arrival times")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests sent first")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    parser.add_argument("--label", help="name stored with the results (e.g. 'ours' or 'llama.cpp')")
    parser.add_argument("--output", help="write settings + summary as JSON here")
    parser.add_argument("--save-requests", action="store_true", help="also store every request's timings")


def settings_from_args(args: argparse.Namespace) -> LoadTestSettings:
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    if args.request_rate is not None and args.request_rate <= 0:
        raise ValueError("--request-rate must be > 0 (requests per second)")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError("--max-tokens must be >= 1")
    return LoadTestSettings(
        endpoint=args.endpoint,
        api=args.api,
        num_prompts=args.num_prompts,
        concurrency=args.concurrency,
        request_rate=args.request_rate,
        max_tokens=args.max_tokens,
        model=args.model,
        temperature=args.temperature,
        fixed_output=args.fixed_output,
        seed=args.seed,
        warmup=args.warmup,
        timeout_s=args.timeout,
        dataset=args.dataset,
        label=args.label,
    )


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        report = asyncio.run(run_load_test(settings))
    except (ValueError, OSError, httpx.HTTPError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    if not args.save_requests:
        report.pop("requests")
    print(format_summary(report["summary"]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    return 0 if report["summary"]["completed"] else 1
