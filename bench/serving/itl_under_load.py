"""Batch-1 ITL of two running servers, quiet and beside a busy background thread, alternating.

Why: on 2 cores the load generator shares the CPU with the server, and `make bench`'s batch-1
ratio moved between 0.88x and 1.04x with our ITL p50 between 18.6 and 25.2 ms while
llama-server's stayed at 18.6-19.8 ms. This takes the load generator out and puts a controlled
one in: a separate process busy for `duty` of every 10 ms on one thread. Each round sends one
streaming completion (`/v1/completions`, a fresh ~120-token prompt, so no prefix-cache hit; 96
tokens, greedy, `ignore_eos`; timed by `inference_app.loadtest`'s client) to each server in
turn, at each duty.

    bench/serving/llamacpp.sh serve-native 8012 64 &        # the peer
    .venv/bin/python -m inference_app serve --port 8011 &  # ours, make serve's defaults
    .venv/bin/python bench/serving/itl_under_load.py --ours http://127.0.0.1:8011 \
        --peer http://127.0.0.1:8012 --duties 0,0.3 --rounds 3 --out x.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from inference_app.loadtest.client import RequestResult, timed_request

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "counting",
    "stars",
    "at",
    "night",
]


def busy(duty: float) -> None:
    """Child process: busy for `duty` of every 10 ms, asleep the rest."""
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < 0.01 * duty:
            pass
        time.sleep(0.01 * (1 - duty))


def one_request(url: str, model: str) -> dict[str, float]:
    """TTFT and ITL p50 (ms) of one streamed completion, timed by our load generator's client."""
    prompt = f"{random.random()} " + " ".join(WORDS[i % len(WORDS)] for i in range(110))

    async def send() -> RequestResult:
        async with httpx.AsyncClient(timeout=120) as client:
            return await timed_request(
                client, "openai", url, prompt, 96, model=model, fixed_output="ignore_eos"
            )

    result = asyncio.run(send())
    if not result.ok or result.ttft is None or not result.itl:
        raise RuntimeError(f"{url}: {result.error or 'no tokens streamed'}")
    return {
        "ttft_ms": result.ttft * 1e3,
        "itl_p50_ms": statistics.median(result.itl) * 1e3,
        "chunks": len(result.itl) + 1,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ours", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--model", default="smollm2-135m", help="model name both servers answer to")
    p.add_argument("--duties", default="0,0.3")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for duty in [float(d) for d in args.duties.split(",")]:
            hog = multiprocessing.Process(target=busy, args=(duty,), daemon=True) if duty > 0 else None
            if hog:
                hog.start()
            try:
                for name, url in (("ours", args.ours), ("llama-server", args.peer)):
                    row = {"round": rnd, "duty": duty, "server": name, **one_request(url, args.model)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if hog:
                    hog.terminate()
    summary = {
        f"{name} duty {duty}": statistics.median(
            r["itl_p50_ms"] for r in rows if r["server"] == name and r["duty"] == duty
        )
        for name in ("ours", "llama-server")
        for duty in sorted({r["duty"] for r in rows})
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        args.out.write_text(
            json.dumps({"date_utc": date, "rows": rows, "itl_p50_median": summary}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
