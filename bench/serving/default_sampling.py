"""Aggregate output tok/s of chat requests with OpenAI's default sampling (no temperature or top_p
sent: temperature 1, top_p 1), 64 tokens each (`ignore_eos`), at concurrency 1 (3 requests one
after another) and 16 (32 requests, 16 at a time), against a running server.

    .venv/bin/python bench/serving/default_sampling.py http://127.0.0.1:8000

Results: bench/serving/results/default-sampling/README.md.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def one(base: str, i: int) -> int:
    body = {
        "messages": [{"role": "user", "content": f"Tell me a story about a dragon number {i}."}],
        "max_tokens": 64,
        "ignore_eos": True,
    }
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=900)
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


def main() -> None:
    base = sys.argv[1]
    one(base, 0)  # first request after start-up
    out = {}
    for concurrency in (1, 16):
        n = 3 if concurrency == 1 else 32
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(lambda i: one(base, i), range(n)))
        out[concurrency] = round(tokens / (time.perf_counter() - t0), 1)
    print(json.dumps({"out_tok_s_by_concurrency": out}))


if __name__ == "__main__":
    main()
